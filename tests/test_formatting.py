"""Formatting: user input cleaned, generated text escaped so it can't ping or break layout, limits kept."""

from __future__ import annotations

import re

import pytest

from bot.formatting import (
    DESCRIPTION_LIMIT,
    autocomplete_characters,
    clean_text,
    footer_text,
    neutralize,
    parse_characters,
    render_screenplay,
    scene_title,
    split_at_lines,
    tail_lines,
    truncate,
)

KNOWN = ("Jon Snow", "Tyrion Lannister", "Arya Stark", "Cersei Lannister", "Sansa Stark")
# What Discord would treat as a mention: @everyone/@here, or <@id>, <@!id>, <@&id> with no escape inside.
MENTION_RE = re.compile(r"@(everyone|here)|<@[!&]?\d+>")


@pytest.mark.parametrize(
    "text",
    ["@everyone look", "hi @here", "<@123>", "<@!123456789012345678>", "<@&55>", "@@everyone", "`@everyone`"],
)
def test_neutralize_breaks_every_mention(text: str) -> None:
    escaped = neutralize(text)
    assert not MENTION_RE.search(escaped)
    # Still readable: only invisible characters and backslashes were added.
    assert escaped.replace("\u200b", "").replace("\\", "") == text


@pytest.mark.parametrize(
    ("text", "must_not_contain"),
    [
        ("```py\nprint()\n```", "```"),
        ("**bold** and __under__", "**"),
        ("[click](https://evil.example)", "[click]("),
        ("||spoiler||", "||"),
        ("> quoted", "\n> "),
        ("# Heading", "\n# "),
    ],
)
def test_neutralize_escapes_markdown(text: str, must_not_contain: str) -> None:
    assert must_not_contain not in "\n" + neutralize(text)


def test_clean_text_drops_control_characters_and_collapses_whitespace() -> None:
    assert (
        clean_text("  The\tcourtyard\n\nof\x00 Winterfell\x1b[31m  ", 200)
        == "The courtyard of Winterfell[31m"
    )
    assert clean_text("   ", 10) == ""
    assert clean_text(None, 10) == ""
    assert clean_text("x" * 50, 10) == "x" * 10


def test_parse_characters_resolves_names_case_insensitively() -> None:
    choice = parse_characters(" jon snow ,ARYA STARK, Jon Snow", KNOWN)
    assert choice.error is None
    assert choice.names == ("Jon Snow", "Arya Stark")


def test_parse_characters_suggests_close_names_for_unknown_ones() -> None:
    choice = parse_characters("Jon Snow, Tyrian", KNOWN)
    assert choice.names == ()
    assert "Tyrian" in choice.error and "did you mean Tyrion Lannister" in choice.error


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [("", "at least one"), (" , ,", "at least one"), ("a, b, c, d", "at most 3")],
)
def test_parse_characters_refuses_empty_and_too_many(raw: str, fragment: str) -> None:
    choice = parse_characters(raw, KNOWN)
    assert choice.names == () and fragment in choice.error


def test_parse_characters_accepts_any_clean_names_when_the_model_lists_none() -> None:
    assert parse_characters("Hodor, Ser Pounce\x07", ()).names == ("Hodor", "Ser Pounce")


def test_autocomplete_completes_the_last_item_and_keeps_the_rest() -> None:
    assert autocomplete_characters("", KNOWN) == list(KNOWN)
    assert autocomplete_characters("lann", KNOWN) == ["Tyrion Lannister", "Cersei Lannister"]
    # Names starting with (or with a word starting with) what was typed come first, then other matches.
    assert autocomplete_characters("jon snow, ar", KNOWN) == ["Jon Snow, Arya Stark", "Jon Snow, Sansa Stark"]
    # Names already chosen are not offered again; three chosen means nothing more to add.
    assert "Jon Snow, Jon Snow" not in autocomplete_characters("Jon Snow, ", KNOWN)
    assert autocomplete_characters("Jon Snow, Arya Stark, Sansa Stark, ", KNOWN) == []


def test_autocomplete_respects_discords_limits() -> None:
    many = [f"Speaker {i}" for i in range(60)]
    assert len(autocomplete_characters("sp", many)) == 25
    long_name = "N" * 95  # "Jon Snow, " + it is over a choice's 100 characters
    assert autocomplete_characters("Jon Snow, NNN", [*KNOWN, long_name]) == []


def test_render_screenplay_bolds_speakers_and_escapes_everything() -> None:
    body = "Jon Snow: Winter is coming, @everyone.\nTyrion Lannister: I **drink** <@123>\nstray line\n"
    rendered = render_screenplay(body)
    lines = rendered.splitlines()
    assert lines[0].startswith("**Jon Snow:** Winter is coming")
    assert lines[1].startswith("**Tyrion Lannister:** I \\*\\*drink\\*\\*")
    assert lines[2] == "stray line"
    assert not MENTION_RE.search(rendered)


def test_a_speaker_name_cannot_inject_markdown_or_mentions() -> None:
    rendered = render_screenplay("@everyone: hello\n")
    assert not MENTION_RE.search(rendered)


def test_split_at_lines_keeps_lines_whole_and_within_the_limit() -> None:
    lines = [f"line {i} " + "x" * (i * 7 % 90) for i in range(400)]
    text = "\n".join(lines)
    parts = split_at_lines(text, DESCRIPTION_LIMIT)
    assert len(parts) > 1
    assert all(len(part) <= DESCRIPTION_LIMIT for part in parts)
    assert "\n".join(parts) == text  # nothing lost, every cut on a line boundary
    huge = split_at_lines("y" * 9000, 4096)
    assert [len(p) for p in huge] == [4096, 4096, 808]


def test_tail_lines_and_truncate() -> None:
    text = "first line\nsecond line\nthird line"
    assert tail_lines(text, 100) == text
    assert tail_lines(text, 22) == "third line"
    assert truncate("abcdef", 4) == "abc…" and truncate("abc", 4) == "abc"


def test_title_and_footer_fit_discords_limits() -> None:
    assert scene_title(("Jon Snow", "Arya Stark"), "") == "Jon Snow & Arya Stark"
    assert len(scene_title((), "s" * 500)) <= 256
    footer = footer_text("run-2024", 1234, 3.21)
    assert footer == "model run-2024 · seed 1234 · 3.2 s"
    assert len(footer_text("r" * 3000, 1, 1.0)) <= 2048
