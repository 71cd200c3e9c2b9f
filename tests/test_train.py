"""The training loop: learning, metrics contract, manifest, early stopping, kill-and-resume equality."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import make_tiny_corpus, tiny_train_config
from trainer import runs
from trainer.errors import UserError
from trainer.metrics import EVENTS, read_metrics
from trainer.model import load_pretrained, tokenizer_hash
from trainer.scene_format import SCENE_FORMAT_VERSION
from trainer.train import latest_unfinished_run, lr_schedule, train


def _events(root, run_id="tiny", kind=None):
    events = read_metrics(root / "work" / run_id / "metrics.jsonl")
    return [e for e in events if kind is None or e["event"] == kind]


def test_validation_loss_falls_and_metrics_follow_the_contract(tmp_path):
    """A tiny model learns repetitive scenes; metrics.jsonl carries every documented field."""
    corpus = make_tiny_corpus()
    result = train(tiny_train_config(tmp_path, steps=40, sample_every=20), corpus)
    assert result.status == "completed" and result.step == 40
    assert result.best_val_loss < result.val_loss_before - 1.0

    events = _events(tmp_path)
    assert all(e["event"] in EVENTS for e in events)
    start = events[0]
    assert start["event"] == "start" and start["run_id"] == "tiny" and start["total_steps"] == 40
    steps = _events(tmp_path, kind="step")
    assert [e["step"] for e in steps] == list(range(1, 41))
    for e in steps:
        assert {"step", "total_steps", "loss", "lr", "tokens_per_s", "eta_s", "elapsed_s"} <= e.keys()
        assert e["tokens_per_s"] > 0 and e["eta_s"] >= 0
    evals = _events(tmp_path, kind="eval")
    assert [e["step"] for e in evals] == [0, 10, 20, 30, 40]
    assert all(e["val_ppl"] == pytest.approx(math.exp(e["val_loss"])) for e in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    published = _events(tmp_path, kind="published")[0]
    assert published["run_id"] == "tiny" and published["val_ppl_after"] < published["val_ppl_before"]
    assert events[-1] == {**events[-1], "event": "done", "status": "completed"}
    samples = (tmp_path / "work" / "tiny" / "samples.txt").read_text(encoding="utf-8")
    assert samples.count("===== step") == 2 and "### Scene\nCharacters: Jon Snow, Tyrion Lannister" in samples
    assert runs.current_run_id(tmp_path) == "tiny"


def test_manifest_describes_the_published_run(tmp_path):
    """The manifest records origin, corpus, tokenizer, progress, losses and speakers; the model loads."""
    corpus = make_tiny_corpus()
    result = train(tiny_train_config(tmp_path, steps=20), corpus)
    run = runs.current_run(tmp_path)
    m = run.manifest
    assert m.run_id == "tiny" and m.base_model.startswith("scratch")
    assert m.corpus_sha256 == corpus.corpus_sha256 and m.scene_format_version == SCENE_FORMAT_VERSION
    assert m.steps == 20 and m.tokens_seen == result.tokens_seen > 20 * 4 * 32
    assert m.val_loss_before == pytest.approx(result.val_loss_before)
    assert m.val_loss_after == pytest.approx(result.best_val_loss) and m.val_loss_after < m.val_loss_before
    assert m.val_ppl_after == pytest.approx(math.exp(m.val_loss_after))
    assert list(m.speakers) == corpus.speakers
    assert m.extra["settings"]["lr"] == 3e-3 and m.extra["best_step"] == 20
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (run.path / name).is_file(), name
    loaded = load_pretrained(str(run.path))
    assert tokenizer_hash(loaded.tokenizer) == m.tokenizer_hash
    assert loaded.model.generation_config.eos_token_id == loaded.tokenizer.eos_token_id


def test_early_stopping_publishes_the_best_weights_not_the_last(tmp_path):
    """With a learning rate that makes things worse, training stops and the starting weights are published."""
    corpus = make_tiny_corpus()
    config = tiny_train_config(
        tmp_path, steps=60, lr=1.0, warmup_steps=0, grad_clip=0, eval_every=5, patience=2
    )
    result = train(config, corpus)
    assert result.status == "early_stopped" and result.step == 10 and result.best_step == 0
    assert _events(tmp_path, kind="early_stop")[0]["step"] == 10
    assert _events(tmp_path)[-1]["status"] == "early_stopped"
    published = load_file(str(runs.current_run(tmp_path).path / "model.safetensors"))
    start = load_file(str(tmp_path / "work" / "tiny" / "init" / "model.safetensors"))
    for name, tensor in start.items():
        assert torch.equal(published[name], tensor), name
    assert runs.current_run(tmp_path).manifest.val_loss_after == pytest.approx(result.val_loss_before)


def test_killed_run_resumes_to_exactly_the_uninterrupted_losses(tmp_path):
    """A run stopped after step 25 (last checkpoint at 20) resumes and repeats the uninterrupted losses."""
    corpus = make_tiny_corpus()
    whole = tmp_path / "whole"
    train(tiny_train_config(whole, steps=40), corpus)

    killed = tmp_path / "killed"
    first = train(tiny_train_config(killed, steps=40), corpus, stop_after_step=25)
    assert first.status == "interrupted" and runs.current_run_id(killed) is None
    with pytest.raises(UserError, match="--resume"):
        train(tiny_train_config(killed, steps=40), corpus)
    assert latest_unfinished_run(killed) == "tiny"
    resumed = train(tiny_train_config(killed, steps=40, resume=True), corpus)
    assert resumed.status == "completed"

    def by_step(root, kind, field):
        return {e["step"]: e[field] for e in _events(root, kind=kind)}  # later lines win: the resumed ones

    expected, got = by_step(whole, "step", "loss"), by_step(killed, "step", "loss")
    assert sorted(got) == list(range(1, 41))
    for step in range(1, 41):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    assert by_step(killed, "eval", "val_loss") == pytest.approx(by_step(whole, "eval", "val_loss"), rel=1e-5)
    assert _events(killed, kind="start")[-1]["resumed_from"] == 20
    a = load_file(str(runs.current_run(whole).path / "model.safetensors"))
    b = load_file(str(runs.current_run(killed).path / "model.safetensors"))
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    with pytest.raises(UserError, match="already finished"):
        train(tiny_train_config(killed, steps=40, resume=True), corpus)


def test_init_current_continues_the_published_run(tmp_path):
    """--init current starts from CURRENT's weights and tokenizer, and publishes a new run."""
    corpus = make_tiny_corpus()
    first = train(tiny_train_config(tmp_path, steps=20, run_id="one"), corpus)
    second = train(tiny_train_config(tmp_path, steps=10, run_id="two", init="current"), corpus)
    assert second.val_loss_before == pytest.approx(first.best_val_loss, rel=1e-5)
    assert runs.current_run_id(tmp_path) == "two"
    manifest = runs.current_run(tmp_path).manifest
    assert "continued from run one" in manifest.base_model
    assert manifest.tokenizer_hash == runs.load_run(tmp_path, "one").manifest.tokenizer_hash


