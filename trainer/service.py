"""``python -m trainer serve``: a small authenticated HTTP API that runs training jobs.

The bot's ``/retrain`` talks to this service when the trainer runs in its own (GPU) container. Every
endpoint except ``GET /healthz`` needs ``Authorization: Bearer <MAESTER_TRAINER_TOKEN>``. Bodies and
answers are JSON; an error is ``{"error": "<one sentence>"}`` with a 4xx status.

=======  ========================  ==============================================================
POST     /jobs                     start a job: ``{"steps"|"epochs", "learning_rate", "init", "corpus"}``
GET      /jobs                     job history, newest first: ``{"jobs": [...]}``
GET      /jobs/{id}                one job: state, step, total_steps, loss, val_ppl, tokens_per_s, ...
POST     /jobs/{id}/cancel         SIGTERM the trainer, SIGKILL after the grace period
POST     /jobs/{id}/resume         restart an interrupted/failed/cancelled job from its last checkpoint
GET      /jobs/{id}/events         server-sent events: the job as JSON after every change, then the end
GET      /healthz                  liveness, no token needed
=======  ========================  ==============================================================

One job runs at a time (409 otherwise). The trainer runs as a child process (see :mod:`trainer.jobs`), so
a crash or out-of-memory kill of training leaves the service up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from trainer.envargs import env_flag, is_placeholder
from trainer.errors import UserError
from trainer.jobs import BadJobParams, JobError, JobManager, JobParams

log = logging.getLogger("maester.service")

TOKEN_ENV = "MAESTER_TRAINER_TOKEN"
MAX_BODY_BYTES = 16 * 1024  # job parameters are a few hundred bytes; anything bigger is a mistake
SSE_KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
MANAGER_KEY = web.AppKey("manager", JobManager)
TOKEN_KEY = web.AppKey("token", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, **headers: str) -> web.Response:
    """A JSON error answer carrying one sentence."""
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require the bearer token everywhere except /healthz; compare in constant time."""
    if request.path == "/healthz":
        return await handler(request)
    expected = request.app[TOKEN_KEY]
    if expected:
        header = request.headers.get("Authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not supplied:
            return error_response(401, "This API needs an 'Authorization: Bearer <token>' header.",
                                  **{"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(supplied.strip().encode(), expected.encode()):
            return error_response(401, "The bearer token is wrong.", **{"WWW-Authenticate": "Bearer"})
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals into JSON sentences; never leak a traceback to the client."""
    try:
        return await handler(request)
    except JobError as exc:
        return error_response(exc.status, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, f"{exc.reason}.")
        raise


async def read_json(request: web.Request) -> Any:
    """The request's JSON body (empty means {}), or a 400/413 with one sentence."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJobParams(f"The request body is not valid JSON ({exc}).") from exc
    except RecursionError as exc:  # json.loads recurses once per nesting level
        raise BadJobParams("The request body is nested too deeply to be a job request.") from exc


def requested_by(request: web.Request) -> str | None:
    """Who the client says asked for this (the bot passes the Discord user), for the audit trail."""
    value = request.headers.get("X-Maester-Requested-By", "").strip()
    return value[:200] or None


async def healthz(request: web.Request) -> web.Response:
    """Liveness: always 200 while the service runs."""
    active = request.app[MANAGER_KEY].active()
    return web.json_response({"ok": True, "busy": active is not None})


async def create_job(request: web.Request) -> web.Response:
    """POST /jobs."""
    params = JobParams.from_json(await read_json(request))
    job = await request.app[MANAGER_KEY].start(params, requested_by=requested_by(request))
    log.info("job %s started by %s: %s", job.id, job.requested_by or "?", job.params.to_json())
    return web.json_response(job.to_json(), status=201)


async def list_jobs(request: web.Request) -> web.Response:
    """GET /jobs."""
    return web.json_response({"jobs": [job.to_json() for job in request.app[MANAGER_KEY].history()]})


async def get_job(request: web.Request) -> web.Response:
    """GET /jobs/{id}."""
    return web.json_response(request.app[MANAGER_KEY].get(request.match_info["id"]).to_json())


async def cancel_job(request: web.Request) -> web.Response:
    """POST /jobs/{id}/cancel."""
    job = await request.app[MANAGER_KEY].cancel(request.match_info["id"])
    log.info("job %s cancelled by %s", job.id, requested_by(request) or "?")
    return web.json_response(job.to_json())


async def resume_job(request: web.Request) -> web.Response:
    """POST /jobs/{id}/resume."""
    await read_json(request)  # no parameters, but a body must still be small
    job = await request.app[MANAGER_KEY].resume(request.match_info["id"], requested_by=requested_by(request))
    log.info("job %s resumed by %s", job.id, job.requested_by or "?")
    return web.json_response(job.to_json())


async def job_events(request: web.Request) -> web.StreamResponse:
    """GET /jobs/{id}/events: ``event: job`` with the job's JSON after each change, then ``event: end``."""
    manager = request.app[MANAGER_KEY]
    job_id = request.match_info["id"]
    manager.get(job_id)  # 404 before the stream starts
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    updates = manager.watch(job_id).__aiter__()
    # The next update is awaited in its own task: timing out to send a keepalive must not cancel (and
    # so end) the watch generator.
    upcoming: asyncio.Future | None = None
    try:
        while True:
            if upcoming is None:
                upcoming = asyncio.ensure_future(anext(updates))
            done, _ = await asyncio.wait({upcoming}, timeout=SSE_KEEPALIVE_S)
            if not done:
                await response.write(b": keepalive\n\n")
                continue
            try:
                job = upcoming.result()
            except StopAsyncIteration:
                break
            upcoming = None
            await response.write(f"event: job\ndata: {json.dumps(job.to_json())}\n\n".encode())
        await response.write(b"event: end\ndata: {}\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    finally:
        if upcoming is not None and not upcoming.done():
            upcoming.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await upcoming
        await updates.aclose()
    return response


def build_app(
    manager: JobManager, token: str | None, *, host_is_loopback: bool = True
) -> web.Application:
    """The aiohttp application; refuses to exist without a token unless it only listens on loopback."""
    if not token and not host_is_loopback:
        raise UserError(f"Set {TOKEN_ENV} before serving on a non-loopback address, so only the bot can "
                        "start training.")
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES)
    app[MANAGER_KEY] = manager
    app[TOKEN_KEY] = token or ""
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/jobs", create_job)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_post("/jobs/{id}/cancel", cancel_job)
    app.router.add_post("/jobs/{id}/resume", resume_job)
    app.router.add_get("/jobs/{id}/events", job_events)

    async def open_manager(app: web.Application) -> None:
        await manager.open()

    async def close_manager(app: web.Application) -> None:
        await manager.close()

    app.on_startup.append(open_manager)
    app.on_shutdown.append(close_manager)
    return app


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the training control API the Discord bot's /retrain talks to",
        description=f"Serve the training control API. Every endpoint but /healthz needs the bearer token "
                    f"from {TOKEN_ENV}; without it the service only binds to a loopback address.",
    )
    env_flag(parser, "--host", env="MAESTER_SERVICE_HOST", default="127.0.0.1",
             help="address to listen on (0.0.0.0 in a container; needs a token when not loopback)")
    env_flag(parser, "--port", env="MAESTER_SERVICE_PORT", default=8765, type=int, help="port to listen on")
    env_flag(parser, "--checkpoint-dir", env="MAESTER_CHECKPOINT_DIR", default="checkpoints", type=Path,
             help="checkpoint root: runs/, CURRENT, work/ and the job history in jobs/")
    env_flag(parser, "--cancel-grace", env="MAESTER_CANCEL_GRACE_S", default=30.0, type=float,
             help="seconds a cancelled trainer gets to exit after SIGTERM before SIGKILL")
    env_flag(parser, "--train-args", env="MAESTER_SERVICE_TRAIN_ARGS", default="",
             help="extra flags appended to every 'train' command (e.g. '--batch-size 4 --device cuda')")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token and is_placeholder(token):
        raise UserError(
            f"{TOKEN_ENV} still holds the placeholder from .env.example; set it to a long random string, "
            'e.g. the output of: python3 -c "import secrets; print(secrets.token_hex(32))"'
        )
    if args.port <= 0 or args.port > 65535:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}.")
    if args.cancel_grace < 0:
        raise UserError(f"--cancel-grace must not be negative, not {args.cancel_grace}.")
    try:
        extra = shlex.split(args.train_args)
    except ValueError as exc:
        raise UserError(f"--train-args is not a valid command line: {exc}.") from exc
    manager = JobManager(args.checkpoint_dir, extra_train_args=extra, cancel_grace_s=args.cancel_grace)
    app = build_app(manager, token, host_is_loopback=is_loopback(args.host))
    if not token:
        log.warning("%s is not set: the API is open to every process on this machine", TOKEN_ENV)
    log.info("serving the trainer API on http://%s:%d (checkpoints in %s)", args.host, args.port,
             args.checkpoint_dir)
    web.run_app(app, host=args.host, port=args.port, print=None)
    return 0

