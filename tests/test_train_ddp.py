"""Multi-process training (DDP) on CPU with the gloo backend: two ranks, one writer."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.tiny import make_tiny_corpus, tiny_train_config
from trainer import runs
from trainer.metrics import read_metrics
from trainer.train import train

STEPS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, root: str, port: int) -> None:
    """One torchrun-style worker: the environment torchrun would set, then a normal train() call."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    result = train(tiny_train_config(root, steps=STEPS, eval_every=6, checkpoint_every=6, batch_size=2),
                   make_tiny_corpus())
    assert result.status == "completed" and result.step == STEPS
    assert (result.published is not None) == (rank == 0), "only rank 0 publishes"


@pytest.mark.slow
def test_two_gloo_ranks_train_together_and_only_rank_0_writes(tmp_path):
    """Two processes share each step's blocks; rank 0 alone writes metrics, checkpoints and the run."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    single = train(tiny_train_config(tmp_path / "single", steps=1, eval_every=1), make_tiny_corpus())

    root = tmp_path / "ddp"
    mp.start_processes(_rank_main, args=(str(root), _free_port()), nprocs=2, join=True, start_method="spawn")

    events = read_metrics(root / "work" / "tiny" / "metrics.jsonl")
    assert [e["event"] for e in events].count("start") == 1, "rank 1 must not write metrics"
    assert events[0]["world_size"] == 2
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, STEPS + 1))
    evals = [e for e in events if e["event"] == "eval"]
    # Both ranks evaluate half the validation blocks; combined, it is the single-process loss.
    assert evals[0]["val_loss"] == pytest.approx(single.val_loss_before, rel=1e-5)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert events[-1]["event"] == "done" and events[-1]["status"] == "completed"
    assert runs.current_run_id(root) == "tiny"
    assert runs.current_run(root).manifest.extra["settings"]["batch_size"] == 2
