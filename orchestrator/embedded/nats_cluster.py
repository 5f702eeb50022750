"""A cluster of real nats-servers with clustered JetStream, on loopback ports.

Each node is a ``NatsServer`` with a ``server_name`` and a ``cluster`` block
(routes to every other node) appended to its generated config, so streams
with ``num_replicas = 3`` are replicated by Raft across the nodes. Nodes can be
stopped, SIGKILLed and restarted one at a time; their client, monitor and
route ports and their data survive restarts.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.embedded.nats_server import NatsServer
from orchestrator.embedded.procs import EmbeddedError, free_port


class NatsCluster:
    """``size`` nats-servers routed to each other as one JetStream cluster."""

    def __init__(
        self, base_dir: Path, size: int = 3, name: str = "agog", host: str = "127.0.0.1"
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.base_dir = Path(base_dir).resolve()
        self.name, self.host = name, host
        self.route_ports = [free_port(host) for _ in range(size)]
        self.nodes = [
            NatsServer(self.base_dir / f"n{i}", host=host, extra_config=self._cluster_config(i))
            for i in range(size)
        ]

    def _cluster_config(self, index: int) -> str:
        routes = ", ".join(
            json.dumps(f"nats-route://{self.host}:{port}")
            for i, port in enumerate(self.route_ports)
            if i != index
        )
        return "\n".join(
            [
                f"server_name: {json.dumps(self.node_name(index))}",
                "cluster {",
                f"  name: {json.dumps(self.name)}",
                f"  listen: {json.dumps(f'{self.host}:{self.route_ports[index]}')}",
                f"  routes: [{routes}]",
                "}",
            ]
        )

    def node_name(self, index: int) -> str:
        return f"{self.name}-n{index}"

    # --- addresses -----------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        """Every node's client URL (give them all to clients)."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The client URLs comma-separated, as AGOG_NATS_URL takes them."""
        return ",".join(self.urls)

    # --- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 60.0) -> NatsCluster:
        """Start every node, then wait until JetStream has a meta leader."""
        for node in self.nodes:
            node.start(timeout)
        self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def stop_node(self, index: int) -> None:
        self.nodes[index].stop()

    def kill(self, index: int) -> None:
        """SIGKILL one node (its data directory stays)."""
        self.nodes[index].kill()

    def start_node(self, index: int, timeout: float = 30.0) -> None:
        self.nodes[index].start(timeout)

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Stop (if running) and start one node; waits until the cluster has a leader."""
        self.nodes[index].stop()
        self.nodes[index].start(timeout)
        self.wait_ready(timeout)

    def running(self, index: int) -> bool:
        return self.nodes[index].running

    # --- state -----------------------------------------------------------------
    def jsz(self, index: int) -> dict[str, Any] | None:
        """A node's /jsz monitoring document, or None when it does not answer."""
        node = self.nodes[index]
        url = f"http://{node.host}:{node.monitor_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, as a running node reports it."""
        for index, node in enumerate(self.nodes):
            if not node.running:
                continue
            cluster = (self.jsz(index) or {}).get("meta_cluster") or {}
            if cluster.get("leader"):
                return str(cluster["leader"])
        return None

    def healthy(self, index: int) -> bool:
        """The node's full /healthz: JetStream current with the meta leader and
        with every stream and consumer replica it holds (it has caught up)."""
        node = self.nodes[index]
        try:
            url = f"http://{node.host}:{node.monitor_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running node sees the same meta leader, has its
        routes up and is healthy (caught up)."""
        deadline = time.monotonic() + timeout
        running = [i for i, node in enumerate(self.nodes) if node.running]
        while time.monotonic() < deadline:
            leaders = {
                ((self.jsz(i) or {}).get("meta_cluster") or {}).get("leader") for i in running
            }
            if (
                len(leaders) == 1
                and None not in leaders
                and self._routed(running)
                and all(self.healthy(i) for i in running)
            ):
                return
            time.sleep(0.1)
        raise EmbeddedError(f"nats cluster {self.name}: not ready after {timeout}s")

    def _routed(self, running: list[int]) -> bool:
        for index in running:
            node = self.nodes[index]
            url = f"http://{node.host}:{node.monitor_port}/routez"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    routez = json.loads(resp.read())
            except (OSError, ValueError):
                return False
            peers = {r.get("remote_name") for r in routez.get("routes") or []}
            wanted = {self.node_name(i) for i in running if i != index}
            if not wanted <= peers:
                return False
        return True
