"""Tiny models, tokenizers, scenes and published runs built locally for tests (no Hub, seconds on a CPU).

Import from any test: ``from tests.tiny import make_tiny_model_dir, publish_tiny_run``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import runs
from trainer.model import EOS_TOKEN, build_scratch_model, tokenizer_hash, train_bpe_tokenizer
from trainer.scene_format import SCENE_FORMAT_VERSION, Scene, Turn, episode_tag, format_scene

TINY_SPEAKERS = ("Jon Snow", "Tyrion Lannister", "Arya Stark", "Cersei Lannister", "Sansa Stark")
_LINES = (
    "Winter is coming.",
    "I drink and I know things.",
    "A girl has no name.",
    "When you play the game of thrones, you win or you die.",
    "The north remembers.",
    "Where are you going?",
    "To the Wall.",
    "Nothing is ever easy.",
)


def make_scene_documents(count: int = 40, seed: int = 0) -> list[str]:
    """Made-up scene documents in the scene format, repetitive enough for a tiny model to learn fast."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        speakers = rng.sample(TINY_SPEAKERS, 2)
        turns = tuple(Turn(speakers[t % 2], rng.choice(_LINES)) for t in range(rng.randint(2, 5)))
        episode = episode_tag(1 + index // 10, 1 + index % 10)
        scene = Scene(turns=turns, episode=episode, setting="Winterfell.")
        documents.append(format_scene(scene))
    return documents


def make_tiny_tokenizer(texts: Sequence[str] | None = None, vocab_size: int = 300) -> Any:
    """A byte-level BPE tokenizer, ``<|endoftext|>`` as eos, trained on ``texts`` (default: tiny scenes)."""
    return train_bpe_tokenizer(texts if texts is not None else make_scene_documents(), vocab_size=vocab_size)


def make_tiny_model(
    tokenizer: Any,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
) -> Any:
    """A GPT-2 LM head model with random (seeded) weights matching ``tokenizer``."""
    return build_scratch_model(
        tokenizer, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, seed=seed
    )


def make_tiny_model_dir(path: Path, texts: Sequence[str] | None = None, **model_kwargs: Any) -> Path:
    """Save a tiny model, tokenizer and generation config in ``save_pretrained`` layout at ``path``."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer(texts)
    model = make_tiny_model(tokenizer, **model_kwargs)
    save_model_files(model, tokenizer, path)
    return path


def save_model_files(model: Any, tokenizer: Any, path: Path) -> None:
    """Write model (safetensors), generation config and tokenizer into ``path``."""
    from transformers import GenerationConfig

    path.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def publish_tiny_run(
    checkpoint_root: Path,
    run_id: str = "tiny-run",
    *,
    speakers: Sequence[str] = TINY_SPEAKERS,
    val_loss: float = 2.0,
    scene_format_version: int = SCENE_FORMAT_VERSION,
    seed: int = 0,
) -> runs.RunInfo:
    """Publish a tiny run with a valid manifest under ``checkpoint_root`` and point ``CURRENT`` at it."""
    import math

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed=seed)
    manifest = runs.Manifest(
        run_id=run_id,
        base_model="tiny-test-model",
        corpus_sha256="0" * 64,
        tokenizer_hash=tokenizer_hash(tokenizer),
        scene_format_version=scene_format_version,
        steps=0,
        tokens_seen=0,
        val_loss_before=val_loss + 1.0,
        val_ppl_before=math.exp(val_loss + 1.0),
        val_loss_after=val_loss,
        val_ppl_after=math.exp(val_loss),
        speakers=tuple(speakers),
        extra={"eos_token": EOS_TOKEN},
    )
    return runs.publish_run(
        Path(checkpoint_root), manifest, lambda staging: save_model_files(model, tokenizer, staging)
    )


@dataclass
class TinyCorpus:
    """Stands in for :class:`trainer.prepare.PreparedCorpus` with made-up scenes (same fields)."""

    train_docs: list[str]
    val_docs: list[str]
    corpus_sha256: str = "c" * 64
    speakers: list[str] = field(default_factory=lambda: list(TINY_SPEAKERS))
    stats: Any = None


def make_tiny_corpus(train: int = 48, val: int = 12, seed: int = 0) -> TinyCorpus:
    """Made-up training and validation scenes (different seeds, so validation is held out)."""
    return TinyCorpus(make_scene_documents(train, seed=seed), make_scene_documents(val, seed=seed + 1))


def tiny_train_config(checkpoint_dir: Path, **overrides: Any) -> Any:
    """A TrainConfig for a tiny scratch model that trains in a second or two on a CPU."""
    from trainer.config import TrainConfig

    settings: dict[str, Any] = dict(
        init="scratch", scratch_layers=2, scratch_dim=64, scratch_heads=2, scratch_vocab=300,
        block_size=64, batch_size=4, grad_accum=1, steps=30, lr=3e-3, warmup_steps=3,
        eval_every=10, eval_batches=0, patience=0, sample_every=0, sample_tokens=20, checkpoint_every=10,
        checkpoint_dir=Path(checkpoint_dir), run_id="tiny", progress=False, log_every=1, device="cpu",
        compile=False,
    )
    settings.update(overrides)
    config = TrainConfig(**settings)
    config.validate(need_corpus=False)
    return config


def write_tiny_csv(path: Path, episodes: int = 6, lines_per_episode: int = 24, seed: int = 0) -> Path:
    """A made-up corpus CSV in the real files' columns (several episodes, so validation can hold some out)."""
    import csv

    rng = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Release Date", "Season", "Episode", "Episode Title", "Name", "Sentence"])
        for number in range(1, episodes + 1):
            for line in range(lines_per_episode):
                if line % 6 == 0:  # the scene-marked CSV starts each scene with a "changeofscene" row
                    writer.writerow(["2011-04-17", "Season 1", f"Episode {number}", f"Episode {number}",
                                     "changeofscene", "A hall in Winterfell."])
                writer.writerow(["2011-04-17", "Season 1", f"Episode {number}", f"Episode {number}",
                                 rng.choice(TINY_SPEAKERS), rng.choice(_LINES)])
    return path
