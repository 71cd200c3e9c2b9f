"""Read the script corpus, clean it, cut it into scenes, and hold out whole episodes for validation.

Three source forms are recognised from their content (the file extension is not trusted):

- ``csv``: columns ``Release Date,Season,Episode,Episode Title,Name,Sentence``, one row per line of
  dialogue. Without scene marks, each episode is one scene.
- ``csv`` with scene marks: the same, plus rows whose Name is ``changeofscene``; each starts a new scene
  and its Sentence (a stage direction) becomes that scene's Setting, shortened by :func:`shorten_setting`.
- ``text``: turns of three lines (``speaker name:``, the utterance, a line holding one space), CRLF or LF.
  It has no episodes or scenes, so consecutive turns are grouped into pseudo-episodes of
  ``PSEUDO_EPISODE_TURNS`` turns (keys ``T0001``, ``T0002``, ...) and those into scenes of
  ``PSEUDO_SCENE_TURNS`` turns. Fixed sizes keep the grouping deterministic, give the validation split
  whole stretches of consecutive dialogue (no leakage between neighbouring turns), and keep scene
  documents a few hundred tokens long, like real scenes. Their scenes carry no Episode line, since
  ``T0001`` is not a real episode.

Cleaning (each rule is a table below, tested in ``tests/test_corpus.py``): speaker names are
lower-cased, mapped through :mod:`trainer.speaker_aliases`, and title-cased; bracketed stage directions
are removed; OCR slips of "l" for "I" are fixed; whitespace is collapsed; a line left empty is dropped; a
line identical to the one before it (same speaker, same text) is dropped. Long utterances are kept whole.

The validation split takes whole episodes chosen by a stable hash of the episode key, so it does not
depend on file order or on which other episodes exist, and never cuts through an episode.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import UserError
from trainer.scene_format import Scene, Turn, episode_tag
from trainer.speaker_aliases import alias_lookup

CSV_COLUMNS = ("Release Date", "Season", "Episode", "Episode Title", "Name", "Sentence")
SCENE_MARK = "changeofscene"  # the Name of a row that starts a new scene
CORPUS_SUFFIXES = (".csv", ".txt")  # files picked up from a directory

PSEUDO_EPISODE_TURNS = 300  # turns per pseudo-episode of the text form (~ one real episode's dialogue)
PSEUDO_SCENE_TURNS = 30  # turns per scene of the text form (~ the median real scene)
MAX_SETTING_CHARS = 100  # a Setting line longer than this is cut at a word boundary
LONG_UTTERANCE_CHARS = 1500  # utterances longer than this are counted (and kept) as long

# --- cleaning tables -------------------------------------------------------------------------------

# Words a title-cased name keeps in lower case after its first word: "Lord of Bones", "Sam and Gilly".
LOWER_CASE_WORDS = frozenset({"of", "and", "the", "zo", "van", "de"})
# Leftover stage directions inside a line: "[Coughs]", "[to Viserys]".
DIRECTION_RE = re.compile(r"\[[^\]]*\]")
# OCR read a capital I as a lower-case l; these whole words are never English otherwise.
OCR_WORD_FIXES: dict[str, str] = {
    "l": "I", "l'm": "I'm", "l'll": "I'll", "l've": "I've", "l'd": "I'd",
    "lt": "It", "lt's": "It's", "lf": "If", "ln": "In",
}
_OCR_RE = re.compile(
    r"(?<![\w'’])(" + "|".join(re.escape(w) for w in sorted(OCR_WORD_FIXES, key=len, reverse=True))
    + r")(?![\w'’])"
)
# Phrases that introduce the place in a scene-change direction; the Setting keeps what follows them.
SETTING_LEAD_INS = (
    re.compile(r"^cut to\b[\s:\-–—.]*", re.IGNORECASE),
    re.compile(
        r"^.*?\b(?:the\s+)?scene\s+(?:shifts|changes|cuts)(?:\s+back)?(?:\s+to)?[\s,:]*", re.IGNORECASE
    ),
    re.compile(r"^(?:and\s+)?we\s+see\s+", re.IGNORECASE),
)
# A sentence ends at . ! ? followed by space and a capital, but not in a screenplay slug "INT. HALL".
_SENTENCE_END_RE = re.compile(r"(?<!\bINT\.)(?<!\bEXT\.)(?<=[.!?])\s+(?=[A-Z])")


class CorpusError(UserError):
    """A corpus file that cannot be read: the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class Episode:
    """One episode (or pseudo-episode of the text form) and its scenes in order."""

    key: str  # "S01E03", or "T0001" for the text form
    title: str | None
    scenes: tuple[Scene, ...]


