"""``python -m trainer train`` from the command line: help, setting errors, a whole run, the block cache."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import write_tiny_csv
from trainer import data, runs
from trainer.cli import main
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = [
    "--init", "scratch", "--scratch-layers", "2", "--scratch-dim", "64", "--scratch-heads", "2",
    "--scratch-vocab", "300", "--block-size", "64", "--batch-size", "4", "--steps", "12", "--lr", "3e-3",
    "--warmup-steps", "2", "--eval-every", "6", "--sample-every", "0", "--checkpoint-every", "6",
    "--device", "cpu", "--no-compile", "--no-progress", "--val-fraction", "0.2",
]


def test_help_lists_every_option():
    """--help works without importing torch-heavy code paths and names the env variables."""
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--help"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout
    for flag in ("--model", "--init", "--block-size", "--resume", "--checkpoint-dir", "--patience",
                 "--compile", "--corpus", "MAESTER_CHECKPOINT_DIR", "MAESTER_MODEL"):
        assert flag in out, flag


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "-1"], "--lr must be a positive learning rate"),
        (["--block-size", "4"], "--block-size must be at least 8 tokens"),
        (["--eval-every", "0"], "--eval-every must be at least 1 step"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--scratch-dim", "100", "--scratch-heads", "3"], "--scratch-dim must be a multiple of"),
        (["--run-id", "a/b"], "--run-id 'a/b' must be a plain name"),
        (["--corpus", "no/such/file.csv"], "corpus file no/such/file.csv does not exist"),
    ],
)
def test_bad_settings_are_one_sentence(flags, message, tmp_path, capsys):
    """Each bad setting is refused with one 'error:' line and exit status 2, no traceback."""
    corpus = write_tiny_csv(tmp_path / "c.csv")
    status = main(["train", "--corpus", str(corpus), "--checkpoint-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_environment_supplies_defaults(tmp_path, capsys, monkeypatch):
    """MAESTER_* variables set the defaults, and a bad one gets the same clear sentence."""
    monkeypatch.setenv("MAESTER_LR", "-0.5")
    corpus = write_tiny_csv(tmp_path / "c.csv")
    status = main(["train", "--corpus", str(corpus), "--checkpoint-dir", str(tmp_path)])
    assert status == 2 and "--lr must be a positive learning rate, not -0.5." in capsys.readouterr().err


def test_unreachable_hub_suggests_scratch_or_a_local_path(tmp_path):
    """Without the Hub, a model name fails with one sentence pointing at --init scratch or a local path."""
    corpus = write_tiny_csv(tmp_path / "c.csv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MAESTER_PROGRESS": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--corpus", str(corpus), "--checkpoint-dir", str(tmp_path),
         "--model", "gpt2", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not load model 'gpt2'") and "--init scratch" in last
    assert "Traceback" not in result.stderr


def test_command_line_run_publishes_and_a_second_run_reuses_the_cache(tmp_path):
    """A whole CLI run from a CSV corpus publishes; a second run on it does not tokenize again."""
    corpus = write_tiny_csv(tmp_path / "c.csv")
    root = tmp_path / "ckpt"
    assert main(["train", "--corpus", str(corpus), "--checkpoint-dir", str(root), "--run-id", "one",
                 *TINY_FLAGS]) == 0
    assert runs.current_run_id(root) == "one"
    (cache_file,) = (root / "cache").glob("blocks-*.safetensors")
    mtime = cache_file.stat().st_mtime_ns
    calls = data.tokenize_calls
    assert main(["train", "--corpus", str(corpus), "--checkpoint-dir", str(root), "--run-id", "two",
                 *TINY_FLAGS]) == 0
    assert data.tokenize_calls == calls and cache_file.stat().st_mtime_ns == mtime
    assert runs.current_run_id(root) == "two"
    events = read_metrics(root / "work" / "two" / "metrics.jsonl")
    assert events[0]["event"] == "start" and events[-1]["status"] == "completed"
    assert runs.current_run(root).manifest.speakers[0] in {"Jon Snow", "Tyrion Lannister", "Arya Stark",
                                                          "Cersei Lannister", "Sansa Stark"}


@pytest.mark.slow
def test_sigkilled_run_resumes_with_resume_alone(tmp_path):
    """SIGKILL a command-line run after its first checkpoint; `train --resume` alone finishes it."""
    import signal
    import time

    corpus = write_tiny_csv(tmp_path / "c.csv")
    root = tmp_path / "ckpt"
    state = root / "work" / "killed" / "state"
    cmd = [sys.executable, "-m", "trainer", "train", "--corpus", str(corpus), "--checkpoint-dir", str(root),
           "--run-id", "killed", *TINY_FLAGS, "--steps", "60", "--checkpoint-every", "5",
           "--eval-every", "30"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not list(state.glob("step-*")):
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert runs.current_run_id(root) is None

    assert main(["train", "--resume", "--checkpoint-dir", str(root), "--no-progress"]) == 0
    events = read_metrics(root / "work" / "killed" / "metrics.jsonl")
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"] % 5 == 0 and starts[1]["resumed_from"] > 0
    assert {e["step"] for e in events if e["event"] == "step"} == set(range(10, 61, 10))  # --log-every 10
    assert events[-1]["event"] == "done" and events[-1]["status"] == "completed"
    assert runs.current_run(root).manifest.steps == 60


def test_summary_line_tells_how_the_run_ended_and_what_to_try_next():
    from trainer.train import TrainResult, summary_line

    result = TrainResult(
        "r1", "early_stopped", 250, math.log(8000.0), math.log(200.0), 200, 100, Path("runs/r1")
    )
    line = summary_line(result)
    assert line.startswith("run r1 stopped early at step 250")
    assert "8000.0 -> 200.0" in line and "best at step 200" in line
    assert "python -m bot console" in line


def test_an_unwritable_checkpoint_dir_is_one_sentence_saying_how_to_fix_it(tmp_path, monkeypatch, capsys):
    """A host folder Docker created as root: one ``error:`` line naming the fix, no traceback."""
    from trainer import train as train_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ck" / "work"))

    monkeypatch.setattr(train_module, "train", refuse)
    corpus = write_tiny_csv(tmp_path / "corpus.csv")
    status = main(["train", "--corpus", str(corpus), "--checkpoint-dir", str(tmp_path / "ck"),
                   "--init", "scratch"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "Permission denied" in err and "chown" in err
