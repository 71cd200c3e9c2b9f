"""Training jobs: parameter checks, metrics tailing, and the real trainer run, killed and resumed."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import signal
from pathlib import Path

import pytest

from trainer.jobs import BadJobParams, Job, JobManager, JobParams, JobStore, MetricsTail

_SPEAKERS = ("Jon Snow", "Tyrion Lannister", "Arya Stark", "Cersei Lannister")
_LINES = ("Winter is coming.", "I drink and I know things.", "A girl has no name.", "The north remembers.",
          "Where are you going?", "To the Wall.")


def write_tiny_corpus(path: Path, episodes: int = 12, lines_per_episode: int = 30) -> Path:
    """A small corpus CSV in the real column layout (a dozen made-up episodes)."""
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Release Date", "Season", "Episode", "Episode Title", "Name", "Sentence"])
        for episode in range(1, episodes + 1):
            for _ in range(lines_per_episode):
                writer.writerow(["2011-04-17", 1, episode, f"Episode {episode}", rng.choice(_SPEAKERS),
                                 rng.choice(_LINES)])
    return path


def tiny_train_args(*, checkpoint_every: int = 5, eval_every: int = 10) -> list[str]:
    """Trainer flags for a tiny scratch model on the CPU (a step takes a few milliseconds)."""
    return ["--scratch-layers", "2", "--scratch-dim", "64", "--scratch-heads", "2", "--scratch-vocab", "300",
            "--block-size", "32", "--batch-size", "4", "--eval-every", str(eval_every), "--eval-batches", "2",
            "--sample-every", "0", "--checkpoint-every", str(checkpoint_every), "--warmup-steps", "0",
            "--device", "cpu", "--log-every", "1", "--patience", "0"]


def tiny_env() -> dict[str, str]:
    """The environment for test trainers: one OpenMP thread, since spinning thread pools on a shared
    CPU make a tiny model's steps a hundred times slower."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_manager(root: Path, **options) -> JobManager:
    """A job manager whose jobs train a tiny scratch model, polling metrics often."""
    options.setdefault("env", tiny_env())
    options.setdefault("extra_train_args", tiny_train_args())
    options.setdefault("poll_interval_s", 0.05)
    options.setdefault("cancel_grace_s", 5.0)
    return JobManager(root, **options)


async def wait_for(manager: JobManager, job_id: str, predicate, timeout: float = 60.0) -> Job:
    """Follow a job until ``predicate(job)`` holds (or the job finishes)."""
    async def follow() -> Job:
        async for job in manager.watch(job_id):
            if predicate(job) or job.finished:
                return job
        return manager.get(job_id)

    return await asyncio.wait_for(follow(), timeout)


# --- parameters ------------------------------------------------------------------------------------


def test_params_translate_to_trainer_flags() -> None:
    """A job's options map onto the real train flags."""
    params = JobParams.from_json({"steps": 50, "learning_rate": 3e-4, "init": "gpt2", "corpus": "a.csv"})
    assert params.train_args() == [
        "--steps", "50", "--lr", "0.0003", "--init", "pretrained", "--model", "gpt2", "--corpus", "a.csv"
    ]
    assert JobParams.from_json(params.to_json()) == params
    assert JobParams.from_json({}).train_args() == ["--init", "current"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object"),
        ({"steps": "ten"}, "steps must be a whole number"),
        ({"steps": 0}, "between 1 and"),
        ({"steps": True}, "whole number"),
        ({"steps": 10, "epochs": 1}, "not both"),
        ({"learning_rate": -1}, "greater than 0"),
        ({"learning_rate": float("nan")}, "greater than 0"),
        ({"epochs": 5000}, "at most"),
        ({"init": "bert"}, "init must be one of"),
        ({"corpus": [""]}, "corpus must be"),
        ({"stpes": 10}, "Unknown field 'stpes'"),
    ],
)
def test_bad_params_get_one_sentence(body, fragment: str) -> None:
    """Every malformed or out-of-range option is refused with a sentence naming it."""
    with pytest.raises(BadJobParams, match=fragment):
        JobParams.from_json(body)


