"""Load test: many Discord users asking for scenes at once, against the real bot on a loopback Discord.

The real :class:`bot.client.MaesterBot` with its real engine serves a tiny trained model (built locally in
a few seconds) and talks to the loopback Discord stand-in over real HTTP and websocket connections. Users
invoke ``/scene`` at random moments spread over ``--window`` seconds, in ``--rounds`` equal rounds. Every
request must end answered (a finished scene) or clearly refused (cooldown, queue full); one that does
neither within ``--timeout`` is *lost*. The script prints:

- requests, users, answered, refused (by reason), failed, lost;
- end-to-end latency p50/p95/max (invoke to the finished scene) and time to acknowledgement;
- event-loop lag p50/p99/max (a 10 ms tick on the bot's loop: how late it fires);
- errors logged and unhandled exceptions (both must be 0), Discord spec violations, token leaks;
- resident memory after each round and its growth from the first round to the last.

Examples::

    python benchmarks/load.py                                  # 200 requests, 50 users, 60 s, 4 rounds
    python benchmarks/load.py --requests 400 --users 100 --window 30 --cooldown 0
    python benchmarks/load.py --burst --queue-size 8           # everyone at once: queue-full refusals
    python benchmarks/load.py --json load.json                 # also write the figures as JSON

Loopback only: nothing leaves 127.0.0.1. The exit status is 1 when a request was lost or an exception
went unhandled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tests.bot_harness import LoopLagMonitor, running_bot  # noqa: E402
from tests.fakediscord import FakeDiscord, Interaction  # noqa: E402
from tests.tiny import TINY_SPEAKERS  # noqa: E402

# Token-shaped but fake; the run checks that it never shows up in a log line.
LOAD_TOKEN = "MTAxMDEwMTAxMDEwMTAxMDEw.GlOaD1.load-test-token-must-never-be-logged-42"
SETTINGS = ("The courtyard of Winterfell", "Castle Black, at night", "King's Landing", None)


@dataclass
class LoadFigures:
    """What one load run measured."""

    requests: int = 0
    users: int = 0
    window_s: float = 0.0
    rounds: int = 0
    answered: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # answered with an error sentence (timeout, generation error)
    lost: int = 0
    latency_p50_s: float = 0.0
    latency_p95_s: float = 0.0
    latency_max_s: float = 0.0
    ack_p95_s: float = 0.0
    loop_lag_p50_ms: float = 0.0
    loop_lag_p99_ms: float = 0.0
    loop_lag_max_ms: float = 0.0
    errors_logged: int = 0
    unhandled_exceptions: int = 0
    spec_violations: int = 0
    token_leaks: int = 0
    rss_mb: list[float] = field(default_factory=list)
    rss_growth_mb: float = 0.0
    wall_s: float = 0.0

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing unhandled, nothing leaked."""
        return not (self.lost or self.unhandled_exceptions or self.token_leaks or self.errors_logged)


