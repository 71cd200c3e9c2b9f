"""Hot swap: the watcher loads new runs into the real engine, refuses broken ones, and rolls back."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest

from bot.engine import Engine, SamplingParams
from bot.model_loader import load_run_model, smoke_test
from bot.model_watcher import ModelWatcher, WatchResult
from tests.tiny import publish_tiny_run
from trainer import runs
from trainer.scene_format import build_prompt


class Harness:
    """A real engine serving run A, a watcher over the same checkpoint root, and what it announced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loads: list[str] = []
        self.announced: list[WatchResult] = []
        first = publish_tiny_run(root, "run-a", seed=0)
        self.engine = Engine(load_run_model(first), max_batch_size=4, max_new_tokens_cap=32)
        self.watcher = ModelWatcher(root, self.engine, loader=self._load, smoke_test=smoke_test,
                                    poll_interval_s=0.05, notify=self._notify)

    def _load(self, run: runs.RunInfo):  # the real loader, counting calls
        self.loads.append(run.run_id)
        return load_run_model(run)

    async def _notify(self, result: WatchResult) -> None:
        self.announced.append(result)

    async def generate(self, tokens: int = 8) -> str:
        """One real request through the engine; returns the run id that served it."""
        params = SamplingParams(max_new_tokens=tokens, seed=1)
        result = await self.engine.submit(build_prompt(characters=("Jon Snow",)), params).result()
        return result.run_id


@pytest.fixture
async def harness(tmp_path: Path):
    h = Harness(tmp_path)
    await h.engine.start()
    yield h
    await h.watcher.stop()
    await h.engine.stop(drain_timeout_s=1.0)


async def test_a_newly_published_run_is_swapped_in(harness: Harness) -> None:
    """Publishing a run moves CURRENT; the next check swaps the engine to it."""
    assert (await harness.watcher.check()).outcome == "unchanged"
    publish_tiny_run(harness.root, "run-b", seed=1)
    result = await harness.watcher.check()
    assert result.outcome == "swapped" and result.run_id == "run-b" and result.previous_run_id == "run-a"
    assert harness.engine.run_id == "run-b"
    assert await harness.generate() == "run-b"
    assert [r.outcome for r in harness.announced] == ["swapped"]


async def test_the_poll_loop_notices_a_new_run(harness: Harness) -> None:
    """Started in the background, the watcher picks up a publish without being asked."""
    harness.watcher.start()
    publish_tiny_run(harness.root, "run-b", seed=1)
    for _ in range(200):
        if harness.engine.run_id == "run-b":
            break
        await asyncio.sleep(0.05)
    assert harness.engine.run_id == "run-b"


def _truncate_weights(run: runs.RunInfo) -> None:
    weights = run.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _drop_manifest(root: Path) -> None:
    # A run directory that never got its manifest (e.g. copied by hand), named by CURRENT.
    shutil.copytree(runs.runs_dir(root) / "run-a", runs.runs_dir(root) / "run-bad")
    (runs.runs_dir(root) / "run-bad" / runs.MANIFEST_NAME).unlink()
    (root / runs.CURRENT_NAME).write_text("run-bad\n", encoding="utf-8")


def _wrong_tokenizer_hash(root: Path) -> None:
    good = runs.load_run(root, "run-a")
    manifest = dataclasses.replace(good.manifest, run_id="run-bad", tokenizer_hash="f" * 64)
    skip_manifest = shutil.ignore_patterns(runs.MANIFEST_NAME)

    def copy_model(staging: Path) -> None:
        shutil.copytree(good.path, staging, dirs_exist_ok=True, ignore=skip_manifest)

    runs.publish_run(root, manifest, copy_model)


def _wrong_scene_format(root: Path) -> None:
    publish_tiny_run(root, "run-bad", scene_format_version=999)


