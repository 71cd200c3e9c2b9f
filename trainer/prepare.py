"""``python -m trainer prepare``: the corpus as training and validation documents, with statistics.

:func:`prepare_corpus` is what ``train`` calls: it loads the corpus (:mod:`trainer.corpus`), holds out
whole episodes for validation, and writes each scene as one document in the scene text format
(:func:`trainer.scene_format.format_scene`). Joining documents with the tokenizer's end-of-text token is
the trainer's job. :func:`add_corpus_arguments` gives ``train`` the same ``--corpus``/``--val-fraction``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.corpus import (
    LONG_UTTERANCE_CHARS,
    CorpusError,
    Episode,
    ReadCounts,
    load_corpus,
    split_episodes,
)
from trainer.envargs import env_flag
from trainer.scene_format import format_scene, join_documents

DEFAULT_CORPUS = Path("data/corpus/Game_of_Thrones_Script_MD.csv")  # the scene-marked CSV: richest form
DEFAULT_VAL_FRACTION = 0.1  # ~7 of 73 episodes: enough text for a stable perplexity, most left to train
CORPUS_ENV = "MAESTER_CORPUS"
VAL_FRACTION_ENV = "MAESTER_VAL_FRACTION"
INSPECTION_SEPARATOR = "<|endoftext|>\n"  # between documents in --output files, for reading them


@dataclass(frozen=True)
class SplitStats:
    """Size of one side of the split."""

    episodes: int
    scenes: int
    turns: int
    characters: int  # characters of the formatted documents


@dataclass(frozen=True)
class CorpusStats:
    """What the prepared corpus holds; the manifest and ``prepare`` report these."""

    sources: tuple[str, ...]
    read: ReadCounts  # rows as the parser saw them, and what cleaning removed
    train: SplitStats
    val: SplitStats
    val_episodes: tuple[str, ...]  # keys of the held-out episodes
    speaker_turns: tuple[tuple[str, int], ...]  # (speaker, turns), most frequent first
    cross_duplicates_dropped: int  # training scenes dropped because a validation scene is identical


@dataclass(frozen=True)
class PreparedCorpus:
    """Training and validation documents (one per scene) and what they were made from."""

    train_docs: list[str]
    val_docs: list[str]
    corpus_sha256: str
    speakers: list[str]  # most frequent first
    stats: CorpusStats


def prepare_corpus(paths: Sequence[Path], val_fraction: float = DEFAULT_VAL_FRACTION) -> PreparedCorpus:
    """Load, clean and split the corpus into scene documents (whole episodes held out for validation)."""
    corpus = load_corpus(paths)
    train_episodes, val_episodes = split_episodes(corpus, val_fraction)
    val_docs = _documents(val_episodes)
    # Episodes never share a scene, but a repeated scene text (e.g. the same short exchange in two
    # pseudo-episodes) would let validation text leak into training: drop it from training.
    held_out = set(val_docs)
    all_train_docs = _documents(train_episodes)
    train_docs = [doc for doc in all_train_docs if doc not in held_out]
    if not train_docs:
        raise CorpusError("no training scenes remain: each one is identical to a validation scene.")
    speaker_turns = Counter(
        turn.speaker for episode in corpus.episodes for scene in episode.scenes for turn in scene.turns
    )
    ranked = sorted(speaker_turns.items(), key=lambda item: (-item[1], item[0]))
    stats = CorpusStats(
        sources=tuple(str(path) for path in corpus.sources),
        read=corpus.counts,
        train=_split_stats(train_episodes, train_docs),
        val=_split_stats(val_episodes, val_docs),
        val_episodes=tuple(episode.key for episode in val_episodes),
        speaker_turns=tuple(ranked),
        cross_duplicates_dropped=len(all_train_docs) - len(train_docs),
    )
    return PreparedCorpus(
        train_docs=train_docs,
        val_docs=val_docs,
        corpus_sha256=corpus.sha256,
        speakers=[name for name, _ in ranked],
        stats=stats,
    )


def add_corpus_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--corpus`` and ``--val-fraction`` (shared by ``prepare`` and ``train``)."""
    raw = os.environ.get(CORPUS_ENV)
    # Several paths in the environment variable are separated like PATH (":" on Linux).
    default = [Path(p) for p in raw.split(os.pathsep) if p] if raw else [DEFAULT_CORPUS]
    parser.add_argument(
        "--corpus",
        nargs="+",
        type=Path,
        default=default,
        metavar="PATH",
        help="corpus files (CSV or plain text) or directories of them; several paths are read together "
        f"[env {CORPUS_ENV}, paths separated by '{os.pathsep}'; default: {' '.join(map(str, default))}]",
    )
    env_flag(
        parser,
        "--val-fraction",
        env=VAL_FRACTION_ENV,
        default=DEFAULT_VAL_FRACTION,
        type=val_fraction,
        metavar="F",
        help="share of whole episodes held out for validation (at least one episode)",
    )


