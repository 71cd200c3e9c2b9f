"""The deployment files keep their promises: images, compose file, .env.example and health check.

No Docker engine is needed: the Dockerfiles are parsed, the compose file is validated against the
Compose specification's JSON schema, and every command the images and services run is started here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
CI_RUN = REPO / ".ci" / "run"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
SCHEMA = REPO / "tests" / "compose_schema" / "compose-spec.json"
DOCKERFILES = {"gpu": REPO / "Dockerfile-GPU", "cpu": REPO / "Dockerfile"}
ENV_NAME = re.compile(r"\b(MAESTER_[A-Z0-9_]+|DISCORD_TOKEN)\b")
# Variables .env.example may set that docker compose reads itself, not maester's code.
COMPOSE_VARIABLES = {"COMPOSE_PROFILES"}
SUBPROCESS_TIMEOUT_S = 120


# --- Dockerfile parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (fails the test when it is shell form)."""
        assert self.args.startswith("["), f"{self.keyword} {self.args} is not exec form"
        return json.loads(self.args)


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order; comments dropped, backslash continuations joined."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # a comment, also between continuation lines
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def base_image(instructions: list[Instruction]) -> str:
    """The FROM image, with ``${ARG}`` replaced by the ARG's default."""
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name] = value
        if ins.keyword == "FROM":
            return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], ins.args.split()[0])
    raise AssertionError("no FROM")


