"""The scene text format round-trips and marks scene boundaries the way the bot relies on."""

from trainer.scene_format import (
    HEADER,
    Scene,
    Turn,
    build_prompt,
    cut_at_scene_end,
    drop_unfinished_line,
    episode_tag,
    format_scene,
    join_documents,
    parse_turns,
)


def test_scene_document_has_header_fields_and_turns():
    scene = Scene(
        turns=(Turn("Jon Snow", "Where are you going?"), Turn("Tyrion Lannister", "To the Wall.")),
        episode=episode_tag(1, 3),
        setting="The courtyard\nof Castle Black.",
    )
    text = format_scene(scene)
    assert text.splitlines() == [
        HEADER,
        "Episode: S01E03",
        "Setting: The courtyard of Castle Black.",
        "Characters: Jon Snow, Tyrion Lannister",
        "",
        "Jon Snow: Where are you going?",
        "Tyrion Lannister: To the Wall.",
    ]
    assert parse_turns(text) == list(scene.turns)


def test_documents_are_each_closed_by_end_of_text():
    assert join_documents(["a\n", "b\n"], "<|endoftext|>") == "a\n<|endoftext|>b\n<|endoftext|>"


def test_prompt_ends_where_the_first_character_speaks():
    prompt = build_prompt(["Arya Stark", "Sandor Clegane"], setting="A burnt inn")
    assert prompt.endswith("\n\nArya Stark:")
    assert "Setting: A burnt inn\n" in prompt
    assert "Episode:" not in prompt


def test_prompt_with_opening_line_continues_after_it():
    prompt = build_prompt(["Arya Stark"], opening="Not today.")
    assert prompt.endswith("Arya Stark: Not today.\n")


def test_generation_is_cut_at_the_next_scene_header():
    text, ended = cut_at_scene_end(f"Jon Snow: Hi.\nArya Stark: Bye.\n{HEADER}\nEpisode: S02E01\n")
    assert ended and text == "Jon Snow: Hi.\nArya Stark: Bye.\n"
    assert cut_at_scene_end("Jon Snow: Hi.\n") == ("Jon Snow: Hi.\n", False)


def test_unfinished_last_line_is_dropped():
    assert drop_unfinished_line("Jon Snow: Hi.\nArya Stark: Wh") == "Jon Snow: Hi.\n"
    assert drop_unfinished_line("Jon Snow: Hi.\n") == "Jon Snow: Hi.\n"
    assert drop_unfinished_line("half a line") == ""
