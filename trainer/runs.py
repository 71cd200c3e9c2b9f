"""Published runs: the checkpoint directory layout, the manifest, and the atomic ``CURRENT`` pointer.

Layout under the checkpoint root (``--checkpoint-dir``, default ``checkpoints``)::

    checkpoints/
      CURRENT                 one line: the run id being served (replaced atomically with os.replace)
      runs/<run-id>/          a published model: save_pretrained layout (model.safetensors, config.json,
                              tokenizer files, generation_config.json) plus manifest.json
      staging/                half-built runs; never read by the bot, cleaned on the next publish
      work/<run-id>/          training state (resume checkpoints, metrics.jsonl, samples.txt)

A run directory is complete only when its ``manifest.json`` exists. It is written last, in the staging
directory, then the whole directory is fsynced and renamed into ``runs/``; only after that is
``CURRENT`` replaced. A crash at any point therefore leaves ``CURRENT`` on a complete run.

The trainer writes this layout; the bot reads it through :func:`current_run` and :func:`read_manifest`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

MANIFEST_NAME = "manifest.json"
CURRENT_NAME = "CURRENT"
RUNS_DIR = "runs"
STAGING_DIR = "staging"
WORK_DIR = "work"


class InvalidRunError(Exception):
    """A run directory that is missing, incomplete or not a maester run."""


@dataclass(frozen=True)
class Manifest:
    """What a published run is, and how good it was when published."""

    run_id: str
    base_model: str
    corpus_sha256: str
    tokenizer_hash: str
    scene_format_version: int
    steps: int
    tokens_seen: int
    val_loss_before: float | None
    val_ppl_before: float | None
    val_loss_after: float | None
    val_ppl_after: float | None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    speakers: tuple[str, ...] = ()  # most frequent speakers first; the bot autocompletes from these
    extra: dict = field(default_factory=dict)  # free-form facts (settings, device, timings)

    def to_json(self) -> str:
        """The manifest as pretty JSON."""
        data = asdict(self)
        data["speakers"] = list(self.speakers)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest, refusing one that lacks a required field."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("manifest is not a JSON object")
        known = {f.name for f in fields(cls)}
        required = [
            f.name for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name not in data
        ]
        if required:
            raise ValueError(f"manifest lacks {', '.join(sorted(required))}")
        kwargs = {key: value for key, value in data.items() if key in known}
        kwargs["speakers"] = tuple(kwargs.get("speakers", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class RunInfo:
    """A published run on disk."""

    run_id: str
    path: Path
    manifest: Manifest


def runs_dir(root: Path) -> Path:
    """Where published runs live."""
    return Path(root) / RUNS_DIR


def read_manifest(run_path: Path) -> Manifest:
    """Read a run's manifest, raising :class:`InvalidRunError` with one clear sentence on any problem."""
    manifest_path = Path(run_path) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise InvalidRunError(f"{run_path} is not a complete run: it has no {MANIFEST_NAME}.")
    try:
        return Manifest.from_json(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidRunError(f"{manifest_path} is not a valid manifest: {exc}.") from exc


def current_run_id(root: Path) -> str | None:
    """The run id that ``CURRENT`` names, or None when nothing has been published."""
    pointer = Path(root) / CURRENT_NAME
    try:
        run_id = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return run_id or None


def current_run(root: Path) -> RunInfo | None:
    """The run ``CURRENT`` names, validated; None when nothing has been published yet."""
    run_id = current_run_id(root)
    if run_id is None:
        return None
    return load_run(root, run_id)


def load_run(root: Path, run_id: str) -> RunInfo:
    """A published run by id, validated."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise InvalidRunError(f"{run_id!r} is not a valid run id.")
    path = runs_dir(root) / run_id
    if not path.is_dir():
        raise InvalidRunError(f"run {run_id} does not exist under {runs_dir(root)}.")
    return RunInfo(run_id, path, read_manifest(path))


def list_runs(root: Path) -> list[RunInfo]:
    """Every complete published run, oldest first."""
    found = []
    base = runs_dir(root)
    if not base.is_dir():
        return []
    for path in base.iterdir():
        try:
            found.append(RunInfo(path.name, path, read_manifest(path)))
        except InvalidRunError:
            continue
    return sorted(found, key=lambda run: (run.manifest.created_at, run.run_id))


def set_current(root: Path, run_id: str) -> None:
    """Point ``CURRENT`` at a complete run, atomically (write a temp file, fsync, os.replace)."""
    load_run(root, run_id)  # refuse to point at anything incomplete
    root = Path(root)
    tmp = root / f".{CURRENT_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(run_id + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / CURRENT_NAME)
    fsync_dir(root)


def publish_run(root: Path, manifest: Manifest, write_files: Callable[[Path], None]) -> RunInfo:
    """Publish a run atomically and point ``CURRENT`` at it.

    ``write_files(directory)`` writes the model, tokenizer and anything else into a fresh staging
    directory; the manifest is written after it, everything is fsynced, the directory is renamed into
    ``runs/<run-id>/``, and only then is ``CURRENT`` replaced.
    """
    root = Path(root)
    final = runs_dir(root) / manifest.run_id
    if final.exists():
        raise InvalidRunError(f"run {manifest.run_id} is already published at {final}.")
    staging = root / STAGING_DIR / manifest.run_id
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_files(staging)
    _write_synced(staging / MANIFEST_NAME, manifest.to_json())
    for path in staging.rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_dir(staging)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    fsync_dir(final.parent)
    set_current(root, manifest.run_id)
    return RunInfo(manifest.run_id, final, manifest)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