def env_settings(instructions: list[Instruction]) -> dict[str, str]:
    """Every ENV key=value the image sets."""
    settings = {}
    for ins in only(instructions, "ENV"):
        for token in shlex.split(ins.args):
            key, _, value = token.partition("=")
            settings[key] = value
    return settings


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, absolute destination) of every COPY, destinations resolved against WORKDIR."""
    result, workdir = [], "/"
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir = ins.args
        elif ins.keyword == "COPY":
            parts = [p for p in shlex.split(ins.args) if not p.startswith("--")]
            dest = parts[-1] if parts[-1].startswith("/") else f"{workdir.rstrip('/')}/{parts[-1]}"
            result.append((parts[:-1], dest))
    return result


def container_file_source(instructions: list[Instruction], container_path: str) -> Path | None:
    """The repository file a COPY puts at ``container_path``, if any."""
    for sources, dest in copies(instructions):
        for source in sources:
            if dest.endswith("/"):
                target = dest + Path(source.rstrip("/")).name if not source.endswith("/") else dest
                if source.endswith("/") and container_path.startswith(dest):
                    candidate = REPO / source / container_path[len(dest):]
                    if candidate.is_file():
                        return candidate
                elif target == container_path:
                    return REPO / source
            elif dest == container_path:
                return REPO / source
    return None


def run_segments(instructions: list[Instruction]) -> list[list[str]]:
    """Every command of every RUN, split at ``&&``, as argv lists."""
    segments = []
    for ins in only(instructions, "RUN"):
        for part in ins.args.split("&&"):
            segments.append(shlex.split(part.strip().strip("()")))
    return segments


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, list[Instruction]]:
    return request.param, parse_dockerfile(DOCKERFILES[request.param])


# --- Helpers ----------------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def run_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT_S, env=env,
    )


@functools.cache
def help_text(*program: str) -> subprocess.CompletedProcess[str]:
    """``python <program> --help`` without maester settings in the environment (cached: imports are slow)."""
    return run_python(*program, "--help", env=clean_env())


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without maester settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not ENV_NAME.fullmatch(k)}
    env.update(extra)
    return env


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("maester_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def documented_env() -> tuple[dict[str, str], dict[str, str]]:
    """(.env.example's active assignments, its commented-out ``# NAME=default`` lines)."""
    active, defaults = {}, {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            active[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=(.*)", line):
            defaults[m.group(1)] = m.group(2)
    return active, defaults


def variables_read_by_code() -> set[str]:
    """Every ``MAESTER_*``/``DISCORD_TOKEN`` string literal in the trainer and bot packages."""
    names = set()
    for package in ("trainer", "bot"):
        for path in (REPO / package).rglob("*.py"):
            names |= set(re.findall(r"[\"'](MAESTER_[A-Z0-9_]+|DISCORD_TOKEN)[\"']", path.read_text()))
    return names


def pip_install_command(argv: list[str]) -> list[str] | None:
    """A ``pip install -c ...`` command reduced to its essentials, or None for other commands."""
    if argv[:4] != ["python", "-m", "pip", "install"] or "-c" not in argv:
        return None
    kept = [a for a in argv if a not in ("--quiet", "-q", "--no-cache-dir", "-e")]
    return [re.sub(r"\[.*\]$", "", a) for a in kept]  # ".[dev]" installs the same project as "."


def torch_pin(constraints: Path) -> str:
    pins = re.findall(r"^torch==([\w.+]+)$", constraints.read_text(), flags=re.M)
    assert len(pins) == 1, f"{constraints} must pin torch exactly once"
    return pins[0]


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (Docker's last-match-wins rules)."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.split(r"(\*\*|\*|\?)", pattern)
        ).replace(".*/", "(.*/)?")
        rules.append((re.compile(regex), negate))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, negate in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


# --- Compose file -----------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    """docker-compose.yml validates against the Compose specification's schema, which does reject typos."""
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    document = compose()
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    document["services"]["bot"]["restart_policy"] = "always"  # not a service key
    assert not validator.is_valid(document)


def test_bot_runs_without_the_trainer_and_reads_checkpoints_only() -> None:
    """Plain `up` starts the bot alone; it mounts checkpoints read-only and is health-checked."""
    services = compose()["services"]
    bot = services["bot"]
    assert "profiles" not in bot
    default_services = {name for name, s in services.items() if "profiles" not in s}
    assert default_services == {"bot"}, "services without a profile must run on machines without a GPU"
    assert all(dep.get("required") is False for dep in bot.get("depends_on", {}).values())
    assert "checkpoints:/checkpoints:ro" in bot["volumes"]
    assert f"bot-state:{bot['environment']['MAESTER_STATE_DIR']}" in bot["volumes"], "its state needs rw"
    assert bot["environment"]["MAESTER_CHECKPOINT_DIR"] == "/checkpoints"
    assert bot["env_file"] == ".env"
    assert bot["init"] is True and bot["restart"] == "unless-stopped"
    assert bot["healthcheck"]["test"][:2] == ["CMD", "python"]


def test_bot_stop_grace_period_outlasts_its_own_shutdown_grace() -> None:
    """docker stop waits longer than the bot lets running scenes finish, so none is cut off."""
    from bot.settings import Settings

    grace = compose()["services"]["bot"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > Settings.__dataclass_fields__["shutdown_grace"].default


def test_trainer_stop_grace_period_outlasts_the_job_cancel_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """On `docker stop` the service cancels its training job, which gets its grace period, then exits."""
    from trainer.cli import build_parser

    monkeypatch.delenv("MAESTER_CANCEL_GRACE_S", raising=False)
    cancel_grace = build_parser().parse_args(["serve"]).cancel_grace
    for name in ("trainer", "trainer-cpu", "train", "train-cpu"):
        grace = compose()["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > cancel_grace, name


def test_gpu_trainer_service_reserves_a_gpu_and_stays_on_localhost() -> None:
    """The control service gets the GPU, writes checkpoints, and is published on 127.0.0.1 only."""
    trainer = compose()["services"]["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert trainer["command"] == ["serve"]
    assert trainer["build"]["dockerfile"] == "Dockerfile-GPU"
    assert "checkpoints:/checkpoints" in trainer["volumes"]
    assert "hf-cache:/cache/huggingface" in trainer["volumes"]
    assert trainer["restart"] == "unless-stopped" and trainer["healthcheck"]["test"][:2] == ["CMD", "python"]
    assert trainer["environment"]["DISCORD_TOKEN"] == "", "the trainer must not receive the bot token"
    for service in compose()["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} would be reachable from other machines"


def test_one_shot_training_and_cpu_variants() -> None:
    """`run --rm train` trains on the GPU; the cpu services train with the slim image on the CPU."""
    services = compose()["services"]
    train = services["train"]
    assert train["command"] == ["train"] and train["restart"] == "no"
    assert train["healthcheck"] == {"disable": True}
    assert "deploy" in train and "checkpoints:/checkpoints" in train["volumes"]
    for name in ("trainer-cpu", "train-cpu"):
        service = services[name]
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["entrypoint"] == ["python", "-m", "trainer"]
        assert service["environment"]["MAESTER_DEVICE"] == "cpu"
        assert "deploy" not in service
    assert "trainer" in services["trainer-cpu"]["networks"]["default"]["aliases"]
    # One-shot jobs have profiles of their own, so `up` with a profile never starts a training run.
    profiles_of = {name: set(s.get("profiles", [])) for name, s in services.items()}
    for one_shot in ("train", "train-cpu"):
        others = set().union(*(p for n, p in profiles_of.items() if n != one_shot))
        assert profiles_of[one_shot].isdisjoint(others)


def test_every_checkpoint_mount_is_where_the_service_looks() -> None:
    """Each service's MAESTER_CHECKPOINT_DIR is the mount point of the checkpoints volume."""
    for name, service in compose()["services"].items():
        mounts = {v.split(":")[1]: v for v in service["volumes"] if v.startswith("checkpoints:")}
        assert list(mounts) == [service["environment"]["MAESTER_CHECKPOINT_DIR"]], name


# --- Dockerfiles ------------------------------------------------------------------------------


def test_images_are_pinned_non_root_and_exec_form(dockerfile: tuple[str, list[Instruction]]) -> None:
    """Exact base tag, a numeric non-root USER before the exec-form ENTRYPOINT, volumes for state."""
    flavour, instructions = dockerfile
    image = base_image(instructions)
    _, _, tag = image.partition(":")
    assert re.fullmatch(r"\d+\.\d+\.\d+-.+", tag), f"{image} is not pinned to an exact version"
    users = only(instructions, "USER")
    assert users and users[-1].args.split(":")[0] not in ("0", "root")
    keywords = [i.keyword for i in instructions]
    assert keywords.index("ENTRYPOINT") > len(keywords) - 1 - keywords[::-1].index("USER")
    entrypoint = only(instructions, "ENTRYPOINT")[-1].exec_form()
    assert entrypoint == ["python", "-m", "trainer" if flavour == "gpu" else "bot"]
    volumes = json.loads(only(instructions, "VOLUME")[-1].args)
    env = env_settings(instructions)
    assert env["MAESTER_CHECKPOINT_DIR"] in volumes and env["HF_HOME"] in volumes
    assert env["PYTHONUNBUFFERED"] == "1" and env["PIP_NO_CACHE_DIR"] == "1"
    # No secret is baked in: no token-like variable, no .env copied.
    declared = set(env) | {i.args.split("=")[0] for i in only(instructions, "ARG")}
    assert not [n for n in declared if "TOKEN" in n or "SECRET" in n or "PASSWORD" in n]
    assert not any(".env" in src for sources, _ in copies(instructions) for src in sources)


def test_gpu_image_defaults_to_one_shot_training() -> None:
    """`docker run maester-trainer` trains once; the health check is one that tolerates that."""
    instructions = parse_dockerfile(DOCKERFILES["gpu"])
    assert only(instructions, "CMD")[-1].exec_form() == ["train"]
    check = only(instructions, "HEALTHCHECK")[-1].args
    assert check.split("CMD", 1)[1].strip().startswith("[")
    assert json.loads(check.split("CMD", 1)[1])[-1] == "trainer"


def test_every_copied_file_exists_and_is_in_the_build_context(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    """A COPY of a missing or .dockerignored file would fail the build."""
    _, instructions = dockerfile
    for sources, _dest in copies(instructions):
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            files = [REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*.py")
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                assert not dockerignore_excludes(relative), f"{relative} is excluded by .dockerignore"


def test_healthcheck_script_is_copied_where_the_checks_run_it(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    """The path in HEALTHCHECK (and in compose's checks) is the copied docker/healthcheck.py."""
    _, instructions = dockerfile
    check = json.loads(only(instructions, "HEALTHCHECK")[-1].args.split("CMD", 1)[1])
    assert check[0] == "python"
    assert container_file_source(instructions, check[1]) == HEALTHCHECK
    for service in compose()["services"].values():
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[2] == check[1]


def test_dependencies_install_before_the_source_is_copied(
    dockerfile: tuple[str, list[Instruction]],
) -> None:
    """Editing code reuses the dependency layer: the constrained install precedes COPY trainer/."""
    _, instructions = dockerfile
    install = next(
        n for n, i in enumerate(instructions)
        if i.keyword == "RUN" and "pip install -c" in i.args
    )
    source = next(n for n, i in enumerate(instructions) if i.keyword == "COPY" and "trainer/" in i.args)
    assert install < source
    copied_before = {s for sources, _ in copies(instructions[:install]) for s in sources}
    assert "pyproject.toml" in copied_before


def test_images_and_ci_install_with_the_same_command() -> None:
    """.ci/run and both images run `python -m pip install -c <constraints> .`, one pin per flavour."""
    ci_lines = [shlex.split(line, comments=True) for line in CI_RUN.read_text().splitlines()]
    ci = [c for argv in ci_lines if (c := pip_install_command(argv))]
    assert len(ci) == 1, ".ci/run should install the project with exactly one constrained pip command"
    images = {}
    for flavour, path in DOCKERFILES.items():
        found = [c for argv in run_segments(parse_dockerfile(path)) if (c := pip_install_command(argv))]
        assert len(found) == 1, path.name
        images[flavour] = found[0]
    assert images["cpu"] == ci[0], "the CPU image must install exactly as CI does"
    constraint = images["gpu"][images["gpu"].index("-c") + 1]
    assert images["gpu"] == [*ci[0][:5], constraint, *ci[0][6:]]
    # The GPU image keeps its base image's CUDA torch; CI and both images test the same torch release.
    gpu_torch = base_image(parse_dockerfile(DOCKERFILES["gpu"])).split(":")[1].split("-")[0]
    assert torch_pin(REPO / constraint) == gpu_torch, f"{constraint} must pin the base image's torch"
    ci_torch = torch_pin(REPO / ci[0][ci[0].index("-c") + 1]).split("+")[0]
    assert ci_torch == gpu_torch, f"CI tests torch {ci_torch} but the GPU image ships {gpu_torch}"


# --- Commands the images run ------------------------------------------------------------------


def image_commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every program the images and compose services start."""
    entrypoints = {}
    for path in DOCKERFILES.values():
        instructions = parse_dockerfile(path)
        entrypoint = only(instructions, "ENTRYPOINT")[-1].exec_form()
        cmd = only(instructions, "CMD")
        yield f"{path.name} ENTRYPOINT", entrypoint
        yield path.name, entrypoint + (cmd[-1].exec_form() if cmd else [])
        entrypoints[path.name] = entrypoint
    for name, service in compose()["services"].items():
        entrypoint = service.get("entrypoint", entrypoints[service["build"]["dockerfile"]])
        yield f"service {name}", entrypoint + service.get("command", [])
    for path in DOCKERFILES.values():
        for argv in run_segments(parse_dockerfile(path)):
            if argv[:3] == ["python", "-m", "trainer"]:
                yield f"{path.name} RUN", argv


def distinct_commands() -> dict[tuple[str, ...], list[str]]:
    """Each distinct argv with the places that run it (several services share one)."""
    commands: dict[tuple[str, ...], list[str]] = {}
    for where, argv in image_commands():
        commands.setdefault(tuple(argv), []).append(where)
    return commands


@pytest.mark.parametrize("argv,where", list(distinct_commands().items()), ids=lambda v: " ".join(v))
def test_every_command_the_images_run_exists(argv: tuple[str, ...], where: list[str]) -> None:
    """Each entrypoint + command starts (as --help), and every flag it passes is one the command has."""
    assert argv[0] == "python", where
    flags = [n for n, a in enumerate(argv) if a.startswith("--")]
    program = argv[1 : flags[0] if flags else len(argv)]
    result = help_text(*program)
    assert result.returncode == 0, f"{where}: {' '.join(argv)} --help failed:\n{result.stderr}"
    for flag in (a for a in argv if a.startswith("--")):
        assert flag in result.stdout, f"{where}: {flag} is not an option of {' '.join(program)}"


# --- .env.example -----------------------------------------------------------------------------


def test_env_example_lists_exactly_the_variables_the_code_reads() -> None:
    """Every variable the code reads is documented, and every documented one is read."""
    active, defaults = documented_env()
    documented = set(active) | set(defaults)
    read = variables_read_by_code()
    assert sorted(read - documented) == [], "read by the code but missing from .env.example"
    assert sorted(documented - read - COMPOSE_VARIABLES) == [], "in .env.example but read by no code"
    assert set(active) & set(defaults) == set(), "a variable is both set and shown as a default"


def test_variables_set_by_the_images_and_compose_are_read_by_the_code() -> None:
    """A misspelt MAESTER_* in a Dockerfile or the compose file would be silently ignored."""
    read = variables_read_by_code()
    names = set()
    for path in DOCKERFILES.values():
        names |= {n for n in env_settings(parse_dockerfile(path)) if ENV_NAME.fullmatch(n)}
        names |= {i.args.split("=")[0] for i in only(parse_dockerfile(path), "ARG") if ENV_NAME.match(i.args)}
    for service in compose()["services"].values():
        names |= {n for n in service.get("environment", {}) if ENV_NAME.fullmatch(n)}
    assert names and sorted(names - read) == []


def test_env_example_placeholders_are_obviously_fake() -> None:
    """Secrets in the example are placeholders a bot cannot log in with."""
    active, _ = documented_env()
    for name in ("DISCORD_TOKEN", "MAESTER_TRAINER_TOKEN"):
        assert "replace-me" in active[name]


def test_bot_defaults_shown_in_env_example_are_the_real_defaults() -> None:
    """Uncommenting a `# NAME=default` line of a bot setting changes nothing."""
    from bot.settings import Settings

    _, defaults = documented_env()
    base = {"DISCORD_TOKEN": "x"}
    documented = Settings.from_env({**base, **defaults}, dotenv=None)
    assert documented == Settings.from_env(base, dotenv=None)


def test_trainer_defaults_shown_in_env_example_are_the_real_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncommenting a `# NAME=default` line of a trainer setting changes no subcommand's arguments."""
    from trainer.cli import build_parser

    _, defaults = documented_env()
    for name in list(os.environ):
        if ENV_NAME.fullmatch(name):
            monkeypatch.delenv(name)
    subcommands = ("download-corpus", "prepare", "train", "serve")
    plain = {c: vars(build_parser().parse_args([c])) for c in subcommands}
    for name, value in defaults.items():
        monkeypatch.setenv(name, value)
    documented = {c: vars(build_parser().parse_args([c])) for c in subcommands}
    for command in subcommands:
        plain[command].pop("func"), documented[command].pop("func")
        assert documented[command] == plain[command], command


# --- .dockerignore ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [".env", ".env.local", "bot/.env", "checkpoints/CURRENT", "checkpoints/runs/a/model.safetensors",
     ".git/config", ".venv/bin/python", "data/corpus/x.csv", "trainer/__pycache__/cli.cpython-312.pyc",
     ".cache/huggingface/hub", "tests/test_deployment.py"],
)
def test_dockerignore_keeps_secrets_and_state_out(path: str) -> None:
    assert dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "trainer/cli.py", "bot/settings.py", "docker/healthcheck.py",
             "docker/constraints-cuda.txt", ".ci/constraints-cpu.txt"],
)
def test_dockerignore_keeps_what_the_builds_need(path: str) -> None:
    assert not dockerignore_excludes(path)


# --- Health check -----------------------------------------------------------------------------


def test_healthcheck_targets_the_configured_address() -> None:
    """Wildcard binds are checked on loopback; ports come from the same variables the servers read."""
    hc = load_healthcheck()
    bot, trainer = hc.TARGETS["bot"], hc.TARGETS["trainer"]
    assert hc.target_url(bot, {}) == "http://127.0.0.1:8080/healthz"
    assert hc.target_url(bot, {"MAESTER_HEALTH_HOST": "0.0.0.0", "MAESTER_HEALTH_PORT": "9000"}) == (
        "http://127.0.0.1:9000/healthz"
    )
    assert hc.target_url(trainer, {"MAESTER_SERVICE_HOST": "::1", "MAESTER_SERVICE_PORT": " "}) == (
        "http://[::1]:8765/healthz"
    )


def test_healthcheck_defaults_match_the_servers_defaults() -> None:
    """With no variables set, the check probes the ports the bot and trainer service listen on."""
    from bot.settings import Settings
    from trainer.cli import build_parser

    hc = load_healthcheck()
    assert hc.TARGETS["bot"].default_port == Settings.__dataclass_fields__["health_port"].default
    env_backup = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MAESTER_SERVICE_")}
    try:
        assert hc.TARGETS["trainer"].default_port == build_parser().parse_args(["serve"]).port
    finally:
        os.environ.update(env_backup)


def test_healthcheck_finds_the_serve_process(tmp_path: Path) -> None:
    """Only `python -m trainer serve` counts as the service; the check's own process does not."""
    hc = load_healthcheck()
    proc = tmp_path / "proc"
    for pid, argv in {"1": ["python", "-m", "trainer", "train"], "7": ["python", "healthcheck.py", "trainer"],
                      "self": ["python", "-m", "trainer", "serve"]}.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    assert not hc.service_running(hc.TARGETS["trainer"], proc)
    (proc / "42").mkdir()
    (proc / "42" / "cmdline").write_bytes(b"/opt/conda/bin/python\0-m\0trainer\0serve\0--port\01\0")
    assert hc.service_running(hc.TARGETS["trainer"], proc)
    assert hc.service_running(hc.TARGETS["bot"], tmp_path / "missing")  # the bot is always checked


@pytest.fixture
async def health_server() -> Iterator[tuple[int, dict]]:
    """A loopback /healthz whose status the test sets."""
    state = {"status": 200}

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": state["status"] == 200}, status=state["status"])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield port, state
    await runner.cleanup()


async def run_check(*args: str, **env: str) -> int:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTHCHECK), *args, env=clean_env(**env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.wait_for(process.communicate(), SUBPROCESS_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode


async def test_healthcheck_passes_on_200_and_fails_otherwise(health_server: tuple[int, dict]) -> None:
    """Exit 0 for 200; 1 for 503 or a closed port (Docker's healthy/unhealthy)."""
    port, state = health_server
    env = {"MAESTER_HEALTH_HOST": "0.0.0.0", "MAESTER_HEALTH_PORT": str(port)}
    assert await run_check("bot", **env) == 0
    state["status"] = 503
    assert await run_check("bot", **env) == 1
    assert await run_check("--url", f"http://127.0.0.1:{port}/healthz") == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert await run_check("bot", MAESTER_HEALTH_HOST="127.0.0.1", MAESTER_HEALTH_PORT=str(closed)) == 1


async def test_trainer_check_passes_for_one_shot_jobs(tmp_path: Path) -> None:
    """Without a serve process (a training run), the trainer image's check passes without probing."""
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "cmdline").write_bytes(b"python\0-m\0trainer\0train\0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {"MAESTER_SERVICE_PORT": str(closed)}
    assert await run_check("trainer", "--proc", str(tmp_path), **env) == 0


def test_healthcheck_passes_against_the_real_trainer_service(tmp_path: Path) -> None:
    """`trainer serve` started as in the image is found in /proc and answers the check."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = clean_env(
        MAESTER_TRAINER_TOKEN="test-token-not-secret", MAESTER_SERVICE_HOST="127.0.0.1",
        MAESTER_SERVICE_PORT=str(port), MAESTER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "trainer", "serve"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(
                [sys.executable, str(HEALTHCHECK), "trainer"], env=env, capture_output=True, text=True,
                timeout=SUBPROCESS_TIMEOUT_S,
            )
            if result.returncode == 0 and "answered 200" in result.stdout:
                break
            assert server.poll() is None, f"trainer serve exited: {server.stderr.read()}"
            assert time.monotonic() < deadline, result.stdout
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- docs/deployment.md -----------------------------------------------------------------------

DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
RUN_OPTIONS_WITH_VALUE = {"--entrypoint", "-e", "--env", "-v", "--volume", "-u", "--user", "--name"}


def documented_compose_runs() -> list[tuple[str, list[str]]]:
    """(service, arguments) of every `docker compose run` in the guide's code blocks."""
    runs, in_code = [], False
    text = DEPLOYMENT_DOC.read_text().replace("\\\n", " ")  # join continued shell lines
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not (in_code and line.startswith("docker compose run ")):
            continue
        words = shlex.split(line, comments=True)
        rest, overridden = words[3:], False
        while rest[0].startswith("-"):
            option = rest.pop(0)
            overridden |= option == "--entrypoint"
            if option in RUN_OPTIONS_WITH_VALUE:
                rest.pop(0)
        if not overridden:
            runs.append((rest[0], rest[1:]))
    return runs


def test_guide_runs_only_services_and_flags_that_exist() -> None:
    """Each `docker compose run SERVICE ARGS` in the guide names a service and options it accepts."""
    services = compose()["services"]
    entrypoints = {
        path.name: only(parse_dockerfile(path), "ENTRYPOINT")[-1].exec_form() for path in DOCKERFILES.values()
    }
    runs = documented_compose_runs()
    assert {service for service, _ in runs} >= {"train", "train-cpu", "bot"}
    for service, args in runs:
        assert service in services, f"the guide runs an unknown service {service!r}"
        if not args or args == ["--help"]:
            continue
        spec = services[service]
        argv = spec.get("entrypoint", entrypoints[spec["build"]["dockerfile"]]) + args
        flags = [n for n, a in enumerate(argv) if a.startswith("--")]
        result = help_text(*argv[1 : flags[0] if flags else len(argv)])
        assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"
        for flag in (argv[n] for n in flags):
            assert flag in result.stdout, f"the guide passes {flag}, which {' '.join(argv[:3])} lacks"


def test_guide_and_env_example_name_real_profiles() -> None:
    """COMPOSE_PROFILES values suggested to users are profiles the compose file defines."""
    profiles = {p for s in compose()["services"].values() for p in s.get("profiles", [])}
    text = DEPLOYMENT_DOC.read_text() + ENV_EXAMPLE.read_text()
    suggested = set(re.findall(r"COMPOSE_PROFILES=(\w[\w-]*)", text))
    suggested |= set(re.findall(r"`(\w[\w-]*)` to run the trainer", text))
    assert suggested and suggested <= profiles
    assert {"gpu", "cpu", "train", "train-cpu"} <= profiles


def test_guide_invite_link_asks_for_the_permissions_it_lists() -> None:
    """The permission integer in the invite link is the sum of the permissions the guide explains."""
    import discord

    wanted = discord.Permissions(
        view_channel=True, send_messages=True, embed_links=True, attach_files=True, read_message_history=True
    )
    text = DEPLOYMENT_DOC.read_text()
    link = re.search(r"https://discord\.com/oauth2/authorize\?\S+", text)
    assert link and f"permissions={wanted.value}" in link.group(0)
    assert "scope=bot+applications.commands" in link.group(0)
    listed = re.findall(r"^\| [A-Z][\w ]+ \| [^|]+ \| (\d+) \|$", text, flags=re.M)
    assert sum(map(int, listed)) == wanted.value and len(listed) == 5


def test_published_ports_are_the_ports_the_services_listen_on() -> None:
    """Compose fixes each server's port, so the published port, the health check and .env agree."""
    port_variables = {"bot": "MAESTER_HEALTH_PORT", "trainer": "MAESTER_SERVICE_PORT",
                      "trainer-cpu": "MAESTER_SERVICE_PORT"}
    services = compose()["services"]
    for name, variable in port_variables.items():
        listening = services[name]["environment"][variable]
        assert [p.rsplit(":", 1)[1] for p in services[name]["ports"]] == [listening], name
    active, _ = documented_env()
    service_port = services["trainer"]["environment"]["MAESTER_SERVICE_PORT"]
    assert active["MAESTER_TRAINER_URL"] == f"http://trainer:{service_port}"
