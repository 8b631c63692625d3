"""Ray's autoscaler asking the portal for devices: a v1 ``NodeProvider`` that the v2 autoscaler wraps.

The head of an autoscaled cluster runs Ray's autoscaler with the configuration ``gpu_pool.autoscaler``
builds. This provider asks the head's agent, over a Unix socket the agent serves for that node
(``gpu_pool.autoscaler_relay``); the agent asks the portal with its device's token, which never reaches
the node: the portal books a device for each node asked for (within the cluster's ``max_workers`` and the
customer's credit), starts a Ray worker on it, and stops and returns the device when the autoscaler
releases an idle node. Nodes are matched to the autoscaler's instances by ``RAY_CLOUD_INSTANCE_ID`` (the
portal's node id), not by IP, so several nodes on one host (the local agents) are told apart.

This file imports nothing but Ray and the standard library: a containerised head loads it from a folder
the agent mounts into the container, whose image holds Ray alone.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from typing import Any

from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

logger = logging.getLogger("gpu_pool.node_provider")
# The node types as the agent names them (gpu_pool.ray_node; a test checks they agree).
HEAD_TYPE, WORKER_TYPE = "head", "gpu_worker"
LIST_TTL_S = 1.0  # the autoscaler asks for the list and then each node's tags: one request serves them
TIMEOUT_S = 20  # the agent's own wait on the portal is shorter: its answer comes first


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("agent", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class PortalNodeProvider(NodeProvider):
    """Nodes of one portal cluster; ``provider_config["socket"]`` is the agent's socket for this head."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self._socket = str(provider_config["socket"])
        self._nodes: dict[str, dict[str, Any]] = {}
        self._listed_at = 0.0
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        connection = _UnixConnection(self._socket, TIMEOUT_S)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, "/autoscaler/nodes" + path, body=payload, headers=headers)
            reply = connection.getresponse()
            content = reply.read()
        finally:
            connection.close()
        answer = json.loads(content) if content else None
        if reply.status >= 400:
            message = (answer or {}).get("error", {}).get("message", "") if isinstance(answer, dict) else ""
            raise RuntimeError(f"the portal answered {reply.status}: {message or repr(content[:300])}")
        return answer

    def _listed(self) -> dict[str, dict[str, Any]]:
        """The cluster's nodes, fresh within LIST_TTL_S; the last list while the portal cannot be reached
        (the nodes keep running meanwhile, and an empty list would read as all of them gone)."""
        with self._lock:
            if time.monotonic() - self._listed_at > LIST_TTL_S:
                try:
                    nodes = self._call("GET", "")["nodes"]
                except (OSError, ValueError, RuntimeError) as error:
                    logger.warning("cannot list the cluster's nodes, using the last list: %s", error)
                else:
                    self._nodes = {node["id"]: node for node in nodes}
                    self._listed_at = time.monotonic()
            return self._nodes

    def _forget_list(self) -> None:
        with self._lock:
            self._listed_at = 0.0

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        return [
            node_id
            for node_id in self._listed()
            if all(self.node_tags(node_id).get(key) == value for key, value in tag_filters.items())
        ]

    def node_tags(self, node_id: str) -> dict[str, str]:
        node = self._listed().get(node_id)
        if node is None:
            return {}
        return {
            TAG_RAY_NODE_KIND: NODE_KIND_HEAD if node["role"] == "head" else NODE_KIND_WORKER,
            TAG_RAY_USER_NODE_TYPE: HEAD_TYPE if node["role"] == "head" else WORKER_TYPE,
            TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE if node["state"] == "joined" else STATUS_UNINITIALIZED,
        }

    def is_running(self, node_id: str) -> bool:
        return node_id in self._listed()

    def is_terminated(self, node_id: str) -> bool:
        return node_id not in self._listed()

    def internal_ip(self, node_id: str) -> str:
        return self._listed().get(node_id, {}).get("ip") or "127.0.0.1"

    def external_ip(self, node_id: str) -> str:
        return self.internal_ip(node_id)

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        pass  # the portal's node states are the tags; nothing else is kept

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        if tags.get(TAG_RAY_USER_NODE_TYPE, WORKER_TYPE) != WORKER_TYPE:
            raise RuntimeError(f"the portal starts only {WORKER_TYPE} nodes")
        reply = self._call("POST", "", {"count": count})
        self._forget_list()
        logger.info("the portal booked %d of %d node(s): %s", len(reply["nodes"]), count, reply["nodes"])
        return {node["id"]: node for node in reply["nodes"]}

    def terminate_node(self, node_id: str) -> None:
        self._call("DELETE", f"/{node_id}")
        self._forget_list()