class _Capture(logging.Handler):
    """Keeps every formatted log line of the run, to count errors and search for the token."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.errors = 0
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        if record.levelno >= logging.ERROR and not record.name.startswith("fakediscord"):
            self.errors += 1


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def classify(inter: Interaction) -> str:
    """answered / refused:<reason> / failed / lost, from what the user would see."""
    if inter.response_type == 4:  # answered straight away: a private refusal
        text = (inter.original.content if inter.original else "").lower()
        if "cooldown" in text:
            return "refused:cooldown"
        if "busy" in text:
            return "refused:queue full"
        if "shutting down" in text or "swapped" in text:
            return "refused:shutting down"
        return "refused:other"
    original = inter.original
    if original is not None and original.embeds:
        return "answered"
    if original is not None and original.content.startswith(("This scene", "Something went wrong")):
        return "failed"
    if inter.followups and all(m.ephemeral for m in inter.followups):
        return "refused:other"
    return "lost"


def _finished(inter: Interaction) -> bool:
    return classify(inter) != "lost"


async def _one_request(
    fake: FakeDiscord, user: Any, delay: float, rng: random.Random, timeout: float
) -> tuple[str, float, float | None]:
    """Wait ``delay``, invoke /scene as ``user``; (outcome, seconds to the end, seconds to the ack)."""
    await asyncio.sleep(delay)
    names = rng.sample(TINY_SPEAKERS, rng.randint(1, 3))
    options: dict[str, Any] = {"characters": ", ".join(names), "length": rng.choice(["short", "medium"])}
    setting = rng.choice(SETTINGS)
    if setting:
        options["setting"] = setting
    loop = asyncio.get_running_loop()
    started = loop.time()
    inter = await fake.invoke("scene", options, user=user)
    try:
        await inter.wait_done(_finished, timeout=timeout)
    except TimeoutError:
        return "lost", loop.time() - started, None
    ack = (inter.acked_at - inter.created_at) if inter.acked_at is not None else None
    return classify(inter), loop.time() - started, ack


async def run_load(args: argparse.Namespace, workdir: Path) -> LoadFigures:
    """Start the bot on a loopback Discord, send the requests round by round, and measure."""
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    unhandled: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))

    figures = LoadFigures(requests=args.requests, users=args.users, window_s=args.window, rounds=args.rounds)
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    acks: list[float] = []
    lag = LoopLagMonitor()
    started = time.perf_counter()
    try:
        async with FakeDiscord(token=LOAD_TOKEN) as fake, running_bot(
            workdir, fake,
            cooldown_seconds=args.cooldown,
            queue_size=args.queue_size,
            max_batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            stream_edit_interval=args.edit_interval,
            request_timeout=args.timeout,
            shutdown_grace=5.0,
        ):
            users = [fake.make_user(f"user{i:03d}") for i in range(args.users)]
            lag.start()
            per_round = [args.requests // args.rounds + (1 if r < args.requests % args.rounds else 0)
                         for r in range(args.rounds)]
            round_window = args.window / args.rounds
            issued = 0
            for count in per_round:
                jobs = []
                for _ in range(count):
                    user = users[issued % len(users)]
                    delay = 0.0 if args.burst else rng.uniform(0, round_window)
                    own_rng = random.Random(rng.random())
                    jobs.append(_one_request(fake, user, delay, own_rng, args.timeout + 30))
                    issued += 1
                round_started = loop.time()
                for outcome, seconds, ack in await asyncio.gather(*jobs):
                    outcomes[outcome] += 1
                    if outcome == "answered":
                        latencies.append(seconds)
                    if ack is not None:
                        acks.append(ack)
                # Keep the round's length even when its requests finished early, so rounds compare.
                await asyncio.sleep(max(0.0, round_window - (loop.time() - round_started)))
                figures.rss_mb.append(round(rss_mb(), 1))
            await lag.stop()
            figures.spec_violations = len(fake.spec_violations) + len(fake.unhandled)
    finally:
        await lag.stop()
        root.removeHandler(capture)
        loop.set_exception_handler(None)

    figures.wall_s = time.perf_counter() - started
    figures.answered = outcomes.pop("answered", 0)
    figures.failed = outcomes.pop("failed", 0)
    figures.lost = outcomes.pop("lost", 0)
    figures.refused = {key.split(":", 1)[1]: value for key, value in sorted(outcomes.items())}
    figures.latency_p50_s = percentile(latencies, 50)
    figures.latency_p95_s = percentile(latencies, 95)
    figures.latency_max_s = max(latencies, default=0.0)
    figures.ack_p95_s = percentile(acks, 95)
    figures.loop_lag_p50_ms = percentile(lag.samples, 50) * 1000
    figures.loop_lag_p99_ms = percentile(lag.samples, 99) * 1000
    figures.loop_lag_max_ms = max(lag.samples, default=0.0) * 1000
    figures.errors_logged = capture.errors
    figures.unhandled_exceptions = len(unhandled)
    figures.token_leaks = sum(LOAD_TOKEN in line for line in capture.lines)
    if len(figures.rss_mb) >= 2:
        figures.rss_growth_mb = round(figures.rss_mb[-1] - figures.rss_mb[0], 1)
    if args.verbose:
        for context in unhandled:
            print(f"unhandled: {context.get('message')} {context.get('exception')!r}", file=sys.stderr)
    return figures


def report(f: LoadFigures) -> None:
    """Print the figures."""
    refused = ", ".join(f"{k} {v}" for k, v in f.refused.items()) or "none"
    print(f"load: {f.requests} /scene requests from {f.users} users over {f.window_s:.0f} s "
          f"in {f.rounds} round(s) ({f.wall_s:.0f} s wall)")
    print(f"  answered {f.answered}, refused {f.refused_total} ({refused}), failed {f.failed}, lost {f.lost}")
    print(f"  end-to-end latency (answered): p50 {f.latency_p50_s:.2f} s, p95 {f.latency_p95_s:.2f} s, "
          f"max {f.latency_max_s:.2f} s; acknowledgement p95 {f.ack_p95_s * 1000:.0f} ms")
    print(f"  event-loop lag: p50 {f.loop_lag_p50_ms:.1f} ms, p99 {f.loop_lag_p99_ms:.1f} ms, "
          f"max {f.loop_lag_max_ms:.1f} ms")
    print(f"  errors logged {f.errors_logged}, unhandled exceptions {f.unhandled_exceptions}, "
          f"Discord spec violations {f.spec_violations}, token in logs {f.token_leaks}")
    rounds = " -> ".join(f"{v:.0f}" for v in f.rss_mb)
    print(f"  RSS after each round (MiB): {rounds}; growth first -> last {f.rss_growth_mb:+.1f} MiB")
    print("  result: " + ("OK, nothing lost" if f.ok else "PROBLEM (see above)"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="/scene requests in total")
    parser.add_argument("--users", type=int, default=50, help="distinct users sending them (round robin)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds the requests are spread over")
    parser.add_argument("--rounds", type=int, default=4,
                        help="equal rounds the window is cut into; RSS is read after each")
    parser.add_argument("--burst", action="store_true",
                        help="send each round's requests all at once instead of spread out")
    parser.add_argument("--cooldown", type=float, default=20.0, help="per-user cooldown (the bot's default)")
    parser.add_argument("--queue-size", type=int, default=32, help="engine queue size (the bot's default)")
    parser.add_argument("--batch-size", type=int, default=8, help="engine batch size (the bot's default)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="the long-scene token cap (medium is half, short a quarter)")
    parser.add_argument("--edit-interval", type=float, default=1.0,
                        help="seconds between streamed edits (the bot's default)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="the bot's generation timeout; a request unanswered 30 s past it is lost")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="seed for who asks when")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="print unhandled exceptions")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.users < 1 or args.rounds < 1 or args.window < 0:
        parser.error("--requests, --users and --rounds must be at least 1, --window at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its figures; exit 1 when anything was lost or unhandled."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the figures, not save/load progress bars
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="maester-load-") as tmp:
        figures = asyncio.run(run_load(args, Path(tmp)))
    report(figures)
    if args.json:
        data = asdict(figures) | {"refused_total": figures.refused_total, "ok": figures.ok}
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
