"""A real OpenBao cluster on loopback: N `bao server` processes with integrated (Raft) storage
on disk, initialised with one key share, unsealed and joined, with KV v2 enabled.

It can stop, kill -9, SIGSTOP/SIGCONT and restart any node (a restarted node comes back sealed,
as in production, and is unsealed again), and find the current leader. Used by the cluster
trials (tests/reliability/test_cluster.py), `make reliability` and the benchmarks.

Secrets (the unseal key, the root token) stay in this process's memory and in the environment
of the clients it hands them to, never in a node's arguments or config file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vault_zpa.testing.openbao import OpenBaoError, bao_binary, free_port

_CONFIG = """\
storage "raft" {{
  path = "{data}"
  node_id = "{node_id}"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{api}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{api}"
cluster_addr = "https://127.0.0.1:{cluster}"
disable_mlock = true
log_level = "info"
"""


@dataclass
class Node:
    index: int
    api: int
    cluster: int
    home: Path
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.api}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        """sys/health's body (any status), or None when the node does not answer."""
        try:
            response = httpx.get(
                f"{self.addr}/v1/sys/health",
                params={"standbyok": "true", "sealedcode": "200", "uninitcode": "200"},
                timeout=1.0,
            )
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None


@dataclass
class RaftCluster:
    size: int = 3
    base: Path | None = None
    nodes: list[Node] = field(default_factory=list)
    root_token: str = ""
    unseal_key: str = ""
    mount: str = "secret"

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RaftCluster:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.base = Path(self.base or tempfile.mkdtemp(prefix="vault-zpa-raft-"))
        for i in range(1, self.size + 1):
            home = self.base / f"n{i}"
            (home / "data").mkdir(parents=True, exist_ok=True)
            node = Node(i, free_port(), free_port(), home)
            (home / "config.hcl").write_text(
                _CONFIG.format(
                    data=home / "data", node_id=node.name, api=node.api, cluster=node.cluster
                )
            )
            self.nodes.append(node)
            self._launch(node)
        first = self.nodes[0]
        self._wait(lambda: first.health() is not None, timeout, f"{first.name} to answer")
        init = self._api(first, "PUT", "sys/init", json={"secret_shares": 1, "secret_threshold": 1})
        self.unseal_key = init["keys_base64"][0]
        self.root_token = init["root_token"]
        self.unseal(first)
        self._wait(lambda: self.leader() is first, timeout, f"{first.name} to become active")
        self._api(
            first,
            "POST",
            "sys/storage/raft/autopilot/configuration",
            json={"server_stabilization_time": "1s", "cleanup_dead_servers": False},
        )
        for node in self.nodes[1:]:
            self._wait(lambda n=node: n.health() is not None, timeout, f"{node.name} to answer")
            self._api(node, "POST", "sys/storage/raft/join", json={"leader_api_addr": first.addr})
            self.unseal(node)
        self._wait(self.all_joined, timeout, "every node to join the Raft cluster")
        self._api(
            first,
            "POST",
            f"sys/mounts/{self.mount}",
            json={"type": "kv", "options": {"version": "2"}},
        )
        self._wait(
            lambda: all(self._kv_ready(n) for n in self.nodes), timeout, "KV v2 on every node"
        )

    def _kv_ready(self, node: Node) -> bool:
        """A new KV v2 mount answers 400 on standbys until the active node has set it up."""
        response = httpx.request(
            "LIST",
            f"{node.addr}/v1/{self.mount}/metadata/",
            headers={"X-Vault-Token": self.root_token},
            timeout=5.0,
        )
        return response.status_code in (200, 404)

    def stop(self) -> None:
        for node in self.nodes:
            self.stop_node(node)
        if self.base is not None and self.base.name.startswith("vault-zpa-raft-"):
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> RaftCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what clients need ------------------------------------------------------------------

    def env(self, node: Node | None = None) -> dict[str, str]:
        """VAULT_* for a client talking to `node` (default: the first one)."""
        target = node or self.nodes[0]
        return {
            "VAULT_ADDR": target.addr,
            "VAULT_TOKEN": self.root_token,
            "BAO_ADDR": target.addr,
            "BAO_TOKEN": self.root_token,
            "VAULT_ZPA_MOUNT": self.mount,
        }

    def leader(self) -> Node | None:
        """The active node, as the nodes that answer report it."""
        for node in self.nodes:
            if not node.running or node.stopped:
                continue
            health = node.health()
            if (
                health
                and health.get("initialized")
                and not health.get("sealed")
                and not health.get("standby")
            ):
                return node
        return None

    def all_joined(self) -> bool:
        """Every node is in the Raft configuration as a voter (autopilot promotes a new node
        once it has been healthy for the stabilization time, set short here)."""
        leader = self.leader()
        if leader is None:
            return False
        try:
            config = self._api(leader, "GET", "sys/storage/raft/configuration")
        except OpenBaoError:
            return False
        servers = config.get("data", {}).get("config", {}).get("servers", [])
        return len(servers) == self.size and all(s.get("voter") for s in servers)

    def wait_for_leader(self, timeout: float = 60.0, *, other_than: Node | None = None) -> Node:
        found: list[Node] = []

        def elected() -> bool:
            node = self.leader()
            if node is not None and node is not other_than:
                found.append(node)
                return True
            return False

        self._wait(elected, timeout, "a leader to be elected")
        return found[-1]

    # ---- faults -----------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """kill -9: no clean shutdown, the node's Raft state stays as it was on disk."""
        if node.proc is not None and node.proc.poll() is None:
            if node.stopped:
                self.resume(node)
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)
        node.proc = None

    def stop_node(self, node: Node) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it lingers."""
        proc = node.proc
        if proc is None or proc.poll() is not None:
            node.proc = None
            return
        if node.stopped:
            self.resume(node)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        node.proc = None

    def pause(self, node: Node) -> None:
        """SIGSTOP: the node stops answering and heartbeating but keeps its sockets."""
        if node.proc is not None:
            os.kill(node.proc.pid, signal.SIGSTOP)
            node.stopped = True

    def resume(self, node: Node) -> None:
        if node.proc is not None:
            os.kill(node.proc.pid, signal.SIGCONT)
        node.stopped = False

    def restart(self, node: Node, *, unseal: bool = True, timeout: float = 60.0) -> None:
        """Start a stopped or killed node again: it comes back sealed; unseal it (default)."""
        if node.running:
            self.stop_node(node)
        self._launch(node)
        self._wait(lambda: node.health() is not None, timeout, f"{node.name} to answer")
        if unseal:
            self.unseal(node)

    def unseal(self, node: Node) -> None:
        self._api(node, "PUT", "sys/unseal", json={"key": self.unseal_key})

    def seal_all_by_restart(self, *, timeout: float = 60.0) -> None:
        """Every node stopped, then started sealed (a full cluster restart, nothing unsealed)."""
        for node in self.nodes:
            self.stop_node(node)
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._wait(lambda n=node: n.health() is not None, timeout, f"{node.name} to answer")

    # ---- plumbing ---------------------------------------------------------------------------

    def _launch(self, node: Node) -> None:
        log = open(node.home / "server.log", "ab")  # noqa: SIM115 - handed to the child
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(node.home)
        try:
            node.proc = subprocess.Popen(
                [bao_binary(), "server", f"-config={node.home / 'config.hcl'}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        node.stopped = False

    def _api(self, node: Node, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = {"X-Vault-Token": self.root_token} if self.root_token else {}
        try:
            response = httpx.request(
                method, f"{node.addr}/v1/{path}", headers=headers, timeout=15.0, **kwargs
            )
        except httpx.HTTPError as exc:
            raise OpenBaoError(f"{node.name} {method} {path}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise OpenBaoError(
                f"{node.name} {method} {path}: HTTP {response.status_code} {response.text[:200]}"
            )
        if not response.content:
            return {}
        body = response.json()
        return body if isinstance(body, dict) else {}

    @staticmethod
    def _wait(check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OpenBaoError, httpx.HTTPError):
                if check():
                    return
            time.sleep(0.1)
        raise OpenBaoError(f"timed out waiting for {what}")
