"""Per-request sampling: repetition penalty, temperature, top-k, top-p, and a seeded generator each.

Every request in a batch keeps its own settings and its own ``torch.Generator``, and each row is sampled
from its own logits only, so a seeded request gives the same text alone or batched with others.
The order of the steps follows Hugging Face's logits processors: repetition penalty, temperature,
top-k, then top-p. ``temperature == 0`` means greedy (argmax after the repetition penalty).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples; the defaults suit short scenes from a fine-tuned GPT-2."""

    max_new_tokens: int = 200  # about a dozen lines of dialogue
    temperature: float = 0.9  # a little below 1: livelier than greedy, fewer non sequiturs
    top_p: float = 0.95  # cut the long tail of unlikely tokens
    top_k: int = 50  # and never look past the 50 most likely (0 = no limit)
    repetition_penalty: float = 1.15  # discourages the loops small models fall into (1.0 = off)
    seed: int | None = None  # None: a random seed, reported in the result so a scene can be replayed

    def validate(self) -> None:
        """Raise ValueError with one sentence when a setting is out of range."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ValueError("max_new_tokens must be a whole number.")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1.")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError("temperature must be a number >= 0 (0 means greedy).")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1].")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError("top_k must be a whole number >= 0 (0 means no limit).")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0 (1.0 means off).")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError("seed must be a whole number or None.")


def new_seed() -> int:
    """A random seed that fits a torch generator (63 bits)."""
    return secrets.randbits(63)


class RequestSampler:
    """One request's sampling state: its settings, its generator, and the tokens it has seen."""

    def __init__(
        self,
        params: SamplingParams,
        seed: int,
        *,
        vocab_size: int,
        context_ids: Sequence[int],
        device: torch.device,
    ) -> None:
        self.params = params
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        # Tokens of the prompt and of the generated text, for the repetition penalty.
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if context_ids:
            self.seen[torch.tensor(list(context_ids), dtype=torch.long, device=device)] = True

    def observe(self, token_id: int) -> None:
        """Record a generated token so the repetition penalty applies to it."""
        self.seen[token_id] = True


def sample_next(logits: torch.Tensor, samplers: Sequence[RequestSampler]) -> list[int]:
    """The next token of every row of ``logits`` (batch, vocab), each row with its own sampler."""
    logits = logits.float()
    device = logits.device
    vocab = logits.shape[-1]
    penalties = torch.tensor([s.params.repetition_penalty for s in samplers], device=device).unsqueeze(1)
    if any(s.params.repetition_penalty != 1.0 for s in samplers):
        seen = torch.stack([s.seen[:vocab] for s in samplers])
        penalised = torch.where(logits > 0, logits / penalties, logits * penalties)
        logits = torch.where(seen, penalised, logits)

    greedy_rows = [i for i, s in enumerate(samplers) if s.params.temperature == 0]
    sampled_rows = [i for i, s in enumerate(samplers) if s.params.temperature != 0]
    chosen: list[int] = [0] * len(samplers)
    if greedy_rows:
        picks = logits[greedy_rows].argmax(dim=-1).tolist()
        for row, token in zip(greedy_rows, picks, strict=True):
            chosen[row] = token
    if not sampled_rows:
        return chosen

    rows = logits[sampled_rows]
    temperatures = torch.tensor(
        [samplers[i].params.temperature for i in sampled_rows], device=device
    ).unsqueeze(1)
    rows = rows / temperatures
    limits = [_top_k_limit(samplers[i].params.top_k, vocab) for i in sampled_rows]
    # One top-k over the batch (sorted, largest first); each row then keeps only its own k.
    values, indices = torch.topk(rows, max(limits), dim=-1, sorted=True)
    for j, row in enumerate(sampled_rows):
        sampler = samplers[row]
        k = limits[j]
        probs = torch.softmax(values[j, :k], dim=-1)
        if sampler.params.top_p < 1.0:
            # Keep the smallest prefix whose probability reaches top_p (always at least one token).
            before = torch.cumsum(probs, dim=-1) - probs
            probs = probs * (before < sampler.params.top_p)
        pick = torch.multinomial(probs, 1, generator=sampler.generator)
        chosen[row] = int(indices[j, pick].item())
    return chosen


def _top_k_limit(top_k: int, vocab: int) -> int:
    return vocab if top_k <= 0 or top_k >= vocab else top_k