@dataclass(frozen=True)
class ReadCounts:
    """What the parser saw and what cleaning removed (rows are counted before cleaning)."""

    dialogue_rows: int = 0
    scene_marks: int = 0
    emptied_lines_dropped: int = 0
    duplicate_lines_dropped: int = 0
    long_utterances: int = 0

    def __add__(self, other: ReadCounts) -> ReadCounts:
        return ReadCounts(
            *(getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__)
        )


@dataclass(frozen=True)
class Corpus:
    """The cleaned corpus: episodes in source order, the files read, and their combined sha256."""

    episodes: tuple[Episode, ...]
    sources: tuple[Path, ...]
    sha256: str  # sha256 over the raw source bytes, files sorted by name
    counts: ReadCounts = field(default_factory=ReadCounts)


# --- public API ------------------------------------------------------------------------------------


def load_corpus(paths: Sequence[Path]) -> Corpus:
    """Read, clean and cut into scenes every corpus file named (a directory means its .csv/.txt files)."""
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    files = sorted(_expand_sources(paths), key=lambda p: (p.name, str(p)))
    if not files:
        raise CorpusError("no corpus file was given.")
    digest = hashlib.sha256()
    episodes: list[Episode] = []
    counts = ReadCounts()
    seen: dict[str, Path] = {}
    text_episodes = 0
    for path in files:
        raw = _read_bytes(path)
        digest.update(raw)
        text = _decode(path, raw)
        form = detect_form(path, text)
        if form == "text":
            file_episodes, file_counts = _read_text_form(path, text, first_number=text_episodes + 1)
            text_episodes += len(file_episodes)
        else:
            file_episodes, file_counts = _read_csv_form(path, text)
        for episode in file_episodes:
            if episode.key in seen:
                raise CorpusError(
                    f"episode {episode.key} appears in both {seen[episode.key]} and {path}; "
                    "pass only one of these files (the scene-marked CSV is a superset of the plain one)."
                )
            seen[episode.key] = path
        episodes.extend(file_episodes)
        counts += file_counts
    if not episodes:
        raise CorpusError(f"the corpus ({', '.join(map(str, files))}) holds no dialogue after cleaning.")
    return Corpus(episodes=tuple(episodes), sources=tuple(files), sha256=digest.hexdigest(), counts=counts)


def split_episodes(corpus: Corpus, val_fraction: float) -> tuple[list[Episode], list[Episode]]:
    """(train, validation) episodes: whole episodes, chosen by a stable hash of their keys."""
    if not 0.0 < val_fraction < 1.0:
        raise CorpusError(f"the validation fraction must be between 0 and 1 (exclusive), not {val_fraction}.")
    episodes = corpus.episodes
    if len(episodes) < 2:
        keys = ", ".join(e.key for e in episodes) or "none"
        raise CorpusError(
            f"the corpus has {len(episodes)} episode{'' if episodes else 's'} ({keys}); "
            "holding out whole episodes for validation "
            "needs at least two."
        )
    # At least one episode on each side, whatever the fraction.
    n_val = min(len(episodes) - 1, max(1, round(val_fraction * len(episodes))))
    ranked = sorted(episodes, key=lambda e: (hashlib.sha256(e.key.encode()).hexdigest(), e.key))
    val_keys = {e.key for e in ranked[:n_val]}
    train = [e for e in episodes if e.key not in val_keys]
    val = [e for e in episodes if e.key in val_keys]
    return train, val


def detect_form(path: Path, text: str) -> str:
    """``"csv"`` or ``"text"``, judged from the first non-blank line; anything else is a CorpusError."""
    first = next((line for line in _lines(text) if line.strip()), "")
    names = [name.strip() for name in next(csv.reader([first]), [])]
    missing = [column for column in CSV_COLUMNS if column not in names]
    if not missing:
        return "csv"
    if len(missing) < len(CSV_COLUMNS):  # a header, but an incomplete one
        raise CorpusError(
            f"{path} line 1: the CSV header lacks the column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (expected {','.join(CSV_COLUMNS)})."
        )
    if first.rstrip().endswith(":"):
        return "text"
    raise CorpusError(
        f"{path} is not a corpus file: expected a CSV with the header {','.join(CSV_COLUMNS)} or the "
        "plain text form ('speaker name:' line, utterance line, line holding one space)."
    )


