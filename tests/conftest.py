"""Fixtures: one real OpenBao dev server per session (a fresh KV mount per test), a ZPA simulator
per test, and a helper that runs the real `vault-zpa` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from vault_zpa import build
from vault_zpa.config import Settings, load
from vault_zpa.sync import SyncOptions
from vault_zpa.testing.openbao import OpenBaoDevServer, bao_binary, free_port
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.vault.kv import HvacKvStore
from vault_zpa.zpa.client import ZpaClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    """A real `bao server -dev` for the whole session."""
    server = OpenBaoDevServer(log_dir=str(tmp_path_factory.mktemp("bao")))
    server.start()
    yield server
    server.stop()


@dataclass
class Vault:
    """One test's slice of the shared OpenBao: its own KV mount."""

    server: OpenBaoDevServer
    mount: str

    @property
    def env(self) -> dict[str, str]:
        return {**self.server.env(), "VAULT_ZPA_MOUNT": self.mount}

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.server.addr}/v1/{path}",
            headers={"X-Vault-Token": self.server.root_token},
            timeout=30,
            **kwargs,
        )  # type: ignore[arg-type]

    def bao(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real `bao` CLI against this server (token via the environment)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(self.server.env())
        return subprocess.run(
            [bao_binary(), *args], env=env, capture_output=True, text=True, check=check, timeout=60
        )

    def kv_get(self, path: str) -> dict[str, object]:
        """`bao kv get -format=json <mount>/<path>`, parsed."""
        out = self.bao("kv", "get", "-format=json", f"{self.mount}/{path}")
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def metadata(self, path: str) -> dict[str, object]:
        response = self.api("GET", f"{self.mount}/metadata/{path}")
        response.raise_for_status()
        return response.json()["data"]  # type: ignore[no-any-return]


@pytest.fixture
def vault(openbao: OpenBaoDevServer) -> Iterator[Vault]:
    mount = f"kv-{uuid.uuid4().hex[:10]}"
    v = Vault(openbao, mount)
    v.api(
        "POST", f"sys/mounts/{mount}", json={"type": "kv", "options": {"version": "2"}}
    ).raise_for_status()
    yield v
    v.api("DELETE", f"sys/mounts/{mount}")


@dataclass
class Wired:
    """The library objects a CLI run would build, for tests that drive run_once directly."""

    settings: Settings
    store: HvacKvStore
    zpa: ZpaClient

    def options(self, **kw: object) -> SyncOptions:
        return SyncOptions(
            association_types=self.settings.association_types,
            prefix=self.settings.vault.prefix,
            rules=dict(self.settings.rules),
            **kw,
        )  # type: ignore[arg-type]


@pytest.fixture
def wired(sim: ZpaSimulator, vault: Vault) -> Iterator[Wired]:
    settings = load(path=None, environ={**sim.env(), **vault.env})
    store = build.kv_store(settings)
    zpa = build.zpa_client(settings.zpa())
    yield Wired(settings, store, zpa)
    store.close()
    zpa.close()


@pytest.fixture
def sim() -> Iterator[ZpaSimulator]:
    """A ZPA simulator without rate limits (tests of the limits turn them on themselves)."""
    with ZpaSimulator(
        seed=1, connector_groups=3, service_edge_groups=2, rate_limits=False
    ) as simulator:
        yield simulator


def clean_env(*parts: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment minus anything vault-zpa reads, plus `parts`."""
    prefixes = ("VAULT_", "BAO_", "ZPA_", "ZSCALER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    for part in parts:
        env.update(part)
    return env


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 120, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m vault_zpa ARGS` (the real entry point) and capture everything."""
    return subprocess.run(
        [sys.executable, "-m", "vault_zpa", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
        cwd=ROOT,
    )


@dataclass
class DaemonProc:
    proc: subprocess.Popen[str]
    url: str
    log: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one Prometheus sample, or None if absent."""
        text = self.get("/metrics").text
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            match = re.fullmatch(r"([a-zA-Z_:]+)(\{.*\})? (\S+)", line)
            if not match or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(3))
        return None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        return self.proc.returncode


def wait_for(check: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    procs: list[DaemonProc] = []

    def start(
        env: dict[str, str], *args: str, port: int | None = None, schedule: bool = True
    ) -> DaemonProc:
        """A daemon process; `schedule=False` leaves out the test default of
        `--interval 1h --jitter 0` so env, TOML or the caller's flags decide."""
        port = port or free_port()
        log = tmp_path / f"daemon-{port}.log"
        handle = open(log, "w")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vault_zpa",
                "daemon",
                "--listen",
                f"127.0.0.1:{port}",
                *(["--interval", "1h", "--jitter", "0"] if schedule else []),
                *args,
            ],
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
        handle.close()
        daemon = DaemonProc(proc, f"http://127.0.0.1:{port}", log)
        procs.append(daemon)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited: {log.read_text()[-2000:]}")
            return daemon.get("/healthz").status_code == 200

        wait_for(up, what="healthz")
        return daemon

    yield start
    for daemon in procs:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def syncs(daemon: DaemonProc) -> float:
    return sum(
        daemon.metric("vault_zpa_syncs_total", result=r) or 0
        for r in ("success", "partial", "error")
    )
