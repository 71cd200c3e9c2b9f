"""Resume state: atomic checkpoints, the newest two kept, weights-only loading, RNG round trip."""

import random

import torch

from tests.tiny import make_tiny_model, make_tiny_tokenizer
from trainer import checkpoint as ckpt


def _model_and_optimizer():
    model = make_tiny_model(make_tiny_tokenizer(), n_positions=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    """Weights, optimizer state and RNG states come back exactly, through weights_only loading."""
    model, optimizer = _model_and_optimizer()
    random.seed(3)
    torch.manual_seed(3)
    state = {"step": 7, "optimizer": optimizer.state_dict(), "rng": ckpt.rng_state(), "note": "plain"}
    expected_py, expected_torch = random.random(), torch.rand(3)
    best = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    path = ckpt.save_checkpoint(tmp_path, 7, model, state, best)

    loaded = ckpt.load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded.step == 7 and loaded.path == path
    fresh, fresh_opt = _model_and_optimizer()
    ckpt.load_weights(fresh, loaded.path)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    fresh_opt.load_state_dict(loaded.state["optimizer"])
    restored, original = fresh_opt.state_dict()["state"][0], optimizer.state_dict()["state"][0]
    assert torch.equal(restored["exp_avg"], original["exp_avg"])
    ckpt.set_rng_state(loaded.state["rng"])
    assert random.random() == expected_py and torch.equal(torch.rand(3), expected_torch)
    best_loaded = ckpt.load_best_weights(loaded.path)
    assert torch.equal(best_loaded["transformer.wte.weight"], best["transformer.wte.weight"])


def test_only_the_newest_two_complete_checkpoints_are_kept(tmp_path):
    """Older checkpoints are pruned; a leftover temporary directory is never taken for a checkpoint."""
    model, _ = _model_and_optimizer()
    for step in (10, 20, 30):
        ckpt.save_checkpoint(tmp_path, step, model, {"step": step})
    (tmp_path / ".tmp-step-00000040").mkdir()  # a crash while writing step 40
    assert [p.name for p in ckpt.checkpoint_paths(tmp_path)] == ["step-00000020", "step-00000030"]
    assert ckpt.load_latest_checkpoint(tmp_path).step == 30
    assert ckpt.load_best_weights(ckpt.checkpoint_paths(tmp_path)[-1]) is None


def test_no_checkpoint_means_none(tmp_path):
    """A run without checkpoints has nothing to resume."""
    assert ckpt.load_latest_checkpoint(tmp_path / "missing") is None
