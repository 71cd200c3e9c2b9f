"""Publishing is atomic: a crash at any point leaves CURRENT on the previous complete run."""

import pytest

from tests.tiny import (
    make_tiny_corpus,
    make_tiny_model,
    make_tiny_tokenizer,
    publish_tiny_run,
    save_model_files,
    tiny_train_config,
)
from trainer import runs
from trainer.metrics import read_metrics
from trainer.train import train


class Crash(Exception):
    """Stands for a process dying at an awkward moment."""


def _manifest(run_id):
    return runs.Manifest(
        run_id=run_id, base_model="tiny", corpus_sha256="0" * 64, tokenizer_hash="h", scene_format_version=1,
        steps=1, tokens_seen=1, val_loss_before=3.0, val_ppl_before=20.0, val_loss_after=2.0,
        val_ppl_after=7.4,
    )


def _write_model(directory):
    tokenizer = make_tiny_tokenizer()
    save_model_files(make_tiny_model(tokenizer, n_positions=32), tokenizer, directory)


def _assert_only_complete_runs(root, current):
    assert runs.current_run_id(root) == current
    assert runs.current_run(root).manifest.run_id == current
    for path in runs.runs_dir(root).iterdir():
        runs.read_manifest(path)  # raises for anything half-written


def test_crash_while_writing_files_leaves_current_alone(tmp_path):
    """A crash half-way through writing the model leaves nothing in runs/ and CURRENT unchanged."""
    publish_tiny_run(tmp_path, "old")

    def write_then_crash(directory):
        _write_model(directory)
        raise Crash

    with pytest.raises(Crash):
        runs.publish_run(tmp_path, _manifest("new"), write_then_crash)
    _assert_only_complete_runs(tmp_path, "old")
    assert not (runs.runs_dir(tmp_path) / "new").exists()
    runs.publish_run(tmp_path, _manifest("new"), _write_model)  # a retry cleans the staging leftovers
    _assert_only_complete_runs(tmp_path, "new")


def test_crash_before_the_rename_leaves_current_alone(tmp_path, monkeypatch):
    """Files and manifest written, then a crash before the rename into runs/: still the old run."""
    publish_tiny_run(tmp_path, "old")

    def no_rename(src, dst):
        raise Crash

    monkeypatch.setattr(runs.os, "rename", no_rename)
    with pytest.raises(Crash):
        runs.publish_run(tmp_path, _manifest("new"), _write_model)
    monkeypatch.undo()
    _assert_only_complete_runs(tmp_path, "old")
    assert [p.name for p in runs.runs_dir(tmp_path).iterdir()] == ["old"]


def test_crash_before_set_current_leaves_current_on_the_old_run(tmp_path, monkeypatch):
    """The new run is complete in runs/ but CURRENT still names the old one until it is switched."""
    publish_tiny_run(tmp_path, "old")

    def crash(root, run_id):
        raise Crash

    monkeypatch.setattr(runs, "set_current", crash)
    with pytest.raises(Crash):
        runs.publish_run(tmp_path, _manifest("new"), _write_model)
    monkeypatch.undo()
    _assert_only_complete_runs(tmp_path, "old")
    assert runs.load_run(tmp_path, "new").manifest.run_id == "new"


def test_crash_while_replacing_the_pointer_keeps_the_old_pointer(tmp_path, monkeypatch):
    """The pointer is replaced atomically: a crash before os.replace leaves the old CURRENT intact."""
    publish_tiny_run(tmp_path, "old")

    def no_replace(src, dst):
        raise Crash

    monkeypatch.setattr(runs.os, "replace", no_replace)
    with pytest.raises(Crash):
        runs.publish_run(tmp_path, _manifest("new"), _write_model)
    monkeypatch.undo()
    _assert_only_complete_runs(tmp_path, "old")


def test_set_current_refuses_an_incomplete_run(tmp_path):
    """CURRENT never points at a directory without a manifest."""
    publish_tiny_run(tmp_path, "old")
    (runs.runs_dir(tmp_path) / "half").mkdir()
    with pytest.raises(runs.InvalidRunError):
        runs.set_current(tmp_path, "half")
    assert runs.current_run_id(tmp_path) == "old"
    assert [run.run_id for run in runs.list_runs(tmp_path)] == ["old"]


def test_training_run_whose_publish_crashes_reports_failure_and_keeps_current(tmp_path, monkeypatch):
    """train() records the error in metrics.jsonl and CURRENT stays on the previous run."""
    publish_tiny_run(tmp_path, "old")

    def crash(root, run_id):
        raise Crash("disk went away")

    monkeypatch.setattr(runs, "set_current", crash)
    with pytest.raises(Crash):
        train(tiny_train_config(tmp_path, steps=5, eval_every=5, checkpoint_every=5), make_tiny_corpus())
    monkeypatch.undo()
    _assert_only_complete_runs(tmp_path, "old")
    events = read_metrics(tmp_path / "work" / "tiny" / "metrics.jsonl")
    assert events[-2]["event"] == "error" and "disk went away" in events[-2]["message"]
    assert events[-1] == {**events[-1], "event": "done", "status": "failed"}


def test_resume_after_a_crash_between_rename_and_pointer_finishes_the_publish(tmp_path, monkeypatch):
    """The run reached runs/ but CURRENT was not switched: `--resume` switches it instead of failing."""
    publish_tiny_run(tmp_path, "old")
    config = tiny_train_config(tmp_path, steps=5, eval_every=5, checkpoint_every=5)

    def crash(root, run_id):
        raise Crash

    monkeypatch.setattr(runs, "set_current", crash)
    with pytest.raises(Crash):
        train(config, make_tiny_corpus())
    monkeypatch.undo()
    _assert_only_complete_runs(tmp_path, "old")
    result = train(tiny_train_config(tmp_path, steps=5, eval_every=5, checkpoint_every=5, resume=True),
                   make_tiny_corpus())
    assert result.status == "completed" and result.published == runs.runs_dir(tmp_path) / "tiny"
    _assert_only_complete_runs(tmp_path, "tiny")
