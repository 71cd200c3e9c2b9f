"""Console mode: scenes from the published run on piped input or flags, and a clear error without a run."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from bot.console import add_console_arguments, main, run_console
from bot.engine import SamplingParams
from tests.tiny import publish_tiny_run
from trainer.errors import UserError


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    publish_tiny_run(root, run_id="console-run")
    return root


def test_piped_input_produces_scenes(checkpoints: Path) -> None:
    """Each block of answers on stdin becomes a formatted, generated scene; end of input quits."""
    answers = "Jon Snow, Arya Stark\nWinterfell.\n\nTyrion Lannister\n\nI drink and I know things.\n"
    source = io.StringIO(answers)
    output = io.StringIO()
    status = run_console(checkpoints, "cpu", params=SamplingParams(max_new_tokens=20, seed=3),
                         input=source, output=output)
    text = output.getvalue()
    assert status == 0
    assert "Run console-run on cpu." in text
    assert "### Scene\nSetting: Winterfell.\nCharacters: Jon Snow, Arya Stark\n\nJon Snow:" in text
    assert "Characters: Tyrion Lannister\n\nTyrion Lannister: I drink and I know things.\n" in text
    assert text.count("tokens in") == 2 and text.count("seed 3]") == 2


def test_flags_give_one_scene_reproducibly(checkpoints: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --characters the console writes one scene and exits; the same seed writes the same scene."""
    parser = argparse.ArgumentParser()
    add_console_arguments(parser)
    argv = ["--checkpoint-dir", str(checkpoints), "--device", "cpu", "--characters", "Arya Stark, Jon Snow",
            "--setting", "The Wall.", "--seed", "5", "--max-new-tokens", "25", "--temperature", "0.7"]
    outputs = []
    for _ in range(2):
        assert main(parser.parse_args(argv)) == 0
        outputs.append(capsys.readouterr().out.rsplit(" tokens in", 1)[0])
    assert outputs[0] == outputs[1]
    assert "Setting: The Wall.\nCharacters: Arya Stark, Jon Snow\n\nArya Stark:" in outputs[0]


def test_no_published_run_names_the_training_command(tmp_path: Path) -> None:
    """Without a published run, one sentence says how to train one."""
    with pytest.raises(UserError, match="python -m trainer train"):
        run_console(tmp_path, "cpu", input=io.StringIO(""), output=io.StringIO())


def test_bad_sampling_setting_is_one_sentence(checkpoints: Path) -> None:
    """An out-of-range flag is a user error, not a traceback."""
    with pytest.raises(UserError, match="top_p"):
        run_console(checkpoints, "cpu", params=SamplingParams(top_p=2.0), output=io.StringIO())
