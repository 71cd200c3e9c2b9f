"""Load a published run onto a device for serving, refusing anything that does not match this bot.

A run is refused (:class:`trainer.runs.InvalidRunError`, one sentence) when a file is missing, the
safetensors weights are truncated or unreadable, its scene format version differs from the one this
code writes prompts in, or its tokenizer is not the one the manifest was written for. Weights are only
ever read from safetensors, never from pickles.

``device`` is ``cpu``, ``cuda`` (or ``cuda:N``) or ``auto``. On CUDA the model runs in bfloat16 where
the GPU supports it (float16 otherwise); on CPU in float32. ``quantize="int8"`` (CPU only) converts
GPT-2's ``Conv1D`` projections to ``nn.Linear`` and applies dynamic int8 quantization to them.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.runs import InvalidRunError, Manifest, RunInfo
from trainer.scene_format import SCENE_FORMAT_VERSION, build_prompt

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("none", "int8")
_REQUIRED_FILES = ("config.json", "tokenizer_config.json")


@dataclass
class LoadedModel:
    """A model ready to serve: weights on their device, its tokenizer, and the run it came from."""

    run_id: str
    manifest: Manifest
    model: Any  # transformers.PreTrainedModel, in eval mode
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    context_length: int
    quantize: str = "none"


def resolve_device(device: str) -> torch.device:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else is parsed as is."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InvalidRunError(f"{device!r} is not a device name (use cpu, cuda, cuda:N or auto).") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRunError(f"device {device!r} was asked for, but no CUDA GPU is visible to PyTorch.")
    return resolved


def tokenizer_hash(tokenizer: Any) -> str:
    """The tokenizer's identity, computed exactly as the trainer records it in the manifest."""
    from trainer.model import tokenizer_hash as trainer_tokenizer_hash

    return trainer_tokenizer_hash(tokenizer)


def load_run_model(run: RunInfo, device: str = "cpu", quantize: str = "none") -> LoadedModel:
    """Load a published run's model and tokenizer onto ``device``; InvalidRunError on any problem."""
    manifest = run.manifest
    if manifest.scene_format_version != SCENE_FORMAT_VERSION:
        raise InvalidRunError(
            f"run {run.run_id} was trained on scene format version {manifest.scene_format_version}, "
            f"but this bot writes version {SCENE_FORMAT_VERSION}; retrain it or run a matching bot version."
        )
    path = Path(run.path)
    tokenizer = _load_tokenizer(path, run.run_id)
    actual_hash = tokenizer_hash(tokenizer)
    if actual_hash != manifest.tokenizer_hash:
        raise InvalidRunError(
            f"run {run.run_id}'s tokenizer does not match its manifest (hash {actual_hash[:12]} "
            f"instead of {manifest.tokenizer_hash[:12]}); its files were changed after publishing."
        )
    model = load_model_weights(path, run.run_id)
    return prepare_model(run.run_id, manifest, model, tokenizer, device=device, quantize=quantize)


def load_model_weights(path: Path, label: str) -> Any:
    """A causal LM from a ``save_pretrained`` directory, read from safetensors only."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    for name in _REQUIRED_FILES:
        if not (path / name).is_file():
            raise InvalidRunError(f"run {label} is incomplete: {name} is missing from {path}.")
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        raise InvalidRunError(f"run {label} has no safetensors weights in {path}.")
    for weights in weight_files:
        _check_safetensors(weights, label)
    # The bot and console log their own progress; transformers' loading bar only clutters the terminal.
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, attn_implementation="sdpa")
    except Exception as exc:  # transformers raises many types for a bad checkpoint; all mean the same here
        raise InvalidRunError(
            f"run {label}'s model could not be loaded from {path} ({_first_line(exc)})."
        ) from exc
    model.eval()
    return model


def prepare_model(
    run_id: str,
    manifest: Manifest,
    model: Any,
    tokenizer: Any,
    *,
    device: str = "cpu",
    quantize: str = "none",
) -> LoadedModel:
    """Put an already loaded model on its device and dtype (and quantize it when asked) for serving."""
    if quantize not in QUANTIZE_CHOICES:
        raise InvalidRunError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize!r}.")
    if tokenizer.eos_token_id is None:
        raise InvalidRunError(f"run {run_id}'s tokenizer has no end-of-text token to stop scenes at.")
    target = resolve_device(device)
    model.eval()
    if target.type == "cuda":
        if quantize != "none":
            raise InvalidRunError("int8 quantization is a CPU speed-up; on CUDA use --quantize none.")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = model.to(device=target, dtype=dtype)
    else:
        dtype = torch.float32
        model = model.to(device=target, dtype=dtype)
        if quantize == "int8":
            model = quantize_int8(model)
    context_length = int(
        getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024)
    )
    return LoadedModel(
        run_id=run_id,
        manifest=manifest,
        model=model,
        tokenizer=tokenizer,
        device=target,
        dtype=dtype,
        context_length=context_length,
        quantize=quantize,
    )


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every linear projection (GPT-2's Conv1D converted to nn.Linear first)."""
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    from transformers.pytorch_utils import Conv1D

    def convert(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, Conv1D):
                # Conv1D computes x @ W + b with W of shape (in, out); nn.Linear stores (out, in).
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                linear.weight.data = child.weight.data.t().contiguous()
                linear.bias.data = child.bias.data.clone()
                setattr(module, name, linear)
            else:
                convert(child)

    convert(model)
    # lm_head is an nn.Linear tied to the input embedding; quantizing it gives it its own int8 copy, which
    # is what we want: it is the largest matmul per token, while the embedding lookup stays float.
    # Per-channel scales keep one output row with large weights from costing every other row its precision.
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it will move to torchao; it is still the maintained eager
        # dynamic-quantization path in the torch versions pyproject admits, so the warning is only noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantized = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return quantized


def smoke_test(loaded: LoadedModel, tokens: int = 4) -> None:
    """Generate a few greedy tokens from a scene prompt; InvalidRunError when it fails or yields NaN."""
    prompt = build_prompt(characters=("Jon Snow",), setting="Winterfell.")
    try:
        ids = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids[:, -(loaded.context_length - tokens) :].to(loaded.device)
        with torch.inference_mode():
            for _ in range(tokens):
                logits = loaded.model(input_ids=ids).logits[:, -1, :].float()
                if not torch.isfinite(logits).all():
                    raise InvalidRunError(f"run {loaded.run_id} produces NaN or infinite scores.")
                ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    except InvalidRunError:
        raise
    except Exception as exc:  # any failure to run means the run cannot be served
        raise InvalidRunError(f"run {loaded.run_id} failed its smoke test ({_first_line(exc)}).") from exc


def _load_tokenizer(path: Path, label: str) -> Any:
    from transformers import AutoTokenizer

    if not (path / "tokenizer_config.json").is_file():
        raise InvalidRunError(f"run {label} is incomplete: tokenizer_config.json is missing from {path}.")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # a broken tokenizer file can raise almost anything
        raise InvalidRunError(f"run {label}'s tokenizer could not be loaded ({_first_line(exc)}).") from exc


def _check_safetensors(path: Path, label: str) -> None:
    """Refuse a safetensors file whose header is unreadable or whose tensors run past its end."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header runs past the end of the file")
            header = json.loads(handle.read(header_len))
        end = max(
            (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
        )
        if 8 + header_len + end > size:
            raise ValueError(f"tensors need {8 + header_len + end} bytes but the file has {size}")
    except (ValueError, KeyError, TypeError, IndexError, OSError) as exc:
        raise InvalidRunError(
            f"run {label}'s weights {path.name} are truncated or corrupt ({_first_line(exc)})."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
