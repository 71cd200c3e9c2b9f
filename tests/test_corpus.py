"""Reading, cleaning, scene cutting and the episode split of the corpus."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from tests.corpus_factory import Row, csv_text, make_rows, numbered_turns, write_csv, write_text_form
from trainer.corpus import (
    CSV_COLUMNS,
    MAX_SETTING_CHARS,
    PSEUDO_EPISODE_TURNS,
    PSEUDO_SCENE_TURNS,
    SCENE_MARK,
    Corpus,
    CorpusError,
    clean_utterance,
    load_corpus,
    normalise_speaker,
    shorten_setting,
    split_episodes,
)
from trainer.errors import UserError
from trainer.scene_format import Turn
from trainer.speaker_aliases import SPEAKER_ALIASES

REAL_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


# --- the three forms -------------------------------------------------------------------------------


def test_scene_marked_csv_gives_one_scene_per_mark_with_its_setting(tmp_path):
    """Each changeofscene row opens a scene whose Setting is the (shortened) direction."""
    path = write_csv(tmp_path / "script.csv", make_rows(episodes=3, scenes_per_episode=2, turns_per_scene=3))
    corpus = load_corpus([path])

    assert [e.key for e in corpus.episodes] == ["S01E01", "S01E02", "S01E03"]
    assert corpus.episodes[1].title == "Episode Title 1-2"
    scenes = corpus.episodes[1].scenes
    assert len(scenes) == 2
    assert scenes[0].setting == "INT. CASTLE 1-2-1 - NIGHT"
    assert scenes[1].setting == "INT. CASTLE 1-2-2 - NIGHT"
    assert all(scene.episode == "S01E02" for scene in scenes)
    expected = [f"S1E2 scene 2 line {n}, winter is coming." for n in (1, 2, 3)]
    assert [t.text for t in scenes[1].turns] == expected
    assert corpus.counts.dialogue_rows == 18
    assert corpus.counts.scene_marks == 6


def test_csv_without_scene_marks_gives_one_scene_per_episode(tmp_path):
    path = write_csv(tmp_path / "plain.csv", make_rows(episodes=2, scenes_per_episode=3), scene_marks=False)
    corpus = load_corpus([path])

    assert [len(e.scenes) for e in corpus.episodes] == [1, 1]
    scene = corpus.episodes[0].scenes[0]
    assert scene.setting is None
    assert len(scene.turns) == 9
    assert corpus.counts.scene_marks == 0


def test_text_form_is_cut_into_fixed_pseudo_episodes_and_scenes(tmp_path):
    """The text form has no episodes: consecutive turns are grouped in fixed-size blocks."""
    count = 2 * PSEUDO_EPISODE_TURNS + 50
    path = write_text_form(tmp_path / "script.txt", numbered_turns(count))
    corpus = load_corpus([path])

    assert [e.key for e in corpus.episodes] == ["T0001", "T0002", "T0003"]
    assert [len(e.scenes) for e in corpus.episodes] == [
        PSEUDO_EPISODE_TURNS // PSEUDO_SCENE_TURNS,
        PSEUDO_EPISODE_TURNS // PSEUDO_SCENE_TURNS,
        -(-50 // PSEUDO_SCENE_TURNS),
    ]
    first = corpus.episodes[0].scenes[0]
    assert len(first.turns) == PSEUDO_SCENE_TURNS
    assert first.episode is None  # "T0001" is not a real episode, so no Episode line
    assert first.turns[0] == Turn("Jon Snow", "Turn number 0 of the made-up play.")
    second = corpus.episodes[1].scenes[0].turns[0]
    assert second.text == f"Turn number {PSEUDO_EPISODE_TURNS} of the made-up play."
    assert corpus.counts.dialogue_rows == count


def test_text_form_speaker_names_may_hold_commas(tmp_path):
    path = write_text_form(tmp_path / "script.txt", [("sam, pyp and grenn", "Yes!"), ("jon snow", "Go.")])
    turns = load_corpus([path]).episodes[0].scenes[0].turns
    assert [t.speaker for t in turns] == ["Sam, Pyp and Grenn", "Jon Snow"]


def test_text_form_with_lf_endings_and_no_final_separator(tmp_path):
    path = tmp_path / "script.txt"
    path.write_text("jon snow:\nWinter is coming.\n \nsam:\nI read it in a book.", encoding="utf-8")
    turns = load_corpus([path]).episodes[0].scenes[0].turns

    assert turns == (Turn("Jon Snow", "Winter is coming."), Turn("Samwell Tarly", "I read it in a book."))


def test_form_is_detected_from_content_not_extension(tmp_path):
    csv_named_txt = write_csv(tmp_path / "a.txt", make_rows(episodes=1))
    text_named_csv = write_text_form(tmp_path / "b.csv", numbered_turns(4))

    assert load_corpus([csv_named_txt]).episodes[0].key == "S01E01"
    assert load_corpus([text_named_csv]).episodes[0].key == "T0001"


def test_a_directory_reads_every_corpus_file_in_it(tmp_path):
    rows = make_rows(episodes=2, seasons=2)
    write_csv(tmp_path / "season1.csv", [r for r in rows if r.season == 1])
    write_csv(tmp_path / "season2.csv", [r for r in rows if r.season == 2])
    (tmp_path / "notes.md").write_text("not a corpus file", encoding="utf-8")
    corpus = load_corpus([tmp_path])

    assert [e.key for e in corpus.episodes] == ["S01E01", "S01E02", "S02E01", "S02E02"]
    assert [p.name for p in corpus.sources] == ["season1.csv", "season2.csv"]


def test_extra_columns_and_column_order_do_not_matter(tmp_path):
    columns = ("Name", "Sentence", "Episode", "Season", "Episode Title", "Release Date", "Notes")
    path = tmp_path / "reordered.csv"
    path.write_text(csv_text(make_rows(episodes=1), columns=columns), encoding="utf-8")

    scene = load_corpus([path]).episodes[0].scenes[0]
    assert scene.turns[0].text == "S1E1 scene 1 line 1, winter is coming."


def test_sha256_covers_the_raw_bytes_of_the_files_sorted_by_name(tmp_path):
    rows = make_rows(episodes=2, seasons=2)
    b = write_csv(tmp_path / "b.csv", [r for r in rows if r.season == 1])
    a = write_csv(tmp_path / "a.csv", [r for r in rows if r.season == 2])

    assert load_corpus([a]).sha256 == hashlib.sha256(a.read_bytes()).hexdigest()
    expected = hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert load_corpus([b, a]).sha256 == expected
    assert load_corpus([a, b]).sha256 == expected


# --- malformed input: one sentence naming the file (and line) -------------------------------------


def _error(paths) -> str:
    with pytest.raises(CorpusError) as info:
        load_corpus(paths)
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_missing_path(tmp_path):
    message = _error([tmp_path / "nope.csv"])
    assert f"the corpus file {tmp_path / 'nope.csv'} does not exist" in message
    assert "download-corpus" in message


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert _error([tmp_path / "empty.csv"]) == f"the corpus file {tmp_path / 'empty.csv'} is empty."


def test_directory_without_corpus_files(tmp_path):
    (tmp_path / "readme.md").write_text("hello", encoding="utf-8")
    assert _error([tmp_path]) == f"the directory {tmp_path} holds no corpus files (.csv or .txt)."


def test_missing_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Season,Episode,Name\nSeason 1,Episode 1,jon\n", encoding="utf-8")
    message = _error([path])
    assert message.startswith(f"{path} line 1: the CSV header lacks the columns Release Date, Episode Title")
    assert "Sentence" in message


def test_binary_data(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"jon snow:\nhello\n \n\x00\x01\x02\xff")
    assert _error([path]) == f"{path} line 4: the file holds binary data (a NUL byte), not script text."


def test_non_utf8_text_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("jon snow:\nWinter is coming.\n \narya stark:\nNo, caf\u00e9.\n \n".encode("latin-1"))
    assert _error([path]) == f"{path} line 5: the file is not UTF-8 text (byte 49)."


def test_unrecognised_text(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("Roses are red\nViolets are blue\n", encoding="utf-8")
    assert _error([path]).startswith(f"{path} is not a corpus file: expected a CSV with the header")


def test_text_form_turn_without_separator_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("jon snow:\nWinter is coming.\n \nsam:\nI read it.\nStill talking.\n", encoding="utf-8")
    message = _error([path])
    assert message == (
        f"{path} line 6: expected the line holding one space that ends a turn, found 'Still talking.'."
    )


def test_text_form_speaker_line_without_colon(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("jon snow:\nWinter is coming.\n \njust words\nmore\n \n", encoding="utf-8")
    assert _error([path]) == f"{path} line 4: expected a 'speaker name:' line, found 'just words'."


def test_text_form_speaker_without_utterance(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"jon snow:\r\nWinter.\r\n \r\nsam:")
    assert _error([path]) == f"{path} line 4: the turn of 'sam:' has no utterance line."


def test_csv_row_with_wrong_field_count(tmp_path):
    path = tmp_path / "bad.csv"
    text = csv_text(make_rows(episodes=1, scenes_per_episode=1, turns_per_scene=2))
    path.write_text(text + "2011-04-17,Season 1,Episode 1,Title,jon snow\n", encoding="utf-8")
    assert _error([path]) == f"{path} line 5: expected 6 fields, found 5."


def test_csv_season_without_a_number(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n2011,Season one,Episode 1,T,jon,Hi.\n", encoding="utf-8")
    assert _error([path]) == f"{path} line 2: the Season field 'Season one' has no number."


def test_csv_with_header_only(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n", encoding="utf-8")
    assert _error([path]) == f"{path} has a header but no rows of dialogue."


def test_same_episode_in_two_files_is_refused(tmp_path):
    rows = make_rows(episodes=1)
    marked = write_csv(tmp_path / "marked.csv", rows)
    plain = write_csv(tmp_path / "plain.csv", rows, scene_marks=False)
    message = _error([marked, plain])
    assert message.startswith(f"episode S01E01 appears in both {marked} and {plain}")


# --- cleaning --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("jon snow", "Jon Snow"),
        ("  JON   SNOW ", "Jon Snow"),
        ("sam", "Samwell Tarly"),
        ("sam tarly", "Samwell Tarly"),
        ("Sam Tarly", "Samwell Tarly"),
        ("sandor", "Sandor Clegane"),
        ("jaqen h'ghar", "Jaqen H'ghar"),
        ("grey worm", "Grey Worm"),
        ("brienne", "Brienne of Tarth"),
        ("lord of bones", "Lord of Bones"),
        ("the waif", "The Waif"),
    ],
)
def test_speaker_names_are_normalised(raw, expected):
    assert normalise_speaker(raw) == expected


def test_alias_table_lists_each_spelling_once_in_lower_case():
    variants = [v for spellings in SPEAKER_ALIASES.values() for v in spellings]
    assert len(variants) == len(set(variants))
    assert all(v == " ".join(v.lower().split()) for v in variants)
    # No spelling of one character is another character's canonical name.
    for canonical, spellings in SPEAKER_ALIASES.items():
        others = {name.lower() for name in SPEAKER_ALIASES if name != canonical}
        assert not others & set(spellings), canonical


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Gods, they grow fast. [Seeing BRAN on the wall] Brandon!", "Gods, they grow fast. Brandon!"),
        ("[Coughs]", ""),
        ("  Winter\tis \r\n coming.  ", "Winter is coming."),
        (
            "l don't know. l've given up. lf l'm right, lt's over.",
            "I don't know. I've given up. If I'm right, It's over.",
        ),
        ("A long lad, a lord and l.", "A long lad, a lord and I."),
        ("Bill's cat", "Bill's cat"),
    ],
)
def test_utterance_cleaning_rules(raw, expected):
    assert clean_utterance(raw) == expected


def test_lines_empty_after_cleaning_and_repeats_are_dropped(tmp_path):
    rows = [
        Row(1, 1, "jon snow", "Winter is coming."),
        Row(1, 1, "jon snow", "[He sighs]"),
        Row(1, 1, "jon snow", "Winter  is coming."),  # same after cleaning, right after the first
        Row(1, 1, "arya stark", "No."),
        Row(1, 1, "jon snow", "Winter is coming."),  # a repeat, but not consecutive: kept
    ]
    corpus = load_corpus([write_csv(tmp_path / "dirty.csv", rows)])
    turns = corpus.episodes[0].scenes[0].turns

    assert [t.text for t in turns] == ["Winter is coming.", "No.", "Winter is coming."]
    assert corpus.counts.dialogue_rows == 5
    assert corpus.counts.emptied_lines_dropped == 1
    assert corpus.counts.duplicate_lines_dropped == 1


def test_long_utterances_are_kept_whole_with_whitespace_normalised(tmp_path):
    long_text = "  ".join(f"Word{i}\n" for i in range(400))  # > 1,500 characters
    corpus = load_corpus([write_csv(tmp_path / "long.csv", [Row(1, 1, "varys", long_text)])])
    text = corpus.episodes[0].scenes[0].turns[0].text

    assert text == " ".join(f"Word{i}" for i in range(400))
    assert corpus.counts.long_utterances == 1


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("INT. CASTLE BLACK - AEMON'S ROOM", "INT. CASTLE BLACK - AEMON'S ROOM"),
        ("CUT TO", None),
        ("CUT TO - DRAGONSTONE - GREY WORM'S QUARTERS", "DRAGONSTONE - GREY WORM'S QUARTERS"),
        ("Scene shifts to a raven approaching Winterfell. CATELYN crosses a courtyard.",
         "A raven approaching Winterfell."),
        ("Riders come up behind WILL. The scene shifts to the castle, where BRAN practices.",
         "The castle, where BRAN practices."),
        ("EXT. King's Landing garden. Sansa walks.", "EXT. King's Landing garden."),
        ("[Night] INT. A ROOM", "INT. A ROOM"),
    ],
)
def test_scene_directions_become_short_settings(direction, expected):
    assert shorten_setting(direction) == expected


def test_long_settings_are_cut_at_a_word_boundary():
    setting = shorten_setting("EXT. " + "very " * 60 + "long road")
    assert setting is not None
    assert len(setting) <= MAX_SETTING_CHARS
    assert setting.endswith("very...")


def test_consecutive_scene_marks_make_one_scene_with_the_informative_setting(tmp_path):
    rows = [
        Row(1, 1, "jon snow", "Before any mark."),
        Row(1, 1, SCENE_MARK, "INT. GREAT HALL"),
        Row(1, 1, SCENE_MARK, "CUT TO"),
        Row(1, 1, "arya stark", "In the hall."),
        Row(1, 1, SCENE_MARK, "EXT. YARD"),  # a mark at the end of the episode opens no scene
    ]
    corpus = load_corpus([write_csv(tmp_path / "marks.csv", rows)])
    scenes = corpus.episodes[0].scenes

    assert [(s.setting, [t.text for t in s.turns]) for s in scenes] == [
        (None, ["Before any mark."]),
        ("INT. GREAT HALL", ["In the hall."]),
    ]
    assert corpus.counts.scene_marks == 3


# --- the episode split -----------------------------------------------------------------------------


def _corpus(tmp_path, episodes: int, seasons: int = 1) -> Corpus:
    rows = make_rows(episodes=episodes, seasons=seasons, scenes_per_episode=1, turns_per_scene=2)
    return load_corpus([write_csv(tmp_path / "script.csv", rows)])


def test_split_holds_out_whole_episodes_and_shares_none(tmp_path):
    corpus = _corpus(tmp_path, episodes=10, seasons=3)
    train, val = split_episodes(corpus, 0.1)

    assert len(val) == 3
    assert len(train) + len(val) == 30
    assert not {e.key for e in train} & {e.key for e in val}
    train_text = {t.text for e in train for s in e.scenes for t in s.turns}
    val_text = {t.text for e in val for s in e.scenes for t in s.turns}
    assert not train_text & val_text


def test_split_is_deterministic_and_ignores_episode_order(tmp_path):
    corpus = _corpus(tmp_path, episodes=10, seasons=2)
    keys = [e.key for e in split_episodes(corpus, 0.2)[1]]
    reordered = replace(corpus, episodes=tuple(reversed(corpus.episodes)))

    assert keys == [e.key for e in split_episodes(corpus, 0.2)[1]]
    assert sorted(keys) == sorted(e.key for e in split_episodes(reordered, 0.2)[1])


def test_split_keeps_at_least_one_episode_on_each_side(tmp_path):
    corpus = _corpus(tmp_path, episodes=2)
    assert [len(side) for side in split_episodes(corpus, 0.01)] == [1, 1]
    assert [len(side) for side in split_episodes(corpus, 0.99)] == [1, 1]


def test_split_of_a_single_episode_is_refused(tmp_path):
    corpus = _corpus(tmp_path, episodes=1)
    with pytest.raises(CorpusError, match=r"the corpus has 1 episode \(S01E01\); holding out whole episodes"):
        split_episodes(corpus, 0.1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_split_refuses_a_fraction_outside_0_1(tmp_path, fraction):
    with pytest.raises(CorpusError, match="between 0 and 1"):
        split_episodes(_corpus(tmp_path, episodes=3), fraction)


# --- the real corpus, when it is beside the repository ---------------------------------------------


@pytest.mark.skipif(
    not REAL_CORPUS.is_dir(), reason="the real script corpus (../shared/corpus) is not present"
)
def test_real_corpus_counts():
    """73 episodes, 23,911 dialogue rows and 479 scene marks, as the parser reads them."""
    corpus = load_corpus([REAL_CORPUS / "Game_of_Thrones_Script_MD.csv"])

    assert len(corpus.episodes) == 73
    assert corpus.counts.dialogue_rows == 23_911
    assert corpus.counts.scene_marks == 479
    assert corpus.sha256 == "704046647fe54923db112412179896b5aae870e7ab385705ee57deac43a7d3c0"
    text_form = load_corpus([REAL_CORPUS / "GoT_textonly.txt"])
    assert text_form.counts.dialogue_rows == 23_911
