"""The daemon as it runs in production: a real process against OpenBao and the simulator, driven
through signals and its HTTP surface."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import ROOT, DaemonProc, Vault, Wired, clean_env, syncs, wait_for
from vault_zpa.testing.openbao import OpenBaoDevServer, free_port
from vault_zpa.testing.zpa_simulator import ZpaSimulator


def test_first_run_at_start_readiness_and_metrics(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    """The first sync runs at start; /readyz says ready and leader; /metrics has every series."""
    d = start_daemon(clean_env(sim.env(), vault.env))
    wait_for(lambda: syncs(d) == 1, what="first run")
    response = d.get("/readyz")
    assert response.status_code == 200, response.text
    ready = response.json()
    assert ready["ready"] is True
    assert ready["reason"] is None
    assert ready["role"] == "leader"
    assert ready["vault"] == "ok"
    assert ready["last_sync"]["result"] == "success"
    assert d.metric("vault_zpa_syncs_total", result="success") == 1
    assert d.metric("vault_zpa_items_total", action="create", outcome="done") == 5
    assert d.metric("vault_zpa_leader") == 1
    assert (
        d.metric(
            "vault_zpa_zpa_requests_total", method="GET", endpoint="provisioningKey", status="200"
        )
        == 2
    )
    assert d.metric("vault_zpa_keys", association_type="CONNECTOR_GRP", state="ok") == 3
    group = next(iter(sim.groups["CONNECTOR_GRP"].values()))["name"]
    assert (
        d.metric("vault_zpa_key_usage_ratio", association_type="CONNECTOR_GRP", group=group) == 0.0
    )
    assert (d.metric("vault_zpa_last_success_timestamp_seconds") or 0) > time.time() - 60
    assert d.metric("vault_zpa_sync_duration_seconds_count") == 1
    assert d.metric("vault_zpa_vault_requests_total", kind="write", outcome="ok") == 5
    assert d.metric("vault_zpa_zpa_rate_limited_total") == 0
    metrics = d.get("/metrics").text
    for keys in sim.keys.values():
        for key in keys.values():
            assert key["provisioningKey"] not in metrics
    assert vault.server.root_token not in metrics
    assert d.stop() == 0
    log = d.log.read_text()
    assert "daemon stopped" in log
    assert vault.server.root_token not in log


def test_sighup_and_post_each_trigger_a_run(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    """SIGHUP and POST /v1/sync each run a sync now."""
    d = start_daemon(clean_env(sim.env(), vault.env))
    wait_for(lambda: syncs(d) == 1, what="first run")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: syncs(d) == 2, what="SIGHUP run")
    response = httpx.post(d.url + "/v1/sync")
    assert response.status_code == 202
    wait_for(lambda: syncs(d) == 3, what="POST run")
    assert d.stop() == 0


def test_triggers_during_a_run_queue_exactly_one_follow_up(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    """Four triggers while a run is in progress: one run now, one follow-up, no more."""
    d = start_daemon(clean_env(sim.env(), vault.env))
    wait_for(lambda: syncs(d) == 1, what="first run")
    sim.set_faults(latency=0.75)
    first = httpx.post(d.url + "/v1/sync").json()
    assert first["started"] is True
    time.sleep(0.3)
    queued = [httpx.post(d.url + "/v1/sync").json() for _ in range(3)]
    d.proc.send_signal(signal.SIGHUP)
    assert all(q["queued"] for q in queued)
    wait_for(lambda: syncs(d) == 3, timeout=30, what="run and follow-up")
    time.sleep(2.5)
    assert syncs(d) == 3
    assert d.stop() == 0


def test_steady_state_run_makes_no_vault_requests_and_full_run_catches_edits(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    """Warm runs only list ZPA; every Nth run reads Vault back and repairs an edit (on-demand
    runs that ask for {"full": false} count toward it)."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_FULL_SYNC_EVERY": "2"})
    d = start_daemon(env, "--no-ha")
    wait_for(lambda: syncs(d) == 1, what="first run")

    def vault_calls() -> float:
        text = d.get("/metrics").text
        return sum(
            float(v)
            for v in re.findall(r"^vault_zpa_vault_requests_total\{[^}]*\} (\S+)", text, re.M)
        )

    before_vault = vault_calls()
    before_zpa = (
        d.metric(
            "vault_zpa_zpa_requests_total", method="GET", endpoint="provisioningKey", status="200"
        )
        or 0
    )
    group = next(iter(sim.groups["CONNECTOR_GRP"].values()))["name"]
    vault.bao(
        "kv",
        "patch",
        f"{vault.mount}/zpa/CONNECTOR_GRP/{group}",
        "provisioning_key=edited-behind-our-back",
    )
    httpx.post(d.url + "/v1/sync", json={"full": False})
    wait_for(lambda: syncs(d) == 2, what="warm run")
    assert vault_calls() == before_vault  # zero Vault requests in the warm run
    assert (
        d.metric(
            "vault_zpa_zpa_requests_total", method="GET", endpoint="provisioningKey", status="200"
        )
        == before_zpa + 2
    )  # one list request per association type
    edited = vault.kv_get(f"zpa/CONNECTOR_GRP/{group}")["data"]["data"]  # type: ignore[index]
    assert edited["provisioning_key"] == "edited-behind-our-back"  # type: ignore[index]
    httpx.post(d.url + "/v1/sync", json={"full": False})
    wait_for(lambda: syncs(d) == 3, what="periodic full run")
    repaired = vault.kv_get(f"zpa/CONNECTOR_GRP/{group}")["data"]["data"]  # type: ignore[index]
    assert repaired["provisioning_key"].startswith("3|")  # type: ignore[index]
    assert d.stop() == 0


