"""Container health check: exit 0 when this container's service answers ``GET /healthz`` with 200.

Slim images carry no curl, so this uses the standard library only. Usage::

    python healthcheck.py bot        # the Discord bot's health server (MAESTER_HEALTH_HOST/PORT)
    python healthcheck.py trainer    # the trainer control service (MAESTER_SERVICE_HOST/PORT)
    python healthcheck.py --url URL  # any URL, for debugging

The trainer image also runs one-shot jobs (``train``, ``prepare``) that have no server. Its check
therefore only probes the service while a ``python -m trainer serve`` process runs in the container,
and passes otherwise, so a long training run is never marked unhealthy. Exit status follows Docker's
HEALTHCHECK contract: 0 healthy, 1 unhealthy.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HEALTHY, UNHEALTHY = 0, 1
# Docker kills a check after its --timeout (5 s in our images); answer before that with a clear reason.
REQUEST_TIMEOUT_S = 4.0
# Addresses a server binds to mean "every interface"; the check then talks to loopback.
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
# The service is local: an HTTP(S)_PROXY set for the container's downloads must not carry the check.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Target:
    """Where one of maester's servers listens, and which process runs it."""

    host_env: str
    port_env: str
    default_port: int
    module: str
    subcommand: str | None  # only probe while `python -m <module> <subcommand>` runs; None: always


# Default ports match the servers' own defaults, so a container without the variables still checks
# the right port (a test compares them with the code).
TARGETS = {
    "bot": Target("MAESTER_HEALTH_HOST", "MAESTER_HEALTH_PORT", 8080, "bot", None),
    "trainer": Target("MAESTER_SERVICE_HOST", "MAESTER_SERVICE_PORT", 8765, "trainer", "serve"),
}


def target_url(target: Target, environ: dict[str, str]) -> str:
    """The /healthz URL of ``target`` as configured by ``environ``."""
    host = environ.get(target.host_env, "").strip()
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address needs brackets in a URL
    port = environ.get(target.port_env, "").strip() or str(target.default_port)
    return f"http://{host}:{port}/healthz"


def process_argvs(proc: Path = Path("/proc")) -> Iterator[list[str]]:
    """The command line of every process visible in ``proc`` (skipping ones that exit meanwhile)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield raw.rstrip(b"\0").decode(errors="replace").split("\0")


def runs_module_command(argv: Sequence[str], module: str, subcommand: str) -> bool:
    """Whether ``argv`` is ``python ... -m <module> <subcommand> ...``."""
    return any(
        argv[i] == "-m" and argv[i + 1] == module and argv[i + 2] == subcommand for i in range(len(argv) - 2)
    )


def service_running(target: Target, proc: Path = Path("/proc")) -> bool:
    """Whether this container runs ``target``'s server (always true for targets without a subcommand)."""
    if target.subcommand is None:
        return True
    return any(runs_module_command(argv, target.module, target.subcommand) for argv in process_argvs(proc))


def probe(url: str, timeout: float = REQUEST_TIMEOUT_S) -> tuple[bool, str]:
    """GET ``url``; healthy only on HTTP 200. Returns (healthy, one-line reason)."""
    try:
        with NO_PROXY_OPENER.open(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} is unreachable: {reason}"
    if status == 200:
        return True, f"{url} answered 200"
    return False, f"{url} answered {status}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check and print one line saying why it passed or failed."""
    parser = argparse.ArgumentParser(description="Exit 0 when a maester service answers GET /healthz.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("service", nargs="?", choices=sorted(TARGETS), help="which service to check")
    group.add_argument("--url", help="check this URL instead of a service's configured address")
    parser.add_argument("--proc", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)

    if args.url:
        url = args.url
    else:
        target = TARGETS[args.service]
        if not service_running(target, args.proc):
            print(f"healthy: no `{target.module} {target.subcommand}` process, nothing to check")
            return HEALTHY
        url = target_url(target, dict(os.environ))
    healthy, reason = probe(url)
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return HEALTHY if healthy else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
