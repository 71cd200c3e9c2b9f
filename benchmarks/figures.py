"""Reliability and security figures: one table of load held, faults survived and bad inputs handled.

It runs ``benchmarks/load.py`` (the real bot through the loopback Discord) and the fault, bad-input and
security tests with pytest, then prints a Markdown table (the one in docs/reliability.md). A test that is
marked as a known gap (``xfail``) is shown as such, never as survived.

Examples::

    python benchmarks/figures.py                    # everything (a few minutes on two CPU cores)
    python benchmarks/figures.py --quick            # a smaller load round (50 requests, 20 users, 20 s)
    python benchmarks/figures.py --skip-load        # only the tests
    python benchmarks/figures.py --load-args "--requests 400 --users 100"

The exit status is 1 when a request was lost or a test failed outright.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Each fault, and the test (or tests, by node-id prefix) that makes it happen for real.
FAULTS: list[tuple[str, str]] = [
    ("trainer SIGKILLed in a step, mid-checkpoint and mid-publish; --resume finishes",
     "tests/test_faults.py::test_trainer_killed_in_a_step_while_checkpointing_and_while_publishing"),
    ("trainer job SIGKILLed under the job manager (as by the OOM killer)",
     "tests/test_jobs.py::test_a_killed_trainer_is_interrupted_and_resumes_from_its_checkpoint"),
    ("crash at each step of publishing: CURRENT stays on a complete run", "tests/test_publish.py::"),
    ("crash between the run's rename and the CURRENT switch; --resume publishes",
     "tests/test_faults.py::test_resume_after_a_crash_between_the_rename_and_current"),
    ("disk full while checkpointing: last checkpoint and served model intact, resumable",
     "tests/test_faults.py::test_disk_full_while_checkpointing_keeps_the_last_checkpoint_and_the_served_model"),
    ("disk full while publishing: served model intact",
     "tests/test_faults.py::test_disk_full_while_publishing_keeps_the_served_model"),
    ("disk full reported as one clear line by the CLI",
     "tests/test_faults.py::test_disk_full_is_one_clear_line_from_the_cli"),
    ("trainer service SIGKILLed mid-job and restarted: interrupted, resumable",
     "tests/test_service.py::test_a_job_cut_off_by_a_service_restart_is_interrupted_and_resumes"),
    ("corrupt run in CURRENT at start-up: one clear error",
     "tests/test_faults.py::test_bot_refuses_to_start_on_a_corrupt_current_run_with_one_sentence"),
    ("CURRENT names a run without a manifest: one clear error",
     "tests/test_faults.py::test_check_config_names_a_run_without_a_manifest"),
    ("broken run published while serving: refused, old model keeps serving",
     "tests/test_model_watcher.py::test_a_broken_run_is_refused_and_the_old_model_keeps_serving"),
    ("new run swapped in while scenes are written: all finish",
     "tests/test_model_watcher.py::test_requests_in_flight_finish_while_a_run_is_swapped_in"),
    ("gateway dropped with scenes in flight: every scene answered, session resumed",
     "tests/test_faults.py::test_gateway_dropped_with_scenes_in_flight"),
    ("REST 429, global 429, 500, 502, 503, 504 during scenes: retried, none lost",
     "tests/test_faults.py::test_rest_errors_are_retried_and_no_scene_is_lost"),
    ("interaction tokens expire before queued scenes end: scenes still reach the channel",
     "tests/test_faults.py::test_scenes_outliving_their_interaction_token_still_reach_the_channel"),
    ("bot restarted: same run served, answers at once",
     "tests/test_faults.py::test_bot_restart_keeps_serving_the_published_run"),
]
SECURITY = "tests/test_security.py"
BAD_INPUT = "tests/test_bad_input.py"


def run_load(args: argparse.Namespace, workdir: Path) -> dict[str, Any] | None:
    """Run benchmarks/load.py and return its figures (None when skipped)."""
    if args.skip_load:
        return None
    out = workdir / "load.json"
    extra = ["--requests", "50", "--users", "20", "--window", "20", "--rounds", "2"] if args.quick else []
    command = [sys.executable, str(REPO / "benchmarks" / "load.py"), *extra, *shlex.split(args.load_args),
               "--json", str(out)]
    print("$ " + " ".join(shlex.quote(c) for c in command[1:]), file=sys.stderr)
    subprocess.run(command, cwd=REPO, check=False)
    return json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None


def run_tests(workdir: Path) -> dict[str, str]:
    """Run the fault, bad-input and security tests; node id -> passed / known gap / failed / skipped."""
    report = workdir / "junit.xml"
    files = sorted({node.split("::")[0] for _, node in FAULTS} | {SECURITY, BAD_INPUT})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *files]
    print("$ " + " ".join(command[1:]), file=sys.stderr)
    subprocess.run(command, cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        node = f"{module}.py::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif (skipped := case.find("skipped")) is not None:
            outcome = "known gap" if "xfail" in (skipped.get("type", "") + skipped.get("message", "")) \
                else "skipped"
        else:
            outcome = "passed"
        outcomes[node] = outcome
    return outcomes


def summarise(outcomes: dict[str, str], prefix: str) -> str:
    """The outcome of one fault: every matching test passed, or what did not."""
    found = Counter(outcome for node, outcome in outcomes.items() if node.startswith(prefix))
    total = sum(found.values())
    if not total:
        return "not run"
    if found["passed"] == total:
        return "survived" if total == 1 else f"survived ({total}/{total})"
    parts = [f"{found[k]} {k}" for k in ("passed", "known gap", "failed", "skipped") if found[k]]
    if found["failed"]:
        return "FAILED: " + ", ".join(parts)
    return ("known gap" if total == found["known gap"] else ", ".join(parts)) + " (see Known gaps)"


def table(load: dict[str, Any] | None, outcomes: dict[str, str]) -> str:
    """The figures as one Markdown table."""
    rows = [("Area", "What", "Result")]
    if load is not None:
        refused = ", ".join(f"{k} {v}" for k, v in load["refused"].items()) or "none"
        rss = load["rss_mb"]
        rows += [
            ("Load", f"/scene requests from users over a window ({load['rounds']} rounds)",
             f"{load['requests']} from {load['users']} users in {load['window_s']:.0f} s"),
            ("Load", "answered / refused / failed / lost",
             f"{load['answered']} / {load['refused_total']} ({refused}) / {load['failed']} / {load['lost']}"),
            ("Load", "end-to-end latency p50 / p95 / max (answered)",
             " / ".join(f"{load[k]:.2f} s" for k in ("latency_p50_s", "latency_p95_s", "latency_max_s"))),
            ("Load", "acknowledgement p95 (Discord allows 3 s)", f"{load['ack_p95_s'] * 1000:.0f} ms"),
            ("Load", "event-loop lag p50 / p99 / max",
             " / ".join(f"{load[k]:.1f}" for k in ("loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms"))
             + " ms"),
            ("Load", "RSS after each round; growth first to last",
             f"{' → '.join(f'{v:.0f}' for v in rss)} MiB; {load['rss_growth_mb']:+.1f} MiB"),
            ("Load", "unhandled exceptions / errors logged / token in logs / spec violations",
             f"{load['unhandled_exceptions']} / {load['errors_logged']} / {load['token_leaks']} / "
             f"{load['spec_violations']}"),
        ]
    for label, node in FAULTS:
        rows.append(("Fault", label, summarise(outcomes, node)))
    for area, prefix in (("Bad input", BAD_INPUT), ("Security", SECURITY)):
        found = Counter(o for n, o in outcomes.items() if n.startswith(prefix) and "catalogue" not in n)
        what = "inputs tried (table rows)" if area == "Bad input" else "checks"
        result = f"{sum(found.values())}: {found['passed']} handled" if area == "Bad input" \
            else f"{sum(found.values())}: {found['passed']} passed"
        if found["known gap"]:
            result += f", {found['known gap']} known gap{'s' if found['known gap'] > 1 else ''}"
        if found["failed"]:
            result += f", {found['failed']} FAILED"
        rows.append((area, what, result))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smaller load run (50 requests, 20 users, 20 s)")
    parser.add_argument("--skip-load", action="store_true", help="run only the tests")
    parser.add_argument("--load-args", default="", help="extra flags for benchmarks/load.py, quoted")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure, run the tests, print the table."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="maester-figures-") as tmp:
        load = run_load(args, Path(tmp))
        outcomes = run_tests(Path(tmp))
    print(table(load, outcomes))
    lost = load is not None and (load["lost"] or load["unhandled_exceptions"] or load["token_leaks"])
    return 1 if lost or "failed" in outcomes.values() else 0


if __name__ == "__main__":
    sys.exit(main())
