"""What every rental's container is made with, read from the command the agent builds: no engine needed
(the tests that run containers are tests/test_isolation*.py, slow)."""

import pytest

from gpu_pool.isolation import AUTOSCALER_MOUNT, ContainerIsolation, IsolationError, Limits, find_engine
from gpu_pool.ray_node import NodeSpec


def test_every_container_is_unprivileged_read_only_and_limited():
    flags = ContainerIsolation(
        "podman", "img", Limits(memory_bytes=2**30, cpus=1.5, pids=100)
    ).security_args()
    assert {"--user=1000:1000", "--cap-drop=ALL", "--security-opt=no-new-privileges", "--read-only"} <= set(
        flags
    )
    assert {"--memory=1073741824", "--memory-swap=1073741824", "--cpus=1.5", "--pids-limit=100"} <= set(flags)
    # Never the host's network, its PID namespace, privileges or a mount of the host.
    joined = " ".join(flags)
    for forbidden in ("--network=host", "--pid=host", "--privileged", "--volume", "--mount", "cap-add"):
        assert forbidden not in joined


def test_only_the_rented_gpus_are_passed_in_the_engines_own_way():
    assert ContainerIsolation.gpu_args("podman", []) == []  # simulated GPUs: none
    assert ContainerIsolation.gpu_args("podman", [0, 2]) == [
        "--device=nvidia.com/gpu=0",
        "--device=nvidia.com/gpu=2",
    ]
    assert ContainerIsolation.gpu_args("docker", [1, 3]) == ["--gpus", '"device=1,3"']


def test_a_head_publishes_its_three_ports_on_the_node_address_only_and_a_worker_none():
    head = NodeSpec("head", 1, {}, node_ip="127.0.0.2", dashboard=True)
    ports, published = ContainerIsolation._ports(head)
    assert len(published) == 3 and all(flag.startswith("--publish=127.0.0.2:") for flag in published)
    assert f"--publish=127.0.0.2:{ports['gcs']}:{ports['gcs']}" in published
    assert ContainerIsolation._ports(NodeSpec("worker", 1, {}, head_address="127.0.0.2:1"))[1] == []


def test_an_autoscaled_head_runs_ray_with_the_config_its_agent_mounts():
    boxed = ContainerIsolation("podman", "img")
    head = NodeSpec("head", 1, {}, autoscaling={"provider": {}})
    config = AUTOSCALER_MOUNT / "autoscaling.yaml"
    assert f"--autoscaling-config={config}" in boxed._ray_args(head, 6379, config)
    assert not [arg for arg in boxed._ray_args(head, 6379) if "autoscaling" in arg]


def test_no_engine_says_what_to_install():
    with pytest.raises(IsolationError, match="install Podman"):
        find_engine("no-such-engine")


def test_a_clusters_bridge_is_isolated_from_the_other_clusters_bridges():
    assert ContainerIsolation.network_args("podman") == ["--opt", "isolate=true"]
    assert ContainerIsolation.network_args("docker") == []  # Docker isolates its bridges itself
