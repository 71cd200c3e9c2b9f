"""Training metrics as JSON lines in ``work/<run-id>/metrics.jsonl``, plus the progress bar.

Contract with the trainer control service (which tails this file): one JSON object per line, each with
an ``"event"`` and a ``"time"`` (unix seconds):

- ``start``: run_id, total_steps, resumed_from (step or null)
- ``step``: step, total_steps, loss, lr, tokens_per_s, eta_s, elapsed_s
- ``eval``: step, val_loss, val_ppl, best_val_loss
- ``sample``: step, text
- ``checkpoint``: step, path
- ``early_stop``: step, best_val_loss, patience
- ``published``: run_id, path, val_ppl_before, val_ppl_after
- ``error``: message
- ``done``: status (``"completed"``, ``"early_stopped"`` or ``"failed"``), step

A resumed run appends to the same file; lines are flushed as they are written.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TextIO

EVENTS = ("start", "step", "eval", "sample", "checkpoint", "early_stop", "published", "error", "done")


class MetricsLog:
    """Appends events to a JSONL file (a no-op when ``path`` is None, e.g. on non-zero DDP ranks)."""

    def __init__(self, path: Path | None) -> None:
        self._handle: TextIO | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, event: str, **fields: Any) -> None:
        """Append one event line."""
        if event not in EVENTS:
            raise ValueError(f"unknown metrics event {event!r}")
        if self._handle is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **{k: _plain(v) for k, v in fields.items()}}
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every event in a metrics file (a torn last line from a killed run is skipped)."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run reports a large number rather than overflowing."""
    return math.exp(min(loss, 50.0))


class Progress:
    """A tqdm bar showing loss, tokens/s and ETA; silent when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")

    def update(self, step: int, **postfix: Any) -> None:
        """Move the bar to ``step`` and show ``postfix`` values."""
        if self._bar is None:
            return
        self._bar.n = step
        self._bar.set_postfix({k: _short(v) for k, v in postfix.items()}, refresh=True)

    def write(self, text: str) -> None:
        """Print a line above the bar."""
        if self._bar is not None:
            self._bar.write(text)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, Path):
        return str(value)
    return value


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