def test_init_current_without_a_published_run_is_one_sentence(tmp_path):
    """Asking to continue when nothing was published says what to do, and the metrics record the error."""
    with pytest.raises(UserError, match="needs a published run"):
        train(tiny_train_config(tmp_path, init="current"), make_tiny_corpus())
    assert [e["event"] for e in _events(tmp_path)] == ["error", "done"]
    assert json.loads((tmp_path / "work" / "tiny" / "config.json").read_text())["init"] == "current"



def test_schedule_warms_up_then_decays_to_the_floor():
    """Linear warmup to the peak, cosine down to min_lr_ratio at the last step."""
    factor = lr_schedule(warmup=10, total=110, min_ratio=0.1)
    warm = [factor(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] < 0.2 and factor(10) == pytest.approx(1.0)
    decay = [factor(s) for s in range(10, 111)]
    assert decay == sorted(decay, reverse=True) and factor(110) == pytest.approx(0.1)
    assert factor(500) == pytest.approx(0.1)


def test_epochs_set_the_number_of_steps(tmp_path):
    """--epochs 1 runs ceil(train blocks / blocks per step) steps."""
    result = train(tiny_train_config(tmp_path, epochs=1.0, eval_every=100, checkpoint_every=100),
                   make_tiny_corpus())
    start = _events(tmp_path, kind="start")[0]
    assert start["total_steps"] == math.ceil(start["train_blocks"] / 4) == result.step