# --- cleaning --------------------------------------------------------------------------------------

_ALIASES = alias_lookup()


def normalise_speaker(raw: str) -> str:
    """A speaker name in one spelling: aliases resolved, title case ("sam tarly" -> "Samwell Tarly")."""
    key = " ".join(raw.replace("_", " ").split()).strip(" :").lower()
    if key in _ALIASES:
        return _ALIASES[key]
    words = key.split(" ")
    rest = [word if word in LOWER_CASE_WORDS else _title_word(word) for word in words[1:]]
    return " ".join([_title_word(words[0]), *rest])


def clean_utterance(raw: str) -> str:
    """A line of dialogue without stage directions or OCR slips, whitespace collapsed ("" if none left)."""
    text = DIRECTION_RE.sub(" ", raw)
    text = _OCR_RE.sub(lambda match: OCR_WORD_FIXES[match.group(1)], text)
    return " ".join(text.split())


def shorten_setting(direction: str) -> str | None:
    """A scene-change direction as a short Setting: the place, first sentence, at most MAX_SETTING_CHARS."""
    text = " ".join(DIRECTION_RE.sub(" ", direction).split())
    for lead_in in SETTING_LEAD_INS:
        text = lead_in.sub("", text, count=1)
    text = _SENTENCE_END_RE.split(text, maxsplit=1)[0].strip(" ,;:-–—")
    if not any(char.isalnum() for char in text):
        return None
    if len(text) > MAX_SETTING_CHARS:
        room = MAX_SETTING_CHARS - 3  # leave room for the "..." that says it was cut
        head = text[: room + 1]
        head = head.rsplit(" ", 1)[0] if " " in head else head[:room]
        text = head[:room].rstrip(" ,;:-–—") + "..."
    return text[0].upper() + text[1:]


def _title_word(word: str) -> str:
    # str.title() would give "H'Ghar"; capitalise each hyphen-separated part's first letter only.
    return "-".join(part[:1].upper() + part[1:] for part in word.split("-"))


# --- reading ---------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One row as read: a line of dialogue, or a scene mark (speaker None, text = direction)."""

    line: int
    episode: str
    title: str | None
    speaker: str | None
    text: str


def _expand_sources(paths: Iterable[Path]) -> Iterator[Path]:
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES]
            if not found:
                raise CorpusError(f"the directory {path} holds no corpus files (.csv or .txt).")
            yield from found
        elif path.is_file():
            yield path
        elif path.exists():
            raise CorpusError(f"{path} is neither a file nor a directory.")
        else:
            raise CorpusError(
                f"the corpus file {path} does not exist; fetch the corpus with "
                "'python -m trainer download-corpus' or pass --corpus PATH."
            )


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read the corpus file {path}: {exc.strerror or exc}.") from exc
    if not raw.strip():
        raise CorpusError(f"the corpus file {path} is empty.")
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise CorpusError(f"{path} line {line}: the file holds binary data (a NUL byte), not script text.")
    return raw


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CorpusError(f"{path} line {line}: the file is not UTF-8 text (byte {exc.start}).") from exc


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): that also splits at form feeds and Unicode separators inside dialogue.
    return re.split(r"\r\n|\n|\r", text)


def _read_csv_form(path: Path, text: str) -> tuple[list[Episode], ReadCounts]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
        index = {column: header.index(column) for column in CSV_COLUMNS}
        rows: list[_Row] = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            rows.append(_csv_row(path, reader.line_num, record, index, len(header)))
    except csv.Error as exc:
        raise CorpusError(f"{path} line {reader.line_num}: malformed CSV ({exc}).") from exc
    if not rows:
        raise CorpusError(f"{path} has a header but no rows of dialogue.")
    by_episode: dict[str, list[_Row]] = {}
    for row in rows:
        by_episode.setdefault(row.episode, []).append(row)
    episodes, counts = [], ReadCounts()
    for key, episode_rows in by_episode.items():
        scenes, scene_counts = _scenes_from_rows(episode_rows, key)
        counts += scene_counts
        if scenes:
            episodes.append(Episode(key=key, title=episode_rows[0].title, scenes=tuple(scenes)))
    return episodes, counts


