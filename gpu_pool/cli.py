"""``gpu-pool``: the agent providers run next to their GPUs."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated

import httpx
import typer

from gpu_pool import __version__
from gpu_pool.hardware import (
    NvmlGpus,
    OfferedGpus,
    SimulatedGpus,
    driver_status,
    machine_facts,
    parse_indices,
    parse_simulation,
)
from gpu_pool.ray_node import PORT_NAMES, free_ports

DEFAULT_STATE_DIR = Path.home() / ".gpu-pool"

app = typer.Typer(help="GPU Portal worker agent.", no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


@app.command()
def worker(
    portal: Annotated[str, typer.Option(help="The portal's URL, e.g. https://portal.example.com")],
    token: Annotated[
        str, typer.Option(help="The device token (or set GPU_POOL_TOKEN).", envvar="GPU_POOL_TOKEN")
    ],
    simulate: Annotated[
        str | None,
        typer.Option(help="Development only: pretend GPUs, e.g. 2xH100-80GB (labelled simulated)."),
    ] = None,
    cpu_only: Annotated[
        bool, typer.Option(help="Run without GPUs: the device is listed but not hireable.")
    ] = False,
    offered: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help="Which GPUs to rent out, as nvidia-smi numbers them, e.g. 0,2 (default: all). The others "
            "stay yours: never proven, sampled or given to a rental.",
        ),
    ] = None,
    node_ip: Annotated[str, typer.Option(help="Address Ray nodes of this machine listen on.")] = "127.0.0.1",
    metrics_port: Annotated[
        int, typer.Option(help="Serve DCGM-named GPU metrics on this port (0: off).")
    ] = 0,
    mesh: Annotated[
        bool, typer.Option(help="Join the portal's overlay network (Nebula) when it runs one.")
    ] = True,
    state_dir: Annotated[
        Path, typer.Option(help="Where the agent keeps its overlay key pair and Nebula's config.")
    ] = DEFAULT_STATE_DIR,
    mesh_tun: Annotated[
        str | None, typer.Option(help="Nebula's TUN device name (default: gp + the device id's start).")
    ] = None,
    mesh_port: Annotated[int, typer.Option(help="Nebula's UDP port (0: any free port).")] = 0,
    isolation: Annotated[
        str | None,
        typer.Option(
            help="container: every Ray node runs in a container of its own, wiped after the rental; "
            "none: on this host as this user (development with simulated GPUs only). "
            "Default: container with real GPUs, none with --simulate or --cpu-only."
        ),
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="Container engine: podman or docker (default: the first that answers).")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="Worker image (default: gpu-pool-worker:ray-<the portal's Ray version>)."),
    ] = None,
    container_memory_gb: Annotated[
        float, typer.Option(help="Memory of a node's container, swap included.")
    ] = 8,
    container_cpus: Annotated[float, typer.Option(help="CPUs of a node's container.")] = 2,
    container_pids: Annotated[int, typer.Option(help="Processes a node's container may run at once.")] = 4096,
    rental_egress: Annotated[
        str,
        typer.Option(
            help="On the overlay, with containers: internet lets rentals reach the public internet through "
            "this host (pip, datasets), never this host, its loopback services or your networks (needs "
            "root and iptables); none: no way out but the overlay."
        ),
    ] = "internet",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Connect this machine to the portal: register, prove the GPUs, heartbeat, run Ray nodes on command."""
    from gpu_pool.agent import Agent
    from gpu_pool.client import PortalClient
    from gpu_pool.metrics import DcgmCollector, serve

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if simulate:
        try:
            count, model = parse_simulation(simulate)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--simulate") from None
        gpus: NvmlGpus | SimulatedGpus | OfferedGpus | None = SimulatedGpus(count, model)
        typer.secho(
            f"SIMULATED GPUs: {count} x {model} (development only; labelled simulated everywhere)",
            fg=typer.colors.YELLOW,
            err=True,
        )
    elif cpu_only:
        gpus = None
    else:
        status = driver_status()
        if not status.available:
            typer.secho(
                f"gpu-pool: {status.detail}. Run with --cpu-only to offer this machine without GPUs, "
                "or --simulate 2xH100-80GB for development.",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(code=2)
        gpus = NvmlGpus()
    nvml = gpus if isinstance(gpus, NvmlGpus) else None
    if offered is not None:
        if gpus is None:
            raise typer.BadParameter("there are no GPUs to choose from with --cpu-only", param_hint="--gpus")
        try:
            gpus = OfferedGpus(gpus, parse_indices(offered))
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--gpus") from None
        if not gpus.simulated:
            # What CUDA sees in this process (the proof of compute) and in Ray nodes on the host: the
            # offered GPUs, numbered as NVML numbers them.
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus.indices))
    container_isolation = None
    isolation = isolation or ("none" if simulate or cpu_only else "container")
    if isolation == "container":
        from gpu_pool.isolation import (
            ContainerIsolation,
            IsolationError,
            Limits,
            default_image,
            find_engine,
        )

        try:
            container_isolation = ContainerIsolation(
                find_engine(engine),
                image or default_image(),
                Limits(int(container_memory_gb * 2**30), container_cpus, container_pids),
                gpu_processes=nvml.compute_processes if nvml else None,
            )
            container_isolation.check_image()
        except IsolationError as error:
            typer.secho(f"gpu-pool: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
    elif isolation != "none":
        raise typer.BadParameter("container or none", param_hint="--isolation")
    if rental_egress not in ("internet", "none"):
        raise typer.BadParameter("internet or none", param_hint="--rental-egress")
    metrics_url = None
    if metrics_port:
        collector = DcgmCollector(
            gpus.describe if gpus else list,
            gpus.sample if gpus else list,
            machine_facts()["hostname"],
            bool(simulate),
        )
        metrics_url = serve(collector, metrics_port, node_ip)
    agent = Agent(
        PortalClient(portal, token),
        gpus,
        node_ip=node_ip,
        metrics_url=metrics_url,
        mesh_dir=state_dir if mesh else None,
        mesh_tun=mesh_tun,
        mesh_port=mesh_port,
        isolation=container_isolation,
        rental_internet=rental_egress == "internet",
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop())
    agent.run()
    if agent.fatal:
        typer.secho(
            f"gpu-pool: {agent.fatal}. Get a new token in the provider area and restart the agent.",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=3)


@app.command()
def doctor(
    portal: Annotated[
        str | None, typer.Option(help="Portal URL to check, e.g. https://portal.example.com")
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(help="The agent's state dir, where its overlay's config and log are.")
    ] = DEFAULT_STATE_DIR,
    isolation: Annotated[
        str, typer.Option(help="container: also check the engine, the image and GPUs in a container.")
    ] = "container",
    engine: Annotated[str | None, typer.Option(help="Container engine: podman or docker.")] = None,
    image: Annotated[str | None, typer.Option(help="Worker image to check.")] = None,
    rental_egress: Annotated[
        str, typer.Option(help="internet: also check what rentals' way out to the internet needs.")
    ] = "internet",
) -> None:
    """Check the NVIDIA driver, CUDA, Ray, local ports, the portal's reachability and the overlay (Nebula,
    /dev/net/tun, the lighthouses over the overlay, punched or relayed, and with containers the rentals'
    namespace and its way out); say what to fix."""
    from gpu_pool import mesh

    checks: list[tuple[bool, str, str]] = []
    driver = driver_status()
    checks.append(
        (
            driver.available,
            f"NVIDIA driver: {driver.detail}",
            "install the NVIDIA driver, or run the agent with --simulate for development",
        )
    )
    try:
        import torch

        cuda = torch.cuda.is_available()
        checks.append(
            (
                cuda,
                f"CUDA through torch {torch.__version__}: {'available' if cuda else 'not available'}",
                "install a CUDA build of torch for faster proof of compute",
            )
        )
    except ImportError:
        checks.append((True, "CUDA: torch not installed; proof of compute will run on numpy", ""))
    ray_path = shutil.which("ray") or shutil.which(
        "ray", path=str(__import__("pathlib").Path(sys.executable).parent)
    )
    ray_fix = "pip install gpu-pool (it brings the portal's Ray)"
    checks.append((ray_path is not None, f"Ray: {ray_path or 'not found'}", ray_fix))
    try:
        free_ports(len(PORT_NAMES))
        checks.append((True, "Local ports: free ports are available for a Ray node", ""))
    except OSError as error:
        checks.append(
            (False, f"Local ports: cannot open one ({error})", "free some ports or raise the limit")
        )
    if portal:
        url = portal.rstrip("/") + "/healthz"
        try:
            response = httpx.get(url, timeout=5)
            checks.append(
                (
                    response.status_code == 200,
                    f"portal: {url} answered {response.status_code}",
                    "check the URL and that the portal is running",
                )
            )
        except httpx.HTTPError as error:
            checks.append(
                (
                    False,
                    f"portal: {url} unreachable ({type(error).__name__})",
                    "check the URL, DNS and firewalls between this machine and the portal",
                )
            )
    checks += mesh.diagnose(state_dir)
    if isolation == "container":
        from gpu_pool import isolation as containers

        gpus = [gpu.index for gpu in NvmlGpus().describe()] if driver.available else []
        checks += containers.diagnose(engine, image, gpus)
        from gpu_pool import rental_egress as egress

        checks += egress.diagnose(internet=rental_egress == "internet")
    for ok, what, fix in checks:
        typer.echo(f"{'ok ' if ok else 'FIX'} {what}")
        if not ok and fix:
            typer.echo(f"    {fix}")
    raise typer.Exit(code=0 if all(ok for ok, _, _ in checks) else 1)


def main() -> None:
    app()
