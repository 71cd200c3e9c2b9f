"""Shared test settings."""

import os

# Two cores and tests that start trainer and bot subprocesses: one thread per process keeps them from
# oversubscribing the CPU (set before torch loads, and inherited by every subprocess the tests start).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
