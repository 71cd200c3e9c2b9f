"""Faults maester must survive, each made real: processes killed with SIGKILL, disks that fill up, a
dropped gateway, Discord answering 429 and 5xx, an interaction token that expires, a corrupt published run.

Already covered elsewhere (see docs/reliability.md): a trainer job SIGKILLed under the job manager
(tests/test_jobs.py), the trainer service killed mid-job and restarted (tests/test_service.py), a crash
at every step of publishing (tests/test_publish.py), a broken run refused while the old one keeps serving
(tests/test_model_watcher.py).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.model_loader import load_run_model
from tests.bot_harness import checkpoint_dir_for, publish_trained_tiny_run, running_bot, scene_finished
from tests.fakediscord import FakeDiscord, Interaction
from tests.fakediscord import fake_discord as fake_discord  # the fixture
from tests.test_jobs import tiny_train_args, write_tiny_corpus
from tests.tiny import make_tiny_corpus, publish_tiny_run, tiny_train_config
from trainer import checkpoint, runs
from trainer.checkpoint import checkpoint_paths
from trainer.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS = 24  # of the killed training run: checkpoints every 4, evaluations every 12
SCENE_TIMEOUT = 60.0


# --------------------------------------------------------------------------------------------------
# The trainer, killed for real


def assert_served_model_is_whole(root: Path, expected: str) -> None:
    """CURRENT names ``expected``, that run loads as the bot would load it, and runs/ holds no partial run."""
    run = runs.current_run(root)
    assert run is not None and run.run_id == expected
    load_run_model(run, "cpu")  # manifest, safetensors, tokenizer hash: everything the bot checks
    for path in runs.runs_dir(root).iterdir():
        runs.read_manifest(path)  # every directory under runs/ is complete


def assert_checkpoints_are_whole(state_dir: Path) -> None:
    """Every step-N checkpoint can be resumed from (weights and state read back)."""
    for path in checkpoint_paths(state_dir):
        assert (path / "model.safetensors").is_file(), path
        checkpoint.load_latest_checkpoint(path.parent)


# A real interpreter that imports torch and transformers once, then forks one fresh process per trainer
# run, each executing exactly what ``python -m trainer train ...`` executes (trainer.cli.main). The parent
# has run no torch code, so forking is safe; importing once saves ~5-15 s per launch on a busy machine.
LAUNCHER = r"""
import json, os, sys
import torch, transformers, safetensors.torch, tokenizers  # noqa: F401 - paid once, shared by every fork
from transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig, PreTrainedTokenizerFast  # noqa
import trainer.cli, trainer.train, trainer.prepare, trainer.model, trainer.data, trainer.checkpoint  # noqa
print("ready", flush=True)
for line in sys.stdin:
    argv, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1); os.dup2(fd, 2)
        code = 1
        try:
            code = trainer.cli.main(argv)
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Trainer:
    """``python -m trainer train`` on a tiny scratch model, as real child processes that can be killed."""

    def __init__(self, root: Path, corpus: Path, log: Path) -> None:
        self.root, self.corpus, self.log = root, corpus, log
        self.pid: int | None = None
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], cwd=REPO, env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.launcher.stdout is not None
        line = self.launcher.stdout.readline()
        assert line, f"the launcher died; log:\n{self.tail()}"
        return line.strip()

    def start(self, *extra: str) -> int:
        """Start a trainer run; returns its pid."""
        argv = ["train", "--corpus", str(self.corpus), "--checkpoint-dir", str(self.root),
                "--init", "scratch", "--steps", str(STEPS), "--run-id", "new",
                *tiny_train_args(checkpoint_every=4, eval_every=12), "--scratch-dim", "128", *extra]
        assert self.launcher.stdin is not None
        self.launcher.stdin.write(json.dumps([argv, str(self.log)]) + "\n")
        self.launcher.stdin.flush()
        self.pid = int(self._read())
        return self.pid

    def _alive(self) -> bool:
        assert self.pid is not None
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
        except OSError:
            return False

    def freeze_when(self, seen: Callable[[], bool], timeout: float = 120.0) -> bool:
        """SIGSTOP the trainer the moment ``seen()`` holds (polled every 0.2 ms); False if it ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen():
                os.kill(self.pid, signal.SIGSTOP)
                return True
            if not self._alive():
                return False
            time.sleep(0.0002)  # leave the (shared) CPU to the trainer between looks
        raise AssertionError(f"the trainer never reached the kill point; log:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the frozen trainer, as the OOM killer or a power cut would."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        assert int(self._read()) == -signal.SIGKILL

    def finish(self) -> int:
        """Wait for the trainer to exit by itself; its exit status."""
        return int(self._read())

    def close(self) -> None:
        self.launcher.kill()
        self.launcher.wait(timeout=30)

    def tail(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]
        except OSError:
            return ""


def _metric_steps(path: Path) -> int:
    """Training steps logged so far (cheap enough to poll)."""
    try:
        return path.read_text(encoding="utf-8").count('"event": "step"')
    except OSError:
        return 0


@pytest.mark.slow
def test_trainer_killed_in_a_step_while_checkpointing_and_while_publishing(tmp_path: Path) -> None:
    """SIGKILL at three points of one run; after each, CURRENT still serves the old complete run, every
    checkpoint is whole, and ``--resume`` carries on; the last resume publishes the new run."""
    root = tmp_path / "ck"
    publish_tiny_run(root, "old")
    trainer = Trainer(root, write_tiny_corpus(tmp_path / "corpus.csv"), tmp_path / "train.log")
    try:
        _kill_three_times_then_finish(trainer, root)
    finally:
        trainer.close()


def _kill_three_times_then_finish(trainer: Trainer, root: Path) -> None:
    work = root / "work" / "new"
    state = work / "state"

    # 1. During a training step: once metrics.jsonl shows step 6, between the checkpoints at 4 and 8.
    trainer.start()
    assert trainer.freeze_when(lambda: _metric_steps(work / "metrics.jsonl") >= 6)
    trainer.kill()
    assert_served_model_is_whole(root, "old")
    assert_checkpoints_are_whole(state)
    killed_at = _metric_steps(work / "metrics.jsonl")
    assert killed_at < STEPS and checkpoint_paths(state)

    # 2. While a checkpoint is being written: the moment its hidden temporary directory appears.
    trainer.start("--resume")
    caught = trainer.freeze_when(lambda: any(p.name.startswith(".tmp-step-") for p in _entries(state)))
    assert caught, trainer.tail()
    half = [p for p in _entries(state) if p.name.startswith(".tmp-step-")]
    trainer.kill()
    assert half, "the kill should have landed while a checkpoint was half-written"
    assert_served_model_is_whole(root, "old")
    assert_checkpoints_are_whole(state)  # the half-written one is not among them

    # 3. While publishing: the moment the run's staging directory appears.
    trainer.start("--resume")
    staging = root / runs.STAGING_DIR / "new"
    assert trainer.freeze_when(staging.exists, timeout=120), trainer.tail()
    trainer.kill()
    assert_served_model_is_whole(root, "old")
    assert not (runs.runs_dir(root) / "new").exists() or runs.read_manifest(runs.runs_dir(root) / "new")

    # Resuming finishes the run and publishes it whole.
    trainer.start("--resume")
    assert trainer.finish() == 0, trainer.tail()
    assert_served_model_is_whole(root, "new")
    events = read_metrics(work / "metrics.jsonl")
    assert events[-1]["event"] == "done" and events[-1]["status"] == "completed"
    assert {e["step"] for e in events if e["event"] == "step"} == set(range(1, STEPS + 1))
    assert len([e for e in events if e["event"] == "start"]) == 4


def test_resume_after_a_crash_between_the_rename_and_current(tmp_path: Path, monkeypatch) -> None:
    """The last instant of publishing (run renamed into runs/, CURRENT not yet moved): resume finishes it."""
    from trainer.train import train

    publish_tiny_run(tmp_path, "old")

    def killed(root: Path, run_id: str) -> None:
        raise KeyboardInterrupt  # what the process would feel, as far as Python can

    monkeypatch.setattr(runs, "set_current", killed)
    config = dict(steps=6, eval_every=3, checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(tmp_path, **config), make_tiny_corpus())
    monkeypatch.undo()
    assert_served_model_is_whole(tmp_path, "old")
    result = train(tiny_train_config(tmp_path, resume=True, **config), make_tiny_corpus())
    assert result.status == "completed"
    assert_served_model_is_whole(tmp_path, "tiny")


def _entries(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


# --------------------------------------------------------------------------------------------------
# Disk full while saving


def _no_space(after: int) -> Callable[..., None]:
    """A torch.save that fails with ENOSPC from its ``after``-th call on (the disk filled up)."""
    real = checkpoint.torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    return save


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint_and_the_served_model(
    tmp_path: Path, monkeypatch
) -> None:
    """ENOSPC on the second checkpoint: training stops with the error recorded, the first checkpoint and
    CURRENT are untouched, and once space is back ``--resume`` completes the run."""
    from trainer.train import train

    publish_tiny_run(tmp_path, "old")
    config = dict(steps=12, eval_every=4, checkpoint_every=4)
    monkeypatch.setattr(checkpoint.torch, "save", _no_space(after=2))
    with pytest.raises(OSError, match="No space left"):
        train(tiny_train_config(tmp_path, **config), make_tiny_corpus())
    monkeypatch.undo()
    state = tmp_path / "work" / "tiny" / "state"
    assert [p.name for p in checkpoint_paths(state)] == ["step-00000004"]
    assert_checkpoints_are_whole(state)
    assert_served_model_is_whole(tmp_path, "old")
    events = read_metrics(tmp_path / "work" / "tiny" / "metrics.jsonl")
    assert events[-2]["event"] == "error" and "No space left on device" in events[-2]["message"]

    result = train(tiny_train_config(tmp_path, resume=True, **config), make_tiny_corpus())
    assert result.status == "completed" and result.step == 12
    assert_served_model_is_whole(tmp_path, "tiny")


def test_disk_full_while_publishing_keeps_the_served_model(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC while the new run's files are written: CURRENT stays on the old run, nothing lands in runs/."""
    from trainer.train import train

    publish_tiny_run(tmp_path, "old")
    real_publish = runs.publish_run

    def publish_on_a_full_disk(root: Path, manifest: runs.Manifest, write_files: Callable) -> runs.RunInfo:
        def write_until_full(path: Path) -> None:
            (path / "model.safetensors").write_bytes(b"\0" * 1024)  # some bytes landed before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device")

        return real_publish(root, manifest, write_until_full)

    monkeypatch.setattr(runs, "publish_run", publish_on_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_train_config(tmp_path, steps=4, eval_every=4, checkpoint_every=4), make_tiny_corpus())
    assert_served_model_is_whole(tmp_path, "old")
    assert [p.name for p in runs.runs_dir(tmp_path).iterdir()] == ["old"]