def test_the_trainer_never_sees_the_secrets(tmp_path: Path) -> None:
    """The service token and the Discord token stay out of the trainer's environment."""
    env = {"PATH": "/usr/bin", "MAESTER_TRAINER_TOKEN": "t1", "DISCORD_TOKEN": "t2", "MAESTER_STEPS": "9"}
    child = JobManager(tmp_path, env=env).child_env()
    assert "MAESTER_TRAINER_TOKEN" not in child and "DISCORD_TOKEN" not in child
    assert child["MAESTER_STEPS"] == "9"


def test_metrics_tail_waits_for_whole_lines(tmp_path: Path) -> None:
    """A half-written last line is read only once it is complete; garbage lines are skipped."""
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []
    path.write_text('{"event": "start", "total_steps": 5}\nnot json\n{"event": "st', encoding="utf-8")
    assert tail.read_new() == [{"event": "start", "total_steps": 5}]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('ep", "step": 1}\n')
    assert tail.read_new() == [{"event": "step", "step": 1}]
    assert tail.read_new() == []


def test_a_job_left_running_is_interrupted_on_the_next_start(tmp_path: Path) -> None:
    """History written by a parent that died mid-job loads with that job interrupted."""
    job = Job(id="abc", params=JobParams(steps=5), run_id="run-x", state="running", step=3, pid=None)
    JobStore(tmp_path).save([job])

    async def reopen() -> Job:
        manager = JobManager(tmp_path)
        await manager.open()
        return manager.get("abc")

    reopened = asyncio.run(reopen())
    assert reopened.state == "interrupted" and reopened.step == 3
    assert "resume" in (reopened.error or "")
    saved = json.loads((tmp_path / "jobs" / "jobs.json").read_text(encoding="utf-8"))
    assert saved["jobs"][0]["state"] == "interrupted"


# --- the real trainer ------------------------------------------------------------------------------


async def test_a_killed_trainer_is_interrupted_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL mid-run (as the OOM killer would) leaves the job interrupted; resume finishes it."""
    corpus = write_tiny_corpus(tmp_path / "corpus.csv")
    args = tiny_train_args(checkpoint_every=10, eval_every=100)
    manager = tiny_manager(tmp_path / "ck", extra_train_args=args)
    await manager.open()
    job = await manager.start(JobParams(steps=150, init="scratch", corpus=(str(corpus),)))
    running = await wait_for(manager, job.id, lambda j: (j.last_checkpoint_step or 0) >= 10)
    assert running.state == "running", "the tiny run ended before it could be killed"
    os.killpg(running.pid, signal.SIGKILL)
    killed = await wait_for(manager, job.id, lambda j: j.finished)
    assert killed.state == "interrupted" and "SIGKILL" in (killed.error or "")
    assert killed.step < 150
    assert manager.get(job.id).state == "interrupted"

    resumed = await manager.resume(job.id)
    assert resumed.state == "running" and resumed.attempts == 2
    done = await wait_for(manager, job.id, lambda j: False, timeout=120)
    assert done.state == "succeeded", manager.log_path(job.id).read_text(encoding="utf-8")[-2000:]
    assert done.step == 150 and done.published_run_id == job.run_id
    metrics = (tmp_path / "ck" / "work" / job.run_id / "metrics.jsonl").read_text(encoding="utf-8")
    starts = [json.loads(line) for line in metrics.splitlines() if '"start"' in line]
    assert starts[-1]["resumed_from"] is not None and starts[-1]["resumed_from"] >= 10
    await manager.close()


async def test_a_trainer_error_fails_the_job_with_its_sentence(tmp_path: Path) -> None:
    """A trainer that refuses its settings fails the job; the error is the trainer's own sentence."""
    manager = tiny_manager(tmp_path / "ck")
    await manager.open()
    job = await manager.start(JobParams(steps=5, init="scratch", corpus=(str(tmp_path / "missing.csv"),)))
    failed = await wait_for(manager, job.id, lambda j: j.finished)
    assert failed.state == "failed" and failed.exit_code == 2
    assert failed.error is not None and "missing.csv" in failed.error and "Traceback" not in failed.error
    assert manager.active() is None
    await manager.close()