def test_readyz_follows_a_sealed_vault(
    sim: ZpaSimulator, tmp_path: Path, start_daemon: Callable[..., DaemonProc]
) -> None:
    """Sealed: /readyz 503 saying so; unsealed: ready again."""
    with OpenBaoDevServer(log_dir=str(tmp_path)) as server:
        d = start_daemon(clean_env(sim.env(), server.env()))
        wait_for(lambda: d.get("/readyz").status_code == 200, what="ready")
        server.seal()
        wait_for(lambda: d.get("/readyz").status_code == 503, what="not ready")
        assert d.get("/readyz").json()["vault"] == "sealed"
        server.unseal()
        wait_for(lambda: d.get("/readyz").status_code == 200, what="ready again")
        assert d.stop() == 0


def test_two_replicas_one_leader_and_failover(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    """Exactly one of two replicas leads; SIGKILL it and the other leads within one lease period;
    no path is written under both leases."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_LEASE_PERIOD": "6s"})
    a = start_daemon(env)
    wait_for(lambda: a.metric("vault_zpa_leader") == 1, what="a leads")
    b = start_daemon(env)
    wait_for(lambda: b.get("/readyz").status_code == 200, what="b ready")
    assert b.get("/readyz").json()["role"] == "standby"
    assert b.metric("vault_zpa_leader") == 0
    assert b.metric("vault_zpa_syncs_total", result="success") == 0
    wait_for(lambda: syncs(a) == 1, what="a synced")

    def writer(path: str) -> int:
        return int(vault.metadata(path)["custom_metadata"]["writer_lease"])  # type: ignore[index]

    paths = [f"zpa/{t}/{g['name']}" for t, gs in sim.groups.items() for g in gs.values()]
    first = {writer(p) for p in paths}
    assert len(first) == 1
    a.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: b.metric("vault_zpa_leader") == 1, timeout=15, what="b takes over")
    assert time.monotonic() - killed <= 6 + 3  # one lease period, plus one renewal tick
    # The new leader syncs at once on taking over (fail-over), then on demand.
    wait_for(lambda: syncs(b) >= 1, what="b syncs on taking over")
    before = b.metric("vault_zpa_syncs_total", result="success") or 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    sim.add_key("CONNECTOR_GRP", group_id, name="after-failover")
    httpx.post(b.url + "/v1/sync")
    wait_for(
        lambda: (b.metric("vault_zpa_syncs_total", result="success") or 0) >= before + 1,
        what="b synced",
    )
    changed = f"zpa/CONNECTOR_GRP/{group['name']}"
    assert writer(changed) > max(first)
    assert all(writer(p) in first for p in paths if p != changed)
    lease = vault.metadata("zpa/_vault-zpa/leader")
    assert lease["delete_version_after"] == "6s"
    assert b.stop() == 0
    released = vault.kv_get("zpa/_vault-zpa/leader")["data"]["data"]  # type: ignore[index]
    assert released == {"holder": ""}


def test_non_loopback_listener_requires_a_token(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    """Bound beyond loopback: refused without a token (exit 2); with one, POST needs it."""
    env = clean_env(sim.env(), vault.env)
    refused = subprocess.run(
        [sys.executable, "-m", "vault_zpa", "daemon", "--listen", f"0.0.0.0:{free_port()}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "no API token" in refused.stderr
    token_file = tmp_path / "api-token"
    token_file.write_text("s3cret-api-token\n")
    port = free_port()
    env["VAULT_ZPA_API_TOKEN_FILE"] = str(token_file)
    d = start_daemon(env, port=port)
    assert httpx.post(d.url + "/v1/sync").status_code == 401
    ok = httpx.post(d.url + "/v1/sync", headers={"Authorization": "Bearer s3cret-api-token"})
    assert ok.status_code == 202
    assert d.stop() == 0
    assert "s3cret-api-token" not in d.log.read_text()
    _ = os.environ


def test_paused_leader_whose_lease_lapses_writes_nothing(wired: Wired, vault: Vault) -> None:
    """Leader A stalls past 2/3 of its lease; Vault lets it lapse and B takes over. A's late
    writes are refused by its own guard, and a stale renewal loses the check-and-set race."""
    from vault_zpa.sync import run_once
    from vault_zpa.vault.lease import LeaderLease

    clock = {"now": 0.0}
    a = LeaderLease(wired.store, prefix="zpa", period=3, holder="a", clock=lambda: clock["now"])
    b = LeaderLease(wired.store, prefix="zpa", period=3, holder="b")
    assert a.tick() is True
    assert b.tick() is False  # exactly one leader
    clock["now"] = 2.1  # A is paused (GC, SIGSTOP, a slow disk) past 2/3 of the period
    report = run_once(
        source=wired.zpa, store=wired.store, options=wired.options(), guard=lambda: a.version
    )
    assert report.results
    assert all(
        r.outcome.value == "failed" and "not the leader" in (r.error or "") for r in report.results
    )
    assert vault.api("LIST", f"{vault.mount}/metadata/zpa/CONNECTOR_GRP").status_code == 404
    time.sleep(3.2)  # Vault's clock deletes A's unrenewed version
    assert b.tick() is True
    assert a.tick() is False  # A's renewal carries a stale version: CAS refuses it
    assert a.version is None
    done = run_once(
        source=wired.zpa, store=wired.store, options=wired.options(), guard=lambda: b.version
    )
    assert not done.failed
    meta = vault.metadata(done.results[0].item.path)["custom_metadata"]
    assert meta["writer_lease"] == str(b.version)  # type: ignore[index]


def test_no_secret_in_process_arguments(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    """Secrets reach the daemon (and OpenBao) through the environment, never argv."""
    d = start_daemon(clean_env(sim.env(), vault.env))
    for pid in (d.proc.pid, vault.server.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert sim.client_secret not in argv
        assert vault.server.root_token not in argv
    assert d.stop() == 0