def test_disk_full_is_one_clear_line_from_the_cli(tmp_path: Path, monkeypatch, capsys) -> None:
    """The command line reports a full disk as one ``error:`` line that says how to continue."""
    from trainer.cli import main

    corpus = write_tiny_corpus(tmp_path / "corpus.csv")
    monkeypatch.setattr(checkpoint.torch, "save", _no_space(after=1))
    args = ["train", "--corpus", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"), "--init", "scratch",
            "--steps", "6", "--run-id", "full", *tiny_train_args(checkpoint_every=3)]
    status = main(args)
    err = capsys.readouterr().err
    assert status != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left" in lines[0] and "--resume" in lines[0]


# --------------------------------------------------------------------------------------------------
# Corrupt published run at start-up (a corrupt run published later: tests/test_model_watcher.py)


async def test_bot_refuses_to_start_on_a_corrupt_current_run_with_one_sentence(tmp_path: Path) -> None:
    """Truncated weights in CURRENT: ``run_bot`` stops before connecting, with a clear UserError."""
    from bot.__main__ import run_bot
    from bot.settings import Secret, Settings
    from trainer.errors import UserError

    run = publish_tiny_run(tmp_path, "broken")
    weights = run.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    settings = Settings(discord_token=Secret("never-used-token-0123456789"), checkpoint_dir=tmp_path,
                        device="cpu")
    with pytest.raises(UserError) as caught:
        await run_bot(settings)
    message = str(caught.value)
    assert "\n" not in message and ("broken" in message or "safetensors" in message), message


