"""The prepared-corpus API and the ``prepare`` command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.corpus_factory import Row, make_rows, numbered_turns, write_csv, write_text_form
from tests.tiny import make_tiny_tokenizer
from trainer import cli
from trainer.corpus import load_corpus, split_episodes
from trainer.prepare import (
    DEFAULT_CORPUS,
    INSPECTION_SEPARATOR,
    add_corpus_arguments,
    count_tokens,
    prepare_corpus,
)
from trainer.scene_format import format_scene, join_documents, parse_turns


@pytest.fixture
def script(tmp_path) -> Path:
    """A scene-marked CSV: 10 episodes of 2 scenes of 3 turns."""
    return write_csv(tmp_path / "script.csv", make_rows(episodes=10, scenes_per_episode=2, turns_per_scene=3))


def run_cli(argv: list[str], monkeypatch) -> int:
    """Run ``python -m trainer`` with only the corpus commands registered (train is not needed here)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("trainer.download", "trainer.prepare"))
    return cli.main(argv)


def test_documents_are_formatted_scenes_of_the_split_episodes(script):
    prepared = prepare_corpus([script], val_fraction=0.2)
    train, val = split_episodes(load_corpus([script]), 0.2)

    assert prepared.train_docs == [format_scene(s) for e in train for s in e.scenes]
    assert prepared.val_docs == [format_scene(s) for e in val for s in e.scenes]
    assert len(prepared.val_docs) == 4  # 2 episodes of 2 scenes
    assert prepared.stats.val_episodes == tuple(e.key for e in val)
    assert prepared.val_docs[0].startswith(f"### Scene\nEpisode: {val[0].key}\nSetting: INT. CASTLE")
    assert prepared.corpus_sha256 == load_corpus([script]).sha256


def test_no_validation_text_reaches_training(script):
    prepared = prepare_corpus([script], val_fraction=0.3)
    train_lines = {t.text for doc in prepared.train_docs for t in parse_turns(doc)}
    val_lines = {t.text for doc in prepared.val_docs for t in parse_turns(doc)}

    assert val_lines and train_lines
    assert not train_lines & val_lines
    assert not set(prepared.train_docs) & set(prepared.val_docs)


def test_training_scenes_identical_to_a_validation_scene_are_dropped(tmp_path):
    """The text form can repeat a stretch of dialogue; a copy in training would leak validation text."""
    block = numbered_turns(300)  # exactly one pseudo-episode
    other = [(speaker, text.replace("Turn", "Other turn")) for speaker, text in numbered_turns(300)]
    path = write_text_form(tmp_path / "script.txt", block + block + other + other + other)
    prepared = prepare_corpus([path], val_fraction=0.2)  # 1 of 5 episodes held out

    assert not set(prepared.train_docs) & set(prepared.val_docs)
    # The held-out episode's copies (1 or 2 of them, 10 scenes each) are gone from training.
    assert prepared.stats.cross_duplicates_dropped in (10, 20)
    assert len(prepared.train_docs) == 40 - prepared.stats.cross_duplicates_dropped


def test_speakers_are_listed_most_frequent_first(tmp_path):
    rows = [Row(1, 1, "arya stark", "One."), Row(1, 1, "sam", "Two."), Row(1, 1, "sam tarly", "Three."),
            Row(1, 2, "jon snow", "Four."), Row(1, 2, "Arya Stark", "Five."), Row(1, 2, "sam", "Six.")]
    prepared = prepare_corpus([write_csv(tmp_path / "s.csv", rows)])

    assert prepared.speakers == ["Samwell Tarly", "Arya Stark", "Jon Snow"]
    assert prepared.stats.speaker_turns[0] == ("Samwell Tarly", 3)


def test_stats_count_episodes_scenes_turns_and_characters(script):
    prepared = prepare_corpus([script], val_fraction=0.1)
    stats = prepared.stats

    assert (stats.train.episodes, stats.val.episodes) == (9, 1)
    assert (stats.train.scenes, stats.val.scenes) == (18, 2)
    assert (stats.train.turns, stats.val.turns) == (54, 6)
    assert stats.train.characters == sum(map(len, prepared.train_docs))
    assert stats.read.dialogue_rows == 60
    assert stats.read.scene_marks == 20


