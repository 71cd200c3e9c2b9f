"""Turning user input and generated text into safe Discord text: cleaning, escaping, screenplay layout.

Everything a user typed or the model wrote passes through :func:`neutralize` before it reaches Discord,
so it can never ping anyone (``@everyone``, ``@here``, ``<@id>``, ``<@&id>``) or break the layout with
markdown (code fences, masked links, headings). ``AllowedMentions.none()`` on the client is the second
line of defence.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from trainer.scene_format import parse_turns

# Discord's limits (message.mdx): content 2000, embed description 4096, title 256, footer 2048,
# and 6000 characters across all embeds of a message.
CONTENT_LIMIT = 2000
DESCRIPTION_LIMIT = 4096
TITLE_LIMIT = 256
FOOTER_LIMIT = 2048
EMBED_TOTAL_LIMIT = 6000
MAX_CHARACTERS = 3
NAME_LIMIT = 40
AUTOCOMPLETE_LIMIT = 25  # Discord shows at most 25 choices
CHOICE_LIMIT = 100  # a choice's name and value are at most 100 characters

_ZWSP = "\u200b"
_INLINE_MARKDOWN_RE = re.compile(r"([\\*_~`|\[\]<])")  # emphasis, code, spoilers, masked links, <@id>
_LINE_MARKDOWN_RE = re.compile(r"^(\s*)([>#-])", re.MULTILINE)  # quotes, headings, lists
_WHITESPACE_RE = re.compile(r"[ \t]+")


def neutralize(text: str) -> str:
    """Escape markdown and break every mention, keeping the text readable."""
    text = _INLINE_MARKDOWN_RE.sub(r"\\\1", text)
    text = _LINE_MARKDOWN_RE.sub(r"\1\\\2", text)
    # A zero-width space after "@" defeats @everyone, @here, <@id>, <@!id> and <@&id> alike.
    return text.replace("@", "@" + _ZWSP)


def clean_text(text: str | None, limit: int) -> str:
    """User text as one tidy line: control characters dropped, whitespace collapsed, bounded."""
    if not text:
        return ""
    kept = "".join(
        " " if ch in "\r\n\t" else ch for ch in text if ch in "\r\n\t" or unicodedata.category(ch)[0] != "C"
    )
    return " ".join(kept.split())[:limit].strip()


@dataclass(frozen=True)
class CharacterChoice:
    """The characters a user asked for, or why they can't have them."""

    names: tuple[str, ...]
    error: str | None = None


def parse_characters(raw: str | None, known: Sequence[str]) -> CharacterChoice:
    """Resolve a comma-separated list of 1-3 names against the model's speakers (case-insensitive)."""
    parts = [clean_text(part, NAME_LIMIT) for part in (raw or "").split(",")]
    parts = [part for part in parts if part]
    if not parts:
        return CharacterChoice((), "Name at least one character, e.g. `Jon Snow, Arya Stark`.")
    if len(parts) > MAX_CHARACTERS:
        return CharacterChoice(
            (), f"A scene can have at most {MAX_CHARACTERS} characters; you named {len(parts)}."
        )
    if not known:  # a model without a speaker list accepts any (cleaned) names
        return CharacterChoice(tuple(dict.fromkeys(parts)))
    by_lower = {name.lower(): name for name in known}
    names, unknown = [], []
    for part in parts:
        name = by_lower.get(part.lower())
        if name is None:
            unknown.append(part)
        elif name not in names:
            names.append(name)
    if unknown:
        hints = []
        for part in unknown:
            close = difflib.get_close_matches(part.lower(), list(by_lower), n=3, cutoff=0.5)
            suggestion = f" (did you mean {', '.join(by_lower[c] for c in close)}?)" if close else ""
            hints.append(f"{part}{suggestion}")
        return CharacterChoice(
            (), f"This model doesn't know {'; '.join(hints)}. Pick from the suggestions as you type."
        )
    return CharacterChoice(tuple(names))


def autocomplete_characters(current: str, known: Sequence[str], limit: int = AUTOCOMPLETE_LIMIT) -> list[str]:
    """Completions for the last comma-separated item, each returned as the whole option value."""
    head, _, last = current.rpartition(",")
    chosen = [clean_text(p, NAME_LIMIT) for p in head.split(",")] if head else []
    chosen = [c for c in chosen if c]
    if len(chosen) >= MAX_CHARACTERS:
        return []
    by_lower = {name.lower(): name for name in known}
    chosen = [by_lower.get(c.lower(), c) for c in chosen]
    taken = {c.lower() for c in chosen}
    needle = clean_text(last, NAME_LIMIT).lower()
    candidates = [name for name in known if name.lower() not in taken]
    starts = [
        n
        for n in candidates
        if n.lower().startswith(needle) or any(w.startswith(needle) for w in n.lower().split())
    ]
    contains = [n for n in candidates if needle in n.lower() and n not in starts]
    prefix = ", ".join(chosen)
    results = []
    for name in starts + contains:
        value = f"{prefix}, {name}" if prefix else name
        if len(value) <= CHOICE_LIMIT:
            results.append(value)
        if len(results) >= limit:
            break
    return results


def render_screenplay(body: str) -> str:
    """Scene turns as screenplay lines (speaker names bold), every piece escaped."""
    lines = []
    for line in body.splitlines():
        turn = parse_turns(line)
        if turn:
            lines.append(f"**{neutralize(turn[0].speaker)}:** {neutralize(turn[0].text)}")
        elif line.strip():
            lines.append(neutralize(line.strip()))
    return "\n".join(lines)


def scene_title(characters: Sequence[str], setting: str) -> str:
    """A short embed title: the setting, else the characters."""
    title = setting or " & ".join(characters) or "A scene"
    return truncate(title, TITLE_LIMIT - 10)


def split_at_lines(text: str, limit: int) -> list[str]:
    """Split text into chunks of at most ``limit`` characters, at line boundaries where possible."""
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > limit:  # one very long line: cut it hard
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current:
        chunks.append(current)
    return [chunk for chunk in chunks if chunk.strip()]


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def tail_lines(text: str, limit: int) -> str:
    """The last whole lines of ``text`` that fit in ``limit`` characters (for live previews)."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    cut = tail.find("\n")
    return tail[cut + 1 :] if cut != -1 else tail


def footer_text(run_id: str, seed: int, seconds: float, extra: str = "") -> str:
    """The footer under a scene: which model, which seed, how long it took."""
    parts = [f"model {run_id}", f"seed {seed}", f"{seconds:.1f} s"]
    if extra:
        parts.append(extra)
    return truncate(" · ".join(parts), FOOTER_LIMIT)
