"""`vault-zpa demo`: a first look with real parts. OpenBao dev server + the ZPA simulator + one
real sync, then the read a connector would do, with the key value kept off the screen."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable

from vault_zpa import build, report
from vault_zpa.config import load
from vault_zpa.model import Action
from vault_zpa.reconcile import Scope
from vault_zpa.sync import SyncOptions, run_once
from vault_zpa.testing.openbao import OpenBaoDevServer, bao_binary
from vault_zpa.testing.zpa_simulator import ZpaSimulator


def run(*, keep_running: bool, echo: Callable[[str], None]) -> None:
    # SIGTERM (kill, timeout, a closed terminal's HUP) unwinds like Ctrl-C, so the `with`
    # below stops OpenBao and the simulator instead of leaving them running.
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup asked us to ignore it
        signal.signal(signal.SIGHUP, _stop)
    echo("vault-zpa demo: starting OpenBao (bao server -dev) and the ZPA simulator ...")
    with (
        OpenBaoDevServer() as bao,
        ZpaSimulator(seed=7, connector_groups=3, service_edge_groups=2) as sim,
    ):
        env = {**bao.env(), **sim.env()}
        echo(f"  OpenBao   {bao.addr}  (pid {bao.pid})")
        echo(f"  ZPA sim   {sim.url}  (customer {sim.customer_id})")
        settings = load(path=None, environ=env)
        store = build.kv_store(settings)
        options = SyncOptions(
            association_types=settings.association_types,
            prefix=settings.vault.prefix,
            rules=dict(settings.rules),
            scope=Scope(),
        )
        result = run_once(source=build.zpa_client(settings.zpa()), store=store, options=options)
        echo("")
        echo(report.to_text(result, mount=settings.vault.mount))
        again = run_once(source=build.zpa_client(settings.zpa()), store=store, options=options)
        echo(
            f"second sync: {again.count(Action.UNCHANGED)} unchanged, "
            f"{sum(1 for r in again.results if r.item.action.writes)} writes (no version churn)"
        )

        first = next(r.item for r in result.results if r.item.action is Action.CREATE)
        path = f"{settings.vault.mount}/{first.path}"
        echo("")
        echo("A connector host reads its key with (VAULT_ADDR/VAULT_TOKEN in its environment):")
        echo(f"  bao kv get -field=provisioning_key {path}")
        proc = subprocess.run(
            [bao_binary(), "kv", "get", "-format=json", path],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        doc = json.loads(proc.stdout)["data"]
        data, meta = doc["data"], doc["metadata"]
        key = data.pop("provisioning_key")
        echo(f"read back from OpenBao with `bao kv get` (version {meta['version']}):")
        for name, value in data.items():
            echo(f"  {name:22} {value}")
        echo(
            f"  {'provisioning_key':22} <{len(key)} characters, sha256 "
            f"{hashlib.sha256(key.encode()).hexdigest()[:12]}; hidden, add -field to print it>"
        )
        echo(f"  ZPA accepts this key for enrollment: {sim.accepts(key)}")
        if keep_running:
            echo("")
            echo("Both stay up until Ctrl-C. In another shell:")
            echo(f"  export VAULT_ADDR={bao.addr} VAULT_TOKEN={bao.root_token}  # dev server only")
            for name, value in sim.env().items():
                echo(f"  export {name}={value}")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        echo("demo done; OpenBao and the simulator are stopped.")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
