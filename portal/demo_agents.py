"""Local worker agents with simulated GPUs, started with the embedded portal so a new user sees a live
network at once. Development only: never in production, never with several portal processes (Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from portal import parts
from portal.config import Environment
from portal.infra.db import session_scope
from portal.services.demo import demo_devices

logger = logging.getLogger(__name__)


def _start_agents(count: int, portal_url: str) -> list[subprocess.Popen]:
    with session_scope(parts.current().engine) as session:
        agents = demo_devices(session, count)
    agent = str(Path(sys.executable).with_name("gpu-pool"))
    processes = []
    for token, spec in agents:
        processes.append(
            subprocess.Popen(
                [agent, "worker", "--portal", portal_url, "--simulate", spec],
                env={**os.environ, "GPU_POOL_TOKEN": token},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return processes


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@asynccontextmanager
async def demo_agents() -> AsyncIterator[None]:
    settings = parts.current().settings
    wanted = settings.demo_agents
    if not wanted or settings.environment is Environment.PRODUCTION or settings.redis_url:
        yield
        return
    spawning: asyncio.Future[list[subprocess.Popen]] | None = None

    async def start_once_serving() -> None:
        # Three agents (and their Ray nodes) importing at once would take the cores the portal needs to
        # start serving: they start once it answers, not before.
        nonlocal spawning
        await _answering(settings.base_url)
        spawning = asyncio.ensure_future(asyncio.to_thread(_start_agents, wanted, settings.base_url))
        started = await asyncio.shield(spawning)
        logger.info("started demo agents with simulated GPUs", extra={"agents": len(started)})

    starting = asyncio.create_task(start_once_serving())
    try:
        yield
    finally:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        # A stop while the agents were being started waits for them, so that none is left running.
        processes = await spawning if spawning is not None else []
        await asyncio.to_thread(_stop, processes)


async def _answering(base_url: str, within_s: float = 120) -> None:
    """Until ``base_url`` answers its health check (or ``within_s`` passed: start the agents anyway)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        if await asyncio.to_thread(_healthy, base_url):
            return
        await asyncio.sleep(0.2)


def _healthy(base_url: str) -> bool:
    # urllib rather than httpx, whose every request would be a line in the portal's log.
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as answer:
            return answer.status == 200
    except (OSError, ValueError):
        return False


def kill_agent(token_hash: str) -> list[int]:
    """SIGKILL the local agent whose device token hashes to ``token_hash``, and its Ray node with it, as if
    its machine died; returns the process ids killed (none when no such agent runs here)."""
    import psutil

    from portal.security.secrets import keyed_hash

    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
            if not any(part.endswith("gpu-pool") for part in cmdline) or "worker" not in cmdline:
                continue
            token = process.environ().get("GPU_POOL_TOKEN", "")
            if not token or keyed_hash(token) != token_hash:
                continue
            doomed = [process, *process.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for victim in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.kill()
        return [victim.pid for victim in doomed]
    return []
