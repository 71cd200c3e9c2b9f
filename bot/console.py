"""Console mode: generate scenes from the published model in a terminal, without Discord.

It uses the same engine and the same scene format as the bot, so what you see here is what /scene would
write. Give ``--characters`` (and optionally ``--setting`` / ``--opening``) for one scene, or nothing to
be asked for each scene in turn (an empty character list, or end of input, quits). Text streams to the
terminal line by line as it is generated; each scene ends with a line saying why it stopped and the
seed that replays it (``--seed``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from bot.engine import Engine, SamplingParams
from trainer.envargs import env_flag
from trainer.errors import UserError
from trainer.scene_format import build_prompt

_DEFAULTS = SamplingParams()


def add_console_arguments(parser: argparse.ArgumentParser) -> None:
    """The console subcommand's flags."""
    env_flag(parser, "--checkpoint-dir", env="MAESTER_CHECKPOINT_DIR", default="checkpoints", type=Path,
             help="checkpoint directory holding CURRENT and runs/")
    env_flag(parser, "--device", env="MAESTER_DEVICE", default="auto",
             help="where the model runs: auto (a GPU if there is one), cpu, cuda or cuda:N")
    env_flag(parser, "--quantize", env="MAESTER_QUANTIZE", default="none", choices=("none", "int8"),
             help="int8: dynamic int8 weights, faster on CPU")
    env_flag(parser, "--threads", env="MAESTER_THREADS", default=0, type=int,
             help="CPU threads for the model (0 = PyTorch's default)")
    scene = parser.add_argument_group("scene (leave --characters out to be asked for each scene)")
    scene.add_argument("--characters", default=None,
                       help="comma-separated characters; the first one speaks first")
    scene.add_argument("--setting", default=None, help="where the scene takes place")
    scene.add_argument("--opening", default=None, help="the first character's opening line")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens,
                          help="most tokens to generate per scene [default: %(default)s]")
    sampling.add_argument("--temperature", type=float, default=_DEFAULTS.temperature,
                          help="randomness; 0 = always the most likely token [default: %(default)s]")
    sampling.add_argument("--top-p", type=float, default=_DEFAULTS.top_p,
                          help="nucleus sampling threshold in (0, 1] [default: %(default)s]")
    sampling.add_argument("--top-k", type=int, default=_DEFAULTS.top_k,
                          help="sample among the k most likely tokens; 0 = no limit [default: %(default)s]")
    sampling.add_argument("--repetition-penalty", type=float, default=_DEFAULTS.repetition_penalty,
                          help="discourage repeating tokens; 1.0 = off [default: %(default)s]")
    sampling.add_argument("--seed", type=int, default=None,
                          help="seed for a reproducible scene [default: a new random seed each scene]")


def main(args: argparse.Namespace) -> int:
    """Run console mode from parsed arguments."""
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    return run_console(
        args.checkpoint_dir,
        args.device,
        quantize=args.quantize,
        threads=args.threads or None,
        characters=_split_characters(args.characters) if args.characters is not None else None,
        setting=args.setting,
        opening=args.opening,
        params=params,
    )


def run_console(
    checkpoint_dir: Path | str,
    device: str = "auto",
    *,
    quantize: str = "none",
    threads: int | None = None,
    characters: Sequence[str] | None = None,
    setting: str | None = None,
    opening: str | None = None,
    params: SamplingParams | None = None,
    input: TextIO | None = None,
    output: TextIO | None = None,
) -> int:
    """Load the published run and write scenes to ``output``: one from the arguments, or one per request."""
    source = input if input is not None else sys.stdin  # looked up now, so redirections made later apply
    output = output if output is not None else sys.stdout
    params = params or SamplingParams()
    try:
        params.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    loaded = _load(Path(checkpoint_dir), device, quantize)
    output.write(f"Run {loaded.run_id} on {loaded.device.type}"
                 f"{' (int8)' if loaded.quantize == 'int8' else ''}.\n")
    output.flush()
    engine = Engine(loaded, max_batch_size=1, max_queue=1, request_timeout_s=3600.0,
                    max_new_tokens_cap=max(1, params.max_new_tokens), threads=threads)
    return asyncio.run(_session(engine, characters, setting, opening, params, source, output))


async def _session(
    engine: Engine,
    characters: Sequence[str] | None,
    setting: str | None,
    opening: str | None,
    params: SamplingParams,
    source: TextIO,
    output: TextIO,
) -> int:
    await engine.start()
    try:
        if characters is not None:
            await _scene(engine, characters, setting, opening, params, output)
            return 0
        while True:
            answer = await _ask("Characters (comma-separated; empty to quit): ", source, output)
            if not answer:
                return 0
            scene_setting = await _ask("Setting (optional): ", source, output)
            scene_opening = await _ask("Opening line (optional): ", source, output)
            await _scene(engine, _split_characters(answer), scene_setting or None, scene_opening or None,
                         params, output)
    finally:
        await engine.stop(drain_timeout_s=0)


async def _scene(
    engine: Engine,
    characters: Sequence[str],
    setting: str | None,
    opening: str | None,
    params: SamplingParams,
    output: TextIO,
) -> None:
    """Write one scene: its prompt, then the generated text as it streams, then how it ended."""
    prompt = build_prompt(characters, setting, opening)
    try:
        handle = engine.submit(prompt, params)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    output.write("\n" + prompt)
    output.flush()
    async for delta in handle.stream():
        output.write(delta)
        output.flush()
    try:
        result = await handle.result()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not result.text.endswith("\n"):
        output.write("\n")
    output.write(f"[{result.finish_reason}, {result.new_tokens} tokens in {result.seconds:.1f} s, "
                 f"seed {result.seed}]\n")
    output.flush()


async def _ask(question: str, source: TextIO, output: TextIO) -> str | None:
    """One answer from ``source`` (read off the event loop); None at end of input."""
    output.write(question)
    output.flush()
    line = await asyncio.to_thread(source.readline)
    if not line:
        output.write("\n")
        return None
    if not source.isatty():
        output.write(line if line.endswith("\n") else line + "\n")  # echo piped answers, as a terminal would
    return line.strip()


def _split_characters(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _load(checkpoint_dir: Path, device: str, quantize: str):  # -> LoadedModel
    from bot.model_loader import load_run_model
    from trainer.runs import InvalidRunError, current_run

    try:
        run = current_run(checkpoint_dir)
        if run is None:
            raise UserError(
                f"no trained model is published in {checkpoint_dir}; train one with "
                "`python -m trainer train` (or point --checkpoint-dir at the directory holding CURRENT)."
            )
        return load_run_model(run, device=device, quantize=quantize)
    except InvalidRunError as exc:
        raise UserError(str(exc)) from None