def test_check_config_names_a_run_without_a_manifest(tmp_path: Path, monkeypatch, capsys) -> None:
    """CURRENT naming a half-copied run (no manifest): one ``error:`` line, exit 2."""
    from bot.__main__ import main

    (runs.runs_dir(tmp_path) / "half").mkdir(parents=True)
    (tmp_path / runs.CURRENT_NAME).write_text("half\n")
    for key in [k for k in os.environ if k.startswith("MAESTER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DISCORD_TOKEN", "MTAxMDEwMTAxMDEwMTAxMDEw.GcHeCk.check-config-token-0123")
    monkeypatch.setenv("MAESTER_CHECKPOINT_DIR", str(tmp_path))
    assert main(["--env-file", str(tmp_path / "absent.env"), "check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "manifest" in err


# --------------------------------------------------------------------------------------------------
# Discord misbehaving while scenes are written


async def _scenes(fake: FakeDiscord, count: int, prefix: str) -> list[Interaction]:
    users = [fake.make_user(f"{prefix}{i}") for i in range(count)]
    return [await fake.invoke("scene", {"characters": "Jon Snow, Arya Stark", "length": "long"}, user=u)
            for u in users]


def _answered(inter: Interaction) -> bool:
    return bool(inter.original and inter.original.embeds)


async def test_gateway_dropped_with_scenes_in_flight(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    """The gateway drops while six scenes are queued or streaming: every one is finished, and the bot
    resumes its session and takes new requests."""
    fake = fake_discord
    async with running_bot(tmp_path, fake, max_batch_size=2) as bot:
        inflight = await _scenes(fake, 6, "before")
        await asyncio.gather(*(i.wait_acked(timeout=10) for i in inflight))
        await fake.drop_gateway()
        sent_while_away = await _scenes(fake, 2, "away")  # replayed on RESUME
        await fake.wait_resumed(timeout=15)
        for inter in inflight + sent_while_away:
            await inter.wait_done(scene_finished, timeout=SCENE_TIMEOUT)
            assert _answered(inter), inter.describe()
        after = await _scenes(fake, 1, "after")
        await after[0].wait_done(scene_finished, timeout=SCENE_TIMEOUT)
        assert _answered(after[0]) and bot.gateway_connected
        assert bot.metrics.requests["ok"] == 9 and bot.metrics.requests["error"] == 0


@pytest.mark.parametrize(
    ("status", "global_"),
    [(429, False), (429, True), (500, False), (502, False), (503, False), (504, False)],
    ids=["429", "429-global", "500", "502", "503", "504"],
)
async def test_rest_errors_are_retried_and_no_scene_is_lost(
    tmp_path: Path, fake_discord: FakeDiscord, status: int, global_: bool
) -> None:
    """Rate limits and server errors on the acknowledgement, the streamed edits and the final scene are
    waited out and retried by the client: every scene still arrives."""
    fake = fake_discord
    async with running_bot(tmp_path, fake) as bot:
        if status == 429:  # a 5xx on the acknowledgement would cost discord.py's 1 s back-off: past 3 s
            fake.inject_failure("POST", r"/callback$", status, retry_after=0.1, global_=global_)
        edits = fake.inject_failure("PATCH", r"/messages/@original$", status, retry_after=0.1,
                                    global_=global_, times=3)
        inters = await _scenes(fake, 3, f"s{status}")
        for inter in inters:
            await inter.wait_done(scene_finished, timeout=SCENE_TIMEOUT)
            assert _answered(inter), inter.describe()
        assert edits.hits == 3
        assert bot.metrics.requests["ok"] == 3
        failed = [r for r in fake.requests if r.status == status]
        assert len(failed) >= 3


async def test_scenes_outliving_their_interaction_token_still_reach_the_channel(
    tmp_path: Path, fake_discord: FakeDiscord
) -> None:
    """Tokens expire while scenes wait in the queue (one at a time): each finished scene still arrives,
    in its reply when it was done before, otherwise as a channel message."""
    fake = fake_discord
    async with running_bot(tmp_path, fake, max_batch_size=1) as bot:
        inters = await _scenes(fake, 4, "slow")
        await asyncio.gather(*(i.wait_acked(timeout=10) for i in inters))
        fake.advance(15 * 60 + 1)  # the fake's clock: every token is now past its lifetime
        await fake.wait_for(lambda: bot.engine.stats().completed >= 4, timeout=SCENE_TIMEOUT)
        originals = {id(i.original) for i in inters}

        def posted() -> list:
            return [m for m in fake.channel_messages(inters[0].channel_id)
                    if m.embeds and id(m) not in originals]

        in_reply = sum(_answered(i) for i in inters)
        await fake.wait_for(lambda: in_reply + len(posted()) >= 4, timeout=10)
        assert len(posted()) >= 1, "the queued scenes ended after their tokens: they must come by channel"
        assert bot.metrics.requests["ok"] == 4


async def test_bot_restart_keeps_serving_the_published_run(tmp_path: Path, fake_discord: FakeDiscord) -> None:
    """A bot stopped and started again on the same checkpoints serves the same run and answers at once."""
    fake = fake_discord
    await asyncio.to_thread(publish_trained_tiny_run, checkpoint_dir_for(tmp_path), "kept")
    async with running_bot(tmp_path, fake) as bot:
        assert bot.engine.run_id == "kept"
    async with running_bot(tmp_path, fake) as bot:
        [inter] = await _scenes(fake, 1, "again")
        await inter.wait_done(scene_finished, timeout=SCENE_TIMEOUT)
        assert _answered(inter) and "model kept" in inter.original.embeds[0]["footer"]["text"]