def test_token_counts_include_one_separator_per_document(script, tmp_path):
    tokenizer = make_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    prepared = prepare_corpus([script])
    (train_tokens, val_tokens), why_not = count_tokens(str(tmp_path / "tok"), prepared)

    expected = sum(len(tokenizer(doc)["input_ids"]) + 1 for doc in prepared.val_docs)
    assert why_not is None
    assert val_tokens == expected
    assert train_tokens > val_tokens


def test_corpus_arguments_take_defaults_from_the_environment(monkeypatch, tmp_path):
    def parse(argv):
        parser = argparse.ArgumentParser()
        add_corpus_arguments(parser)
        return parser.parse_args(argv)

    monkeypatch.delenv("MAESTER_CORPUS", raising=False)
    monkeypatch.delenv("MAESTER_VAL_FRACTION", raising=False)
    assert (parse([]).corpus, parse([]).val_fraction) == ([DEFAULT_CORPUS], 0.1)
    monkeypatch.setenv("MAESTER_CORPUS", f"{tmp_path / 'a.csv'}:{tmp_path / 'b.txt'}")
    monkeypatch.setenv("MAESTER_VAL_FRACTION", "0.25")
    args = parse([])
    assert args.corpus == [tmp_path / "a.csv", tmp_path / "b.txt"]
    assert args.val_fraction == 0.25
    assert parse(["--corpus", "x.csv", "y.csv"]).corpus == [Path("x.csv"), Path("y.csv")]


@pytest.mark.parametrize("value", ["0", "1", "abc", "-0.1"])
def test_a_bad_val_fraction_flag_is_refused(value, capsys):
    parser = argparse.ArgumentParser()
    add_corpus_arguments(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--val-fraction", value])
    assert info.value.code == 2
    assert "--val-fraction" in capsys.readouterr().err


def test_prepare_command_prints_statistics_and_writes_inspection_files(script, tmp_path, monkeypatch, capsys):
    tokenizer = make_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    status = run_cli(
        ["prepare", "--corpus", str(script), "--tokenizer", str(tmp_path / "tok"), "--output", str(out)],
        monkeypatch,
    )
    printed = capsys.readouterr().out
    prepared = prepare_corpus([script])

    assert status == 0
    assert "read: 60 dialogue rows, 20 scene marks" in printed
    assert "speakers: 4" in printed
    assert "top 10 speakers: " in printed
    train_row = next(line for line in printed.splitlines() if line.startswith("train "))
    assert train_row.split()[1:4] == ["9", "18", "54"]
    assert train_row.split()[-1] != "-"  # tokens were counted
    assert "tokens not counted" not in printed
    assert (out / "train.txt").read_text(encoding="utf-8") == join_documents(
        prepared.train_docs, INSPECTION_SEPARATOR
    )
    assert (out / "val.txt").read_text(encoding="utf-8") == join_documents(
        prepared.val_docs, INSPECTION_SEPARATOR
    )


def test_prepare_without_a_tokenizer_prints_characters_and_why(script, tmp_path, monkeypatch, capsys):
    not_a_tokenizer = tmp_path / "empty-dir"
    not_a_tokenizer.mkdir()
    status = run_cli(["prepare", "--corpus", str(script), "--tokenizer", str(not_a_tokenizer)], monkeypatch)
    captured = capsys.readouterr()

    assert status == 0
    lines = captured.out.splitlines()
    assert next(line for line in lines if line.startswith("train ")).split()[-1] == "-"
    why = [line for line in lines if line.startswith("tokens not counted:")]
    assert len(why) == 1 and f"could not load tokenizer {str(not_a_tokenizer)!r}" in why[0]
    assert "Traceback" not in captured.err


def test_prepare_on_a_missing_corpus_is_one_error_line(tmp_path, monkeypatch, capsys):
    status = run_cli(["prepare", "--corpus", str(tmp_path / "missing.csv")], monkeypatch)
    err = capsys.readouterr().err

    assert status == 2
    assert err.startswith(f"error: the corpus file {tmp_path / 'missing.csv'} does not exist")
    assert err.count("\n") == 1


def test_prepare_on_a_single_episode_explains_the_split(tmp_path, monkeypatch, capsys):
    path = write_csv(tmp_path / "one.csv", make_rows(episodes=1))
    status = run_cli(["prepare", "--corpus", str(path)], monkeypatch)

    assert status == 2
    assert "the corpus has 1 episode (S01E01)" in capsys.readouterr().err
