"""Loading a published run for serving: valid runs load and pass the smoke test, broken ones are refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bot.model_loader import load_run_model, quantize_int8, smoke_test
from tests.tiny import publish_tiny_run
from trainer.runs import MANIFEST_NAME, InvalidRunError, RunInfo, load_run


def test_valid_run_loads_and_passes_smoke_test(tmp_path: Path) -> None:
    """A freshly published run loads on the CPU in float32 and generates."""
    loaded = load_run_model(publish_tiny_run(tmp_path, run_id="good"))
    assert (loaded.run_id, loaded.device.type, loaded.dtype) == ("good", "cpu", torch.float32)
    assert loaded.context_length == loaded.model.config.n_positions
    smoke_test(loaded)


def test_truncated_safetensors_refused(tmp_path: Path) -> None:
    """Weights cut short (a copy interrupted) are refused with one sentence, before loading."""
    run = publish_tiny_run(tmp_path)
    weights = run.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InvalidRunError, match="truncated or corrupt"):
        load_run_model(run)


def test_missing_weights_refused(tmp_path: Path) -> None:
    """A run without safetensors weights is refused (pickled weights are never read)."""
    run = publish_tiny_run(tmp_path)
    (run.path / "model.safetensors").unlink()
    with pytest.raises(InvalidRunError, match="no safetensors weights"):
        load_run_model(run)


def test_other_scene_format_version_refused(tmp_path: Path) -> None:
    """A run trained on another scene format is refused, naming both versions."""
    run = publish_tiny_run(tmp_path, scene_format_version=99)
    with pytest.raises(InvalidRunError, match="scene format version 99"):
        load_run_model(run)


def test_tokenizer_hash_mismatch_refused(tmp_path: Path) -> None:
    """A tokenizer that is not the one the manifest names is refused."""
    run = publish_tiny_run(tmp_path)
    manifest = dataclasses.replace(run.manifest, tokenizer_hash="f" * 64)
    (run.path / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    with pytest.raises(InvalidRunError, match="tokenizer does not match"):
        load_run_model(load_run(tmp_path, run.run_id))


def test_smoke_test_catches_nan(tmp_path: Path) -> None:
    """A model whose weights hold NaN fails the smoke test."""
    loaded = load_run_model(publish_tiny_run(tmp_path))
    with torch.no_grad():
        loaded.model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    with pytest.raises(InvalidRunError, match="NaN"):
        smoke_test(loaded)


def test_unknown_device_and_quantization_refused(tmp_path: Path) -> None:
    """Bad device or quantization names get one sentence."""
    run = publish_tiny_run(tmp_path)
    with pytest.raises(InvalidRunError, match="not a device name"):
        load_run_model(run, device="toaster")
    with pytest.raises(InvalidRunError, match="quantize"):
        load_run_model(run, quantize="int3")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidRunError, match="no CUDA GPU"):
            load_run_model(run, device="cuda")


def test_int8_quantization_keeps_predictions_close(tmp_path: Path) -> None:
    """int8 weights give scores close to float32 ones on the same input."""
    run: RunInfo = publish_tiny_run(tmp_path)
    reference = load_run_model(run)
    quantized = load_run_model(run, quantize="int8")
    assert quantized.quantize == "int8"
    ids = reference.tokenizer("Jon Snow: Winter is coming.\n", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = torch.log_softmax(reference.model(input_ids=ids).logits, dim=-1)
        actual = torch.log_softmax(quantized.model(input_ids=ids).logits, dim=-1)
    assert torch.allclose(actual, expected, atol=0.05)
    assert not any(type(m).__name__ == "Conv1D" for m in quantize_int8(reference.model).modules())
    smoke_test(quantized)
