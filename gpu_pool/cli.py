"""``gpu-pool``: the agent providers run next to their GPUs."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer

from gpu_pool import __version__
from gpu_pool.nvml import driver_status

app = typer.Typer(help="GPU Portal worker agent.", no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


@app.command()
def doctor(
    portal: Annotated[
        str | None, typer.Option(help="Portal URL to check, e.g. https://portal.example.com")
    ] = None,
) -> None:
    """Check the NVIDIA driver and the portal's reachability, and say what to fix."""
    problems = 0
    driver = driver_status()
    typer.echo(f"{'ok ' if driver.available else 'FIX'} NVIDIA driver: {driver.detail}")
    if not driver.available:
        problems += 1
        typer.echo("    install the NVIDIA driver, or use --simulate for development")
    if portal:
        url = portal.rstrip("/") + "/healthz"
        try:
            response = httpx.get(url, timeout=5)
            reachable = response.status_code == 200
            detail = f"{url} answered {response.status_code}"
        except httpx.HTTPError as error:
            reachable, detail = False, f"{url} unreachable ({type(error).__name__})"
        typer.echo(f"{'ok ' if reachable else 'FIX'} portal: {detail}")
        problems += 0 if reachable else 1
    raise typer.Exit(code=1 if problems else 0)


def main() -> None:
    app()