def val_fraction(text: str) -> float:
    """argparse type: a fraction strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1 (exclusive)")
    return value


def add_parser(subparsers: Any) -> None:
    """Register the ``prepare`` subcommand."""
    parser = subparsers.add_parser(
        "prepare",
        help="clean and split the corpus into scenes and print statistics",
        description="Read the corpus, clean it, cut it into scenes, hold out whole episodes for "
        "validation, and print statistics (episodes, scenes, speakers, characters and tokens per split).",
    )
    add_corpus_arguments(parser)
    parser.add_argument(
        "--tokenizer",
        default="gpt2",
        metavar="NAME_OR_PATH",
        help="tokenizer that counts tokens: a Hugging Face name or a local directory [default: %(default)s]",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="also write train.txt and val.txt (scenes separated by <|endoftext|>) into DIR for inspection",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The ``prepare`` command: prepare the corpus and print its statistics."""
    prepared = prepare_corpus(args.corpus, args.val_fraction)
    tokens, why_not = count_tokens(args.tokenizer, prepared)
    print(format_stats(prepared, tokens, why_not))
    if args.output is not None:
        for name, docs in (("train.txt", prepared.train_docs), ("val.txt", prepared.val_docs)):
            _write_atomically(args.output / name, join_documents(docs, INSPECTION_SEPARATOR))
        print(f"wrote {args.output / 'train.txt'} and {args.output / 'val.txt'}")
    return 0


def count_tokens(
    tokenizer_name: str, prepared: PreparedCorpus
) -> tuple[tuple[int, int] | None, str | None]:
    """(train, val) token counts with one end-of-text token per document, or None and the reason why not."""
    try:
        tokenizer = _load_tokenizer(tokenizer_name)
    except Exception as exc:  # offline, unknown name, broken directory: statistics still print
        return None, f"could not load tokenizer {tokenizer_name!r} ({_first_line(exc)})"

    def count(docs: list[str]) -> int:
        if not docs:
            return 0
        encoded = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
        return sum(len(ids) for ids in encoded) + len(docs)  # + the separator after each document

    return (count(prepared.train_docs), count(prepared.val_docs)), None


def format_stats(
    prepared: PreparedCorpus, tokens: tuple[int, int] | None = None, why_no_tokens: str | None = None
) -> str:
    """The statistics ``prepare`` prints, as text."""
    stats = prepared.stats
    read = stats.read
    lines = [
        f"corpus: {', '.join(stats.sources)}",
        f"sha256: {prepared.corpus_sha256}",
        f"read: {read.dialogue_rows:,} dialogue rows, {read.scene_marks:,} scene marks",
        f"cleaning: {read.emptied_lines_dropped:,} lines empty after cleaning dropped, "
        f"{read.duplicate_lines_dropped:,} repeated lines dropped, "
        f"{read.long_utterances:,} utterances over {LONG_UTTERANCE_CHARS:,} characters kept",
        f"speakers: {len(prepared.speakers):,}",
        "top 10 speakers: " + ", ".join(f"{name} ({n:,})" for name, n in stats.speaker_turns[:10]),
        "",
        f"{'split':<6} {'episodes':>8} {'scenes':>7} {'turns':>7} {'characters':>11} {'tokens':>10}",
    ]
    for index, (name, split) in enumerate((("train", stats.train), ("val", stats.val))):
        token_text = f"{tokens[index]:,}" if tokens is not None else "-"
        lines.append(
            f"{name:<6} {split.episodes:>8,} {split.scenes:>7,} {split.turns:>7,} "
            f"{split.characters:>11,} {token_text:>10}"
        )
    lines.append(f"validation episodes: {', '.join(stats.val_episodes)}")
    if stats.cross_duplicates_dropped:
        lines.append(
            f"training scenes identical to a validation scene dropped: {stats.cross_duplicates_dropped:,}"
        )
    if tokens is None and why_no_tokens:
        lines.append(f"tokens not counted: {why_no_tokens}.")
    return "\n".join(lines)


def _documents(episodes: Sequence[Episode]) -> list[str]:
    return [format_scene(scene) for episode in episodes for scene in episode.scenes]


def _split_stats(episodes: Sequence[Episode], docs: Sequence[str]) -> SplitStats:
    return SplitStats(
        episodes=len(episodes),
        scenes=len(docs),
        turns=sum(len(scene.turns) for episode in episodes for scene in episode.scenes),
        characters=sum(len(doc) for doc in docs),
    )


def _load_tokenizer(name_or_path: str) -> Any:
    """A tokenizer from a local directory, the local Hub cache, or (when reachable) the Hub."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "sequence longer than the model" warnings mean nothing here
    local = Path(name_or_path).expanduser()
    if local.exists():
        return AutoTokenizer.from_pretrained(str(local))
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except OSError:
        pass
    # Offline, the Hub client retries for most of a minute; a quick probe turns that into one sentence.
    if not _hub_reachable():
        raise OSError(f"the Hugging Face Hub is unreachable and {name_or_path!r} is not in the local cache")
    return AutoTokenizer.from_pretrained(name_or_path)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face Hub endpoint opens within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, so a reader never sees half a file."""
    temp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        temp = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except OSError as exc:
        if temp is not None:
            temp.unlink(missing_ok=True)
        raise CorpusError(f"cannot write {path}: {exc.strerror or exc}.") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


