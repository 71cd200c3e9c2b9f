"""Tokenize documents, pack them into fixed-size blocks, and cache the blocks on disk.

Packing (``group_texts`` style): every document is followed by the tokenizer's end-of-text token, exactly
as :func:`trainer.scene_format.join_documents` writes them, the token stream is concatenated and cut into
blocks of ``block_size``. The tail that does not fill a whole block is kept as a last, shorter block padded
with :data:`PAD` (``-1``); padded positions are ignored by the loss, so no token is lost.

The cache file is keyed by corpus sha256, tokenizer hash and block size, written to a temporary file,
fsynced and renamed, so a crash never leaves a half-written cache and a second run skips tokenizing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PAD = -1  # marks positions of the last block that carry no token
CACHE_FORMAT = 1  # bump when the cache file layout changes

# How many times documents were tokenized in this process (tests check that a cache hit skips it).
tokenize_calls = 0


@dataclass
class PackedBlocks:
    """Train and validation blocks: ``int32`` tensors ``[n, block_size]``, ``PAD`` in unused slots."""

    train: torch.Tensor
    val: torch.Tensor
    from_cache: bool = False

    @property
    def block_size(self) -> int:
        """Tokens per block."""
        return int(self.train.shape[1])


def tokenize_documents(documents: Sequence[str], tokenizer: Any) -> list[int]:
    """The token stream of ``join_documents(documents, eos)``: each document's tokens, then eos."""
    global tokenize_calls
    tokenize_calls += 1
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    # Tokenizing documents one by one (in a Rust batch) gives the same ids as tokenizing the joined text,
    # because eos is a special token that the tokenizer never merges with its neighbours.
    for start in range(0, len(documents), 1000):
        batch = list(documents[start : start + 1000])
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    return stream


def pack_blocks(stream: Sequence[int], block_size: int) -> torch.Tensor:
    """Cut a token stream into ``[n, block_size]`` blocks; the tail becomes a last block padded with PAD."""
    tokens = torch.tensor(stream, dtype=torch.int32)
    count = -(-tokens.numel() // block_size)  # ceil: the tail gets a block of its own
    blocks = torch.full((count * block_size,), PAD, dtype=torch.int32)
    blocks[: tokens.numel()] = tokens
    return blocks.view(count, block_size)


def unpack_blocks(blocks: torch.Tensor) -> list[int]:
    """The token stream back from packed blocks (PAD dropped)."""
    flat = blocks.reshape(-1)
    return flat[flat != PAD].tolist()


def batch_tensors(blocks: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` (PAD replaced by eos) and ``labels`` (PAD replaced by -100, ignored by the loss)."""
    blocks = blocks.long()
    pad = blocks == PAD
    return blocks.masked_fill(pad, eos_token_id), blocks.masked_fill(pad, -100)


def cache_key(corpus_sha256: str, tokenizer_sha256: str, block_size: int) -> str:
    """The cache file's name stem for this corpus, tokenizer and block size."""
    text = f"v{CACHE_FORMAT}:{corpus_sha256}:{tokenizer_sha256}:{block_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_or_build_blocks(
    train_docs: Sequence[str],
    val_docs: Sequence[str],
    tokenizer: Any,
    *,
    corpus_sha256: str,
    tokenizer_sha256: str,
    block_size: int,
    cache_dir: Path | None,
) -> PackedBlocks:
    """Packed train/val blocks from the cache when present, else tokenized now and cached atomically."""
    from safetensors.torch import load_file, save_file

    path = None
    if cache_dir is not None:
        key = cache_key(corpus_sha256, tokenizer_sha256, block_size)
        path = Path(cache_dir) / f"blocks-{key}.safetensors"
        if path.is_file():
            try:
                tensors = load_file(str(path))
                log.info("using cached blocks %s", path)
                return PackedBlocks(tensors["train"], tensors["val"], from_cache=True)
            except Exception as exc:  # a damaged cache is rebuilt, never trusted
                log.warning("ignoring unreadable block cache %s: %s", path, exc)
    train = pack_blocks(tokenize_documents(train_docs, tokenizer), block_size)
    val = pack_blocks(tokenize_documents(val_docs, tokenizer), block_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"train": train, "val": val}, str(tmp), metadata={"block_size": str(block_size)})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    return PackedBlocks(train, val, from_cache=False)


def step_block_indices(
    step: int, *, num_blocks: int, per_step: int, seed: int, rank: int = 0, world_size: int = 1,
    micro_batches: int = 1,
) -> list[list[int]]:
    """The block indices each micro-batch of ``rank`` trains on at optimizer ``step`` (0-based).

    Blocks are visited in a fresh seeded permutation each epoch. Step ``s`` consumes the global positions
    ``[s * per_step, (s + 1) * per_step)``; rank ``r`` takes every ``world_size``-th slice of them. The data
    position therefore follows from the step alone, which makes resuming exact.
    """
    micro = per_step // (world_size * micro_batches)
    result = []
    for m in range(micro_batches):
        first = step * per_step + (m * world_size + rank) * micro
        result.append([_block_at(first + i, num_blocks, seed) for i in range(micro)])
    return result


_perm_cache: dict[tuple[int, int, int], torch.Tensor] = {}


def _block_at(position: int, num_blocks: int, seed: int) -> int:
    epoch, offset = divmod(position, num_blocks)
    key = (num_blocks, seed, epoch)
    perm = _perm_cache.get(key)
    if perm is None:
        if len(_perm_cache) > 4:
            _perm_cache.clear()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = _perm_cache[key] = torch.randperm(num_blocks, generator=generator)
    return int(perm[offset])
