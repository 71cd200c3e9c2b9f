"""Made-up corpus files in each source form, for tests (no real script text).

Build rows, then write them in a form::

    from tests.corpus_factory import make_rows, write_csv, write_text_form

    rows = make_rows(episodes=4, scenes_per_episode=2, turns_per_scene=3)
    write_csv(tmp_path / "script.csv", rows)                     # scene marks become changeofscene rows
    write_csv(tmp_path / "plain.csv", rows, scene_marks=False)   # the form without scene marks
    write_text_form(tmp_path / "script.txt", rows)               # speaker:/utterance/" " lines, CRLF

Every utterance is distinct ("S1E2 scene 1 line 3 ..."), so tests can tell where each line ended up.
Speakers are written lower case, as in the real files, so cleaning has something to do.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainer.corpus import CSV_COLUMNS, SCENE_MARK

SPEAKERS = ("jon snow", "tyrion lannister", "arya stark", "sam")  # "sam" is an alias of Samwell Tarly


@dataclass(frozen=True)
class Row:
    """One CSV row: a line of dialogue, or a scene mark when ``name`` is ``changeofscene``."""

    season: int
    episode: int
    name: str
    sentence: str
    title: str = "A Made-Up Title"
    release_date: str = "2011-04-17"

    @property
    def is_scene_mark(self) -> bool:
        """Whether this row starts a new scene."""
        return self.name == SCENE_MARK


def make_rows(
    episodes: int = 4,
    scenes_per_episode: int = 2,
    turns_per_scene: int = 3,
    seasons: int = 1,
) -> list[Row]:
    """Rows for ``episodes`` episodes per season, each scene opened by a scene mark naming its place."""
    rows = []
    for season in range(1, seasons + 1):
        for episode in range(1, episodes + 1):
            title = f"Episode Title {season}-{episode}"
            for scene in range(1, scenes_per_episode + 1):
                place = f"INT. CASTLE {season}-{episode}-{scene} - NIGHT"
                rows.append(Row(season, episode, SCENE_MARK, place, title))
                for turn in range(1, turns_per_scene + 1):
                    speaker = SPEAKERS[(scene + turn) % len(SPEAKERS)]
                    text = f"S{season}E{episode} scene {scene} line {turn}, winter is coming."
                    rows.append(Row(season, episode, speaker, text, title))
    return rows


def csv_text(rows: Sequence[Row], scene_marks: bool = True, columns: Sequence[str] = CSV_COLUMNS) -> str:
    """The CSV text for ``rows`` (header first); ``scene_marks=False`` leaves out changeofscene rows."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        if row.is_scene_mark and not scene_marks:
            continue
        values = {
            "Release Date": row.release_date,
            "Season": f"Season {row.season}",
            "Episode": f"Episode {row.episode}",
            "Episode Title": row.title,
            "Name": row.name,
            "Sentence": row.sentence,
        }
        writer.writerow([values.get(column, "") for column in columns])
    return buffer.getvalue()


def write_csv(path: Path, rows: Sequence[Row], scene_marks: bool = True) -> Path:
    """Write ``rows`` as a corpus CSV at ``path``; returns ``path``."""
    path.write_text(csv_text(rows, scene_marks), encoding="utf-8", newline="")
    return path


def text_form(turns: Sequence[tuple[str, str]] | Sequence[Row]) -> str:
    """The plain text form: ``speaker:`` line, utterance line, a line holding one space, CRLF endings."""
    lines = []
    for item in turns:
        if isinstance(item, Row):
            if item.is_scene_mark:
                continue
            speaker, text = item.name, item.sentence
        else:
            speaker, text = item
        lines += [f"{speaker}:", text, " "]
    return "".join(line + "\r\n" for line in lines)


def write_text_form(path: Path, turns: Sequence[tuple[str, str]] | Sequence[Row]) -> Path:
    """Write ``turns`` (``(speaker, text)`` pairs or rows) in the plain text form at ``path``."""
    path.write_bytes(text_form(turns).encode("utf-8"))
    return path


def numbered_turns(count: int, speakers: Sequence[str] = SPEAKERS) -> list[tuple[str, str]]:
    """``count`` distinct ``(speaker, text)`` turns, speakers taking turns."""
    return [(speakers[i % len(speakers)], f"Turn number {i} of the made-up play.") for i in range(count)]
