"""Load or build the model and tokenizer a training run starts from.

Three starting points (``--init``):

- ``pretrained``: a Hugging Face model by Hub name (default ``gpt2``) or a local ``save_pretrained`` path;
- ``scratch``: a small GPT-2 with random weights and a byte-level BPE tokenizer trained on the corpus,
  for offline use and tests;
- ``current``: the published run that ``CURRENT`` names, to continue training it (``/retrain``).

:func:`tokenizer_hash` identifies a tokenizer by content, so the block cache and the manifest can tell
whether two runs tokenize text the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import UserError

EOS_TOKEN = "<|endoftext|>"  # GPT-2's end-of-text token; scratch tokenizers use the same one


@dataclass
class LoadedModel:
    """A model and its tokenizer, plus what to record in the manifest as their origin."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    base_model: str


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style, ``<|endoftext|>`` as eos) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bpe_trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        # Every byte is in the vocabulary, so any text (accents, emoji) round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, bpe_trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )


def build_scratch_model(
    tokenizer: Any, *, n_layer: int, n_embd: int, n_head: int, n_positions: int, seed: int = 0
) -> Any:
    """A GPT-2 with random weights sized for ``tokenizer``; ``seed`` makes the weights reproducible."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def load_pretrained(name_or_path: str) -> LoadedModel:
    """A causal LM and tokenizer by Hub name or local path, with SDPA attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    source = str(local) if local.exists() else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        # safetensors only: a pickled .bin checkpoint could run arbitrary code when loaded.
        model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="sdpa", use_safetensors=True)
    except (OSError, ValueError) as exc:
        if local.exists():
            raise UserError(
                f"{local} is not a loadable Hugging Face model directory ({_first_line(exc)})."
            ) from exc
        raise UserError(
            f"could not load model {name_or_path!r} from the Hugging Face Hub ({_first_line(exc)}); "
            "check the name and your network, or pass a local model directory to --model, "
            "or use --init scratch."
        ) from exc
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {name_or_path!r} has no end-of-text token to separate scenes.")
    return LoadedModel(model, tokenizer, base_model=name_or_path)


def load_current(checkpoint_root: Path) -> LoadedModel:
    """The published run that ``CURRENT`` names, to continue training from it."""
    from trainer.runs import InvalidRunError, current_run

    try:
        run = current_run(checkpoint_root)
    except InvalidRunError as exc:
        raise UserError(f"--init current: {exc}") from exc
    if run is None:
        raise UserError(
            f"--init current needs a published run, but {Path(checkpoint_root) / 'CURRENT'} does not exist; "
            "train one first with --init pretrained or --init scratch."
        )
    loaded = load_pretrained(str(run.path))
    loaded.base_model = f"{run.manifest.base_model} (continued from run {run.run_id})"
    return loaded


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary, merges and special tokens: equal hashes tokenize alike."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    identity = {
        "model": state.get("model"),
        "added_tokens": state.get("added_tokens"),
        "pre_tokenizer": state.get("pre_tokenizer"),
        "normalizer": state.get("normalizer"),
        "post_processor": state.get("post_processor"),
        "special_tokens": {
            key: str(value) for key, value in sorted(tokenizer.special_tokens_map.items())
        },
    }
    encoded = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__