@pytest.mark.parametrize("breakage", ["truncated", "no_manifest", "tokenizer_hash", "scene_format"])
async def test_a_broken_run_is_refused_and_the_old_model_keeps_serving(
    harness: Harness, breakage: str
) -> None:
    """A corrupt or incompatible run is refused once, announced, and never retried by the poll."""
    if breakage == "truncated":
        _truncate_weights(publish_tiny_run(harness.root, "run-bad", seed=2))
    elif breakage == "no_manifest":
        _drop_manifest(harness.root)
    elif breakage == "tokenizer_hash":
        _wrong_tokenizer_hash(harness.root)
    else:
        _wrong_scene_format(harness.root)

    result = await harness.watcher.check()
    assert result.outcome == "refused" and result.run_id == "run-bad"
    assert "run-bad" in harness.watcher.refused
    assert harness.engine.run_id == "run-a"
    assert await harness.generate() == "run-a"
    assert [r.outcome for r in harness.announced] == ["refused"]
    assert "still serving run-a" in harness.announced[0].message

    loads_before = len(harness.loads)
    harness.watcher.start()
    await asyncio.sleep(0.3)  # several poll intervals
    assert len(harness.loads) == loads_before, "a refused run must not be reloaded in a loop"
    assert len(harness.announced) == 1
    assert any("run-bad" in line for line in harness.watcher.status_lines())


async def test_reload_retries_a_refused_run_once_it_is_fixed(harness: Harness) -> None:
    """/reload (force) tries a refused run again; a fixed run is then served."""
    bad = publish_tiny_run(harness.root, "run-b", seed=1)
    weights = bad.path / "model.safetensors"
    good_bytes = weights.read_bytes()
    weights.write_bytes(good_bytes[:100])
    assert (await harness.watcher.check()).outcome == "refused"
    assert (await harness.watcher.check()).outcome == "unchanged"  # CURRENT unchanged: nothing re-read
    weights.write_bytes(good_bytes)
    result = await harness.watcher.check(force=True)
    assert result.outcome == "swapped" and harness.engine.run_id == "run-b"
    assert "run-b" not in harness.watcher.refused


async def test_rollback_returns_to_the_previous_run(harness: Harness) -> None:
    """/rollback serves the run before and points CURRENT back at it."""
    publish_tiny_run(harness.root, "run-b", seed=1)
    await harness.watcher.check()
    assert harness.engine.run_id == "run-b"
    result = await harness.watcher.rollback()
    assert result.outcome == "swapped" and result.run_id == "run-a"
    assert harness.engine.run_id == "run-a"
    assert runs.current_run_id(harness.root) == "run-a"
    assert (await harness.watcher.check()).outcome == "unchanged"  # the poll agrees with the rollback
    assert await harness.generate() == "run-a"
    nothing = await harness.watcher.rollback()  # nothing older than run-a
    assert nothing.outcome == "nothing" and harness.engine.run_id == "run-a"


async def test_rollback_after_a_restart_uses_the_published_runs(tmp_path: Path) -> None:
    """With no memory of earlier swaps, rollback picks the newest run published before the served one."""
    publish_tiny_run(tmp_path, "run-a", seed=0)
    second = publish_tiny_run(tmp_path, "run-b", seed=1)
    _bump_created_at(tmp_path, "run-b", "2099-01-01T00:00:00+00:00")
    engine = Engine(load_run_model(runs.load_run(tmp_path, "run-b")), max_new_tokens_cap=8)
    await engine.start()
    try:
        watcher = ModelWatcher(tmp_path, engine, loader=load_run_model, smoke_test=smoke_test,
                               served_run_id=second.run_id)
        result = await watcher.rollback()
        assert result.outcome == "swapped" and engine.run_id == "run-a"
        assert runs.current_run_id(tmp_path) == "run-a"
        await watcher.stop()
    finally:
        await engine.stop(drain_timeout_s=1.0)


def _bump_created_at(root: Path, run_id: str, created_at: str) -> None:
    path = runs.runs_dir(root) / run_id / runs.MANIFEST_NAME
    manifest = runs.read_manifest(path.parent)
    path.write_text(dataclasses.replace(manifest, created_at=created_at).to_json(), encoding="utf-8")


async def test_requests_in_flight_finish_while_a_run_is_swapped_in(harness: Harness) -> None:
    """Every request submitted around a swap is answered; those submitted after it use the new run."""
    prompt = build_prompt(characters=("Arya Stark",))
    before = [harness.engine.submit(prompt, SamplingParams(max_new_tokens=24, seed=i)) for i in range(6)]
    publish_tiny_run(harness.root, "run-b", seed=1)
    result = await harness.watcher.check()
    assert result.outcome == "swapped"
    after = [harness.engine.submit(prompt, SamplingParams(max_new_tokens=8, seed=i)) for i in range(3)]
    done_before = await asyncio.gather(*(h.result() for h in before))
    done_after = await asyncio.gather(*(h.result() for h in after))
    assert len(done_before) == 6 and all(r.finish_reason != "cancelled" for r in done_before)
    assert {r.run_id for r in done_after} == {"run-b"}
