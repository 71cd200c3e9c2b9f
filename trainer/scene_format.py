"""The scene text format: how a scene is written for training, prompted, and where generation stops.

This module is the single definition shared by the trainer (which writes training documents) and the
bot (which builds prompts and cuts generated text). Changing the format means bumping
``SCENE_FORMAT_VERSION``; the bot refuses a run whose manifest names another version.

A scene document looks like this::

    ### Scene
    Episode: S01E03
    Setting: The courtyard of Castle Black.
    Characters: Jon Snow, Tyrion Lannister

    Jon Snow: Where are you going?
    Tyrion Lannister: To the Wall. I want to stand on top of it and piss off the edge of the world.

``Episode`` and ``Setting`` lines appear only when known. Documents are separated by the tokenizer's
end-of-text token, so the model learns where a scene begins and ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SCENE_FORMAT_VERSION = 1

HEADER = "### Scene"
EPISODE_FIELD = "Episode"
SETTING_FIELD = "Setting"
CHARACTERS_FIELD = "Characters"
TURN_SEPARATOR = ": "

# A speaker name in a turn line: a few words, no colon. Used to recognise turn boundaries in generated text.
_TURN_RE = re.compile(r"^([^\s:][^:\n]{0,40}?): (.*)$")


@dataclass(frozen=True)
class Turn:
    """One line of dialogue."""

    speaker: str
    text: str


@dataclass(frozen=True)
class Scene:
    """A scene: where and when it happens, and its turns in order."""

    turns: tuple[Turn, ...]
    episode: str | None = None  # "S01E03"
    setting: str | None = None
    characters: tuple[str, ...] = field(default=())

    def speakers(self) -> tuple[str, ...]:
        """The scene's characters, or else its speakers in order of first appearance."""
        if self.characters:
            return self.characters
        return tuple(dict.fromkeys(turn.speaker for turn in self.turns))


def episode_tag(season: int, episode: int) -> str:
    """``episode_tag(1, 3) == "S01E03"``."""
    return f"S{season:02d}E{episode:02d}"


def format_header(
    *, episode: str | None = None, setting: str | None = None, characters: Sequence[str] = ()
) -> str:
    """The header block of a scene, ending with the blank line that precedes the first turn."""
    lines = [HEADER]
    if episode:
        lines.append(f"{EPISODE_FIELD}: {episode}")
    if setting:
        lines.append(f"{SETTING_FIELD}: {_one_line(setting)}")
    if characters:
        lines.append(f"{CHARACTERS_FIELD}: {', '.join(characters)}")
    return "\n".join(lines) + "\n\n"


def format_turn(turn: Turn) -> str:
    """One turn as a line, newline included."""
    return f"{turn.speaker}{TURN_SEPARATOR}{_one_line(turn.text)}\n"


def format_scene(scene: Scene) -> str:
    """A whole scene as one training document (without the end-of-text separator)."""
    header = format_header(episode=scene.episode, setting=scene.setting, characters=scene.speakers())
    return header + "".join(format_turn(turn) for turn in scene.turns)


def join_documents(documents: Iterable[str], eos_token: str) -> str:
    """Documents joined by the end-of-text token, which also closes the last one."""
    return "".join(doc + eos_token for doc in documents)


def build_prompt(
    characters: Sequence[str] = (),
    setting: str | None = None,
    opening: str | None = None,
) -> str:
    """The prompt for a new scene.

    The first listed character speaks first. With an ``opening`` line, it is their first line and the
    model continues from the next turn; without one, the prompt ends at ``"Name:"`` so the model writes
    that character's first line.
    """
    prompt = format_header(setting=setting, characters=characters)
    if opening:
        speaker = characters[0] if characters else "Narrator"
        prompt += format_turn(Turn(speaker, opening))
    elif characters:
        prompt += f"{characters[0]}:"
    return prompt


def cut_at_scene_end(text: str) -> tuple[str, bool]:
    """Cut generated text where the scene ends: at the start of a new scene header.

    Returns the text before the end and whether an end was found.
    """
    index = text.find(HEADER)
    if index == -1:
        return text, False
    return text[:index], True


def drop_unfinished_line(text: str) -> str:
    """Drop a trailing line that was cut off mid-way (no newline after it)."""
    if text.endswith("\n"):
        return text
    cut = text.rfind("\n")
    return text[: cut + 1] if cut != -1 else ""


def parse_turns(text: str) -> list[Turn]:
    """Turn lines of generated or formatted text back into turns (header and other lines ignored)."""
    turns = []
    for line in text.splitlines():
        match = _TURN_RE.match(line)
        if match and match.group(1) not in (EPISODE_FIELD, SETTING_FIELD, CHARACTERS_FIELD):
            turns.append(Turn(match.group(1).strip(), match.group(2).strip()))
    return turns


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so a field or turn stays on one line."""
    return " ".join(text.split())
