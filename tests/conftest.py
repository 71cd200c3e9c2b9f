"""Shared test settings."""

import torch

# Two cores, several test processes: one intra-op thread keeps tests from fighting over the CPU.
torch.set_num_threads(1)