def _csv_row(path: Path, line: int, record: list[str], index: dict[str, int], width: int) -> _Row:
    if len(record) != width:
        raise CorpusError(f"{path} line {line}: expected {width} fields, found {len(record)}.")
    season = _number(path, line, record[index["Season"]], "Season")
    number = _number(path, line, record[index["Episode"]], "Episode")
    title = " ".join(record[index["Episode Title"]].split()) or None
    name = record[index["Name"]].strip()
    if not name:
        raise CorpusError(f"{path} line {line}: the Name field is empty.")
    speaker = None if name.lower() == SCENE_MARK else name
    return _Row(line, episode_tag(season, number), title, speaker, record[index["Sentence"]])


def _number(path: Path, line: int, value: str, column: str) -> int:
    # "Season 1" / "Episode 3" in the real files; a bare number is accepted too.
    match = re.fullmatch(rf"\s*(?:{column}\s*)?(\d+)\s*", value, re.IGNORECASE)
    if not match:
        raise CorpusError(f"{path} line {line}: the {column} field {value!r} has no number.")
    return int(match.group(1))


def _read_text_form(path: Path, text: str, first_number: int) -> tuple[list[Episode], ReadCounts]:
    lines = _lines(text)
    rows: list[_Row] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # the one-space separator, or trailing blank lines
            i += 1
            continue
        speaker_line = lines[i].strip()
        if not speaker_line.endswith(":") or len(speaker_line) == 1:
            raise CorpusError(
                f"{path} line {i + 1}: expected a 'speaker name:' line, found {_preview(speaker_line)}."
            )
        if i + 1 >= len(lines):
            raise CorpusError(f"{path} line {i + 1}: the turn of {speaker_line!r} has no utterance line.")
        rows.append(_Row(i + 2, "", None, speaker_line[:-1], lines[i + 1]))
        if i + 2 < len(lines) and lines[i + 2].strip():
            raise CorpusError(
                f"{path} line {i + 3}: expected the line holding one space that ends a turn, "
                f"found {_preview(lines[i + 2])}."
            )
        i += 3
    episodes, counts = [], ReadCounts()
    for start in range(0, len(rows), PSEUDO_EPISODE_TURNS):
        key = f"T{first_number + len(episodes):04d}"
        chunk = rows[start : start + PSEUDO_EPISODE_TURNS]
        turns, chunk_counts = _clean_turns(chunk)
        counts += chunk_counts
        scenes = [
            Scene(turns=tuple(turns[j : j + PSEUDO_SCENE_TURNS]))
            for j in range(0, len(turns), PSEUDO_SCENE_TURNS)
        ]
        if scenes:
            episodes.append(Episode(key=key, title=None, scenes=tuple(scenes)))
    return episodes, counts


def _preview(line: str) -> str:
    return repr(line if len(line) <= 40 else line[:40] + "...")


def _scenes_from_rows(rows: list[_Row], episode: str) -> tuple[list[Scene], ReadCounts]:
    """Cut one episode's rows at scene marks; a mark followed by no dialogue yields no scene."""
    scenes: list[Scene] = []
    setting: str | None = None
    pending: list[_Row] = []
    marks = 0
    counts = ReadCounts()

    def close() -> None:
        nonlocal counts
        turns, turn_counts = _clean_turns(pending)
        counts += turn_counts
        if turns:
            scenes.append(Scene(turns=tuple(turns), episode=episode, setting=setting))

    for row in rows:
        if row.speaker is None:
            marks += 1
            if pending:
                close()
                pending = []
                setting = None
            # Two marks in a row: keep the more informative direction ("CUT TO" says nothing).
            setting = shorten_setting(row.text) or setting
        else:
            pending.append(row)
    close()
    return scenes, counts + ReadCounts(scene_marks=marks)


def _clean_turns(rows: Sequence[_Row]) -> tuple[list[Turn], ReadCounts]:
    turns: list[Turn] = []
    emptied = duplicates = long = 0
    for row in rows:
        text = clean_utterance(row.text)
        if not text:
            emptied += 1
            continue
        turn = Turn(normalise_speaker(row.speaker or ""), text)
        if turns and turns[-1] == turn:
            duplicates += 1
            continue
        long += len(text) > LONG_UTTERANCE_CHARS
        turns.append(turn)
    return turns, ReadCounts(
        dialogue_rows=len(rows), emptied_lines_dropped=emptied, duplicate_lines_dropped=duplicates,
        long_utterances=long,
    )
