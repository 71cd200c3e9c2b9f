"""Resume state: everything needed to continue a killed run exactly where it stopped.

Layout of ``work/<run-id>/state/``::

    step-00000100/
      model.safetensors       current weights (safetensors, shared tensors handled)
      best.safetensors        weights of the best validation loss so far (absent while it is the current one)
      trainer_state.pt        optimizer, scheduler, RNG states, step, counters: tensors and plain types only,
                              loaded with ``torch.load(weights_only=True)``

A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed to
``step-<N>``: a directory with that name is always complete. The newest :data:`KEEP` are kept.
There is no gradient scaler: bf16 autocast does not need one.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.runs import fsync_dir, fsync_file

KEEP = 2
_PREFIX = "step-"


@dataclass
class ResumeState:
    """A loaded checkpoint: where it lives and the trainer's saved state."""

    path: Path
    step: int
    state: dict[str, Any]


def rng_state() -> dict[str, Any]:
    """Python and torch (CPU and every CUDA device) RNG states as tensors and plain types."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_paths(state_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not Path(state_dir).is_dir():
        return []
    found = [p for p in Path(state_dir).iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def save_checkpoint(
    state_dir: Path,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    best_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint atomically and drop all but the newest :data:`KEEP`."""
    from safetensors.torch import save_file, save_model

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / f"{_PREFIX}{step:08d}"
    tmp = state_dir / f".tmp-{_PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    if best_weights is not None:
        save_file(_deduplicated(best_weights), str(tmp / "best.safetensors"))
    torch.save(trainer_state, tmp / "trainer_state.pt")
    for path in tmp.iterdir():
        fsync_file(path)
    fsync_dir(tmp)
    if final.exists():  # the same step saved again after a resume: replace it whole
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(state_dir)
    for old in checkpoint_paths(state_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest_checkpoint(state_dir: Path) -> ResumeState | None:
    """The newest complete checkpoint's trainer state (no weights yet), or None when there is none."""
    paths = checkpoint_paths(state_dir)
    if not paths:
        return None
    path = paths[-1]
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    return ResumeState(path, int(state["step"]), state)


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a checkpoint's current weights into ``model``."""
    from safetensors.torch import load_model

    device = str(next(model.parameters()).device)
    load_model(model, str(Path(checkpoint) / "model.safetensors"), device=device)


def load_best_weights(checkpoint: Path) -> dict[str, torch.Tensor] | None:
    """A checkpoint's best-so-far weights (CPU), or None when the current weights are the best."""
    from safetensors.torch import load_file

    path = Path(checkpoint) / "best.safetensors"
    return load_file(str(path)) if path.is_file() else None


def _deduplicated(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop tensors sharing storage with an earlier one (tied embeddings): safetensors refuses them."""
    seen: set[int] = set()
    result = {}
    for name, tensor in weights.items():
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        result[name] = tensor.contiguous()
    return result
