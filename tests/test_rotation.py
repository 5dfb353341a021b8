"""Rotation: decisions (pure), the journaled protocol against OpenBao and the simulator, crash
safety under SIGKILL at every step boundary, overlap during the grace period, and give-up."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import DaemonProc, Vault, clean_env, run_cli, syncs, wait_for
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType, ProvisioningKey, StoredSecret
from vault_zpa.rotation import STEPS, Journal, RotationPolicy, State, decide
from vault_zpa.testing.zpa_simulator import ZpaSimulator

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def zkey(usage: int = 0, max_usage: int = 10) -> ProvisioningKey:
    return ProvisioningKey(
        id="1",
        name="k",
        association_type=AssociationType.CONNECTOR_GRP,
        key=Secret("3|x|y"),
        group_id="g",
        group_name="G",
        enrollment_cert_id="c",
        enrollment_cert_name="Connector",
        max_usage=max_usage,
        usage_count=usage,
        enabled=True,
        creation_time=0,
        modified_time=0,
    )


def stored(**meta: str) -> StoredSecret:
    return StoredSecret(
        "zpa/CONNECTOR_GRP/G",
        1,
        {"key_id": "1"},
        {"managed_by": "vault-zpa", "lease_expires_at": "2027-01-01T00:00:00Z", **meta},
    )


ON = RotationPolicy(enabled=True, after=86400.0, at_usage_ratio=0.8)
IDLE = Journal()


@pytest.mark.parametrize(
    ("secret", "journal", "key", "policy", "requested", "action", "why"),
    [
        (stored(), IDLE, zkey(), ON, False, "none", "not due"),
        (stored(), IDLE, zkey(), RotationPolicy(), False, "none", "not enabled"),
        (
            stored(lease_expires_at="2026-11-01T00:00:00Z"),
            IDLE,
            zkey(),
            ON,
            False,
            "start",
            "lease expired",
        ),
        (stored(), IDLE, zkey(usage=8), ON, False, "start", "usage 8/10"),
        (stored(), IDLE, zkey(usage=7), ON, False, "none", "not due"),
        (stored(), IDLE, zkey(), RotationPolicy(), True, "start", "requested"),
        (stored(), Journal(1, State.CREATED), zkey(), ON, False, "resume", "in progress"),
        (
            stored(),
            Journal(1, State.WRITTEN, grace_until="2026-11-27T13:00:00Z"),
            zkey(),
            ON,
            False,
            "wait",
            "old key kept until",
        ),
        (
            stored(),
            Journal(1, State.WRITTEN, grace_until="2026-11-27T11:00:00Z"),
            zkey(),
            ON,
            False,
            "resume",
            "in progress",
        ),
        (
            stored(),
            Journal(1, State.WRITTEN, grace_until="garbage"),
            zkey(),
            ON,
            False,
            "blocked",
            "not a time within any grace",
        ),
        (
            stored(),
            Journal(1, needs_human=True, failures=5),
            zkey(usage=9),
            ON,
            False,
            "blocked",
            "needs a human",
        ),
        (
            stored(),
            Journal(1, retry_at="2026-11-27T12:05:00Z"),
            zkey(usage=9),
            ON,
            False,
            "wait",
            "backing off",
        ),
        # A journal an earlier version kept in custom_metadata is still honoured.
        (stored(rotation_state="created"), None, zkey(), ON, False, "resume", "in progress"),
    ],
)
def test_decide(
    secret: StoredSecret,
    journal: Journal | None,
    key: ProvisioningKey,
    policy: RotationPolicy,
    requested: bool,
    action: str,
    why: str,
) -> None:
    """Lease expiry, usage ratio and requests start a rotation; journals resume; failures wait;
    an unreadable grace timestamp waits instead of removing the old key."""
    decision = decide(secret, key, policy, NOW, journal=journal, requested=requested)
    assert decision.action == action
    assert why in decision.reason


def journal_path_of(vault: Vault, path: str) -> str:
    """Where the group whose secret is at `path` keeps its journal: by type and group id."""
    data = vault.kv_get(path)["data"]["data"]  # type: ignore[index]
    return f"zpa/_vault-zpa/rotation/{data['association_type']}/{data['group_id']}"  # type: ignore[index]


def journal_of(vault: Vault, path: str) -> dict[str, str]:
    """The rotation journal of a group's secret, as Vault holds it (empty: none written)."""
    where = journal_path_of(vault, path)
    result = vault.bao("kv", "get", "-format=json", f"{vault.mount}/{where}", check=False)
    if result.returncode != 0:
        return {}
    return json.loads(result.stdout)["data"]["data"]  # type: ignore[no-any-return]


def policy_file(tmp_path: Path, **policy: str) -> str:
    lines = ["[association_type.CONNECTOR_GRP.rotation]", "enabled = true"]
    lines += [f"{k} = {v}" for k, v in policy.items()]
    path = tmp_path / "rotation.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def group_keys(sim: ZpaSimulator, group_id: str) -> list[dict[str, object]]:
    return [k for k in sim.keys["CONNECTOR_GRP"].values() if k["zcomponentId"] == group_id]


def test_dry_run_shows_what_is_due_and_changes_nothing(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """Seeded keys are older than a 30 day lease: --dry-run lists them with the reason."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    config = policy_file(tmp_path, after='"30d"')
    before = {k: dict(v) for k, v in sim.keys["CONNECTOR_GRP"].items()}
    status = json.loads(run_cli("status", "--output", "json", "--config", config, env=env).stdout)
    due = [g for g in status["groups"] if g["rotation"] == "due"]
    assert len(due) == 3
    assert all("lease expired" in g["rotation_reason"] for g in due)
    result = run_cli("rotate", "--all-due", "--dry-run", "--config", config, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("would rotate") == 3
    assert "lease expired at 2026-01-" in result.stdout
    assert sim.keys["CONNECTOR_GRP"] == before


def test_requested_rotation_with_overlap_then_removal(sim: ZpaSimulator, vault: Vault) -> None:
    """rotate --group: new key in Vault at once; during the grace period both the current and the
    previous version are keys ZPA accepts; after it the old key is deleted and the journal gone."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    [old] = group_keys(sim, group_id)
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    first = run_cli(
        "rotate",
        "--association-type",
        "CONNECTOR_GRP",
        "--group",
        group["name"],
        "--grace",
        "3s",
        "--output",
        "json",
        env=env,
    )
    assert first.returncode == 0, first.stderr
    [entry] = json.loads(first.stdout)["rotations"]
    assert entry["state"] == "written"
    doc = vault.kv_get(path)
    current = doc["data"]["data"]  # type: ignore[index]
    assert current["key_id"] == entry["new_key_id"]  # type: ignore[index]
    assert journal_of(vault, path)["state"] == "written"
    assert journal_of(vault, path)["old_id"] == old["id"]
    previous = json.loads(
        vault.bao("kv", "get", "-version=1", "-format=json", f"{vault.mount}/{path}").stdout
    )["data"]["data"]
    assert previous["key_id"] == old["id"]
    assert sim.accepts(current["provisioning_key"])  # type: ignore[index]
    assert sim.accepts(previous["provisioning_key"])  # connectors mid-enrollment still work
    waiting = run_cli("rotate", "--all-due", env=env)
    assert "old key kept until" in waiting.stdout
    time.sleep(3.5)
    done = run_cli("rotate", "--all-due", "--output", "json", env=env)
    assert done.returncode == 0, done.stderr
    assert [k["id"] for k in group_keys(sim, group_id)] == [entry["new_key_id"]]
    assert not sim.accepts(previous["provisioning_key"])
    journal = journal_of(vault, path)
    assert journal["state"] == "idle"
    assert journal["last_rotated_at"]
    assert journal["retired"] == old["id"]
    again = run_cli("sync", "--output", "json", env=env)
    assert {i["action"] for i in json.loads(again.stdout)["items"]} == {"unchanged"}


def test_usage_triggered_rotation(sim: ZpaSimulator, vault: Vault, tmp_path: Path) -> None:
    """Enrollments push a key to 80 % of max_usage: --all-due rotates exactly that group."""
    env = clean_env(sim.env(), vault.env)
    config = policy_file(tmp_path, after='"3650d"', at_usage_ratio="0.8", grace='"1s"')
    assert run_cli("sync", "--config", config, env=env).returncode == 0
    group_id, group = list(sim.groups["CONNECTOR_GRP"].items())[1]
    [old] = group_keys(sim, group_id)
    sim.enroll("CONNECTOR_GRP", str(old["id"]), 8)
    assert run_cli("sync", "--config", config, env=env).returncode == 0
    result = run_cli("rotate", "--all-due", "--config", config, env=env)
    assert result.returncode == 0, result.stderr
    assert f"{group['name']}" in result.stdout
    assert "usage 8/10 reached 0.8" in result.stdout
    new_ids = {str(k["id"]) for k in group_keys(sim, group_id)} - {str(old["id"])}
    assert len(new_ids) == 1
    for other_id, _ in list(sim.groups["CONNECTOR_GRP"].items())[::2]:
        assert len(group_keys(sim, other_id)) == 1  # the others were left alone
    time.sleep(1.5)
    assert run_cli("rotate", "--all-due", "--config", config, env=env).returncode == 0
    assert {str(k["id"]) for k in group_keys(sim, group_id)} == new_ids


def test_lease_triggered_rotation_disable_old(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """A short lease rotates every group; with old_key = disable the old keys stay, disabled."""
    env = clean_env(sim.env(), vault.env)
    config = policy_file(tmp_path, after='"30d"', grace='"1s"', old_key='"disable"')
    assert run_cli("sync", "--config", config, env=env).returncode == 0
    old_ids = set(sim.keys["CONNECTOR_GRP"])
    assert run_cli("rotate", "--all-due", "--config", config, env=env).returncode == 0
    time.sleep(1.5)
    assert run_cli("rotate", "--all-due", "--config", config, env=env).returncode == 0
    keys = sim.keys["CONNECTOR_GRP"]
    assert all(keys[i]["enabled"] is False for i in old_ids)
    assert len(keys) == 2 * len(old_ids)
    status = json.loads(run_cli("status", "--output", "json", "--config", config, env=env).stdout)
    edge_or_conn = {g["association_type"] for g in status["groups"]}
    assert "CONNECTOR_GRP" in edge_or_conn
    assert all(g["state"] == "in-sync" for g in status["groups"])
    nothing = run_cli("rotate", "--all-due", "--config", config, env=env)
    assert "nothing is due" in nothing.stdout


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_then_resume(sim: ZpaSimulator, vault: Vault, step: str) -> None:
    """SIGKILL at a step boundary, then resume: one key in Vault, live and enabled in ZPA, at
    most one new key created, and after the grace period the old key is gone, nothing stray."""
    # A short ZPA budget makes another process's INTENT free to take over after 2 x 3 + 5 s.
    budget = {"VAULT_ZPA_ZPA_RETRY_BUDGET": "1s", "VAULT_ZPA_ZPA_TIMEOUT": "2s"}
    env = clean_env(sim.env(), vault.env, budget)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    [old] = group_keys(sim, group_id)
    args = (
        "rotate",
        "--association-type",
        "CONNECTOR_GRP",
        "--group",
        group["name"],
        "--grace",
        "1s",
    )
    killed = run_cli(*args, env={**env, "VAULT_ZPA_FAULT_KILL_AT": step})
    if step == "old_removed":  # that boundary is only reached once the grace period is over
        assert killed.returncode == 0, killed.stderr
        time.sleep(1.2)
        killed = run_cli("rotate", "--all-due", env={**env, "VAULT_ZPA_FAULT_KILL_AT": step})
    assert killed.returncode == -9, killed.stderr
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    # Between the crash and the resume, Vault always holds a key ZPA accepts.
    assert sim.accepts(vault.kv_get(path)["data"]["data"]["provisioning_key"])  # type: ignore[index]
    outputs = []
    for _ in range(15):  # the INTENT of a dead process is taken over after 11 s
        time.sleep(1.1)
        resumed = run_cli("rotate", "--all-due", env=env)
        assert resumed.returncode == 0, resumed.stderr
        outputs.append(resumed.stdout)
        if journal_of(vault, path).get("state") == "idle":
            break
    if step == "intent":  # it may have been creating the key: left alone for a while
        assert "began this rotation" in outputs[0], outputs[0]
    keys = group_keys(sim, group_id)
    assert len(keys) == 1, keys  # old removed, exactly one new key, no strays
    [new] = keys
    assert new["id"] != old["id"]
    assert new["enabled"] is True
    held = vault.kv_get(path)["data"]["data"]  # type: ignore[index]
    assert held["key_id"] == new["id"]  # type: ignore[index]
    assert sim.accepts(held["provisioning_key"])  # type: ignore[index]
    assert (
        sum(
            1
            for k in sim.keys["CONNECTOR_GRP"].values()
            if str(k["name"]).startswith(group["name"] + "-2")
        )
        == 1
    )


def test_failing_rotation_backs_off_then_needs_a_human(vault: Vault, tmp_path: Path) -> None:
    """ZPA refuses creates: the run fails and backs off; after max_failures the secret is marked
    for a human and left alone; the key in Vault stays one ZPA accepts."""
    with ZpaSimulator(seed=21, connector_groups=1, service_edge_groups=0, rate_limits=False) as sim:
        env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_ZPA_RETRY_BUDGET": "1s"})
        config = policy_file(tmp_path, after='"30d"', max_failures="2", backoff='"3s"')
        assert run_cli("sync", "--config", config, env=env).returncode == 0
        sim.set_faults(error_rate=1.0, error_status=503, only_method="POST")
        first = run_cli("rotate", "--all-due", "--config", config, env=env)
        assert first.returncode == 1
        assert "FAILED" in first.stdout
        sim.clear_faults()
        backing_off = run_cli("rotate", "--all-due", "--config", config, env=env)
        assert "backing off" in backing_off.stdout
        time.sleep(3.2)
        sim.set_faults(error_rate=1.0, error_status=503, only_method="POST")
        assert run_cli("rotate", "--all-due", "--config", config, env=env).returncode == 1
        sim.clear_faults()
        blocked = run_cli("rotate", "--all-due", "--config", config, env=env)
        assert "needs a human" in blocked.stdout
        group = next(iter(sim.groups["CONNECTOR_GRP"].values()))
        path = f"zpa/CONNECTOR_GRP/{group['name']}"
        assert journal_of(vault, path)["needs_human"] == "true"
        held = vault.kv_get(path)["data"]["data"]  # type: ignore[index]
        assert sim.accepts(held["provisioning_key"])  # type: ignore[index]
        # A person asks for it explicitly: the rotation resumes and completes.
        asked = run_cli(
            "rotate",
            "--association-type",
            "CONNECTOR_GRP",
            "--group",
            str(group["name"]),
            "--grace",
            "1s",
            "--config",
            config,
            env=env,
        )
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert journal_of(vault, path)["needs_human"] == "false"


def test_daemon_rotates_due_keys_and_serves_rotate_requests(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path, start_daemon: Callable[..., DaemonProc]
) -> None:
    """The leader rotates a key that crossed the usage threshold after its next sync, and
    `vault-zpa rotate --daemon URL` asks it to rotate another group."""
    config = policy_file(tmp_path, after='"3650d"', at_usage_ratio="0.8", grace='"1h"')
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": config})
    d = start_daemon(env)
    wait_for(lambda: syncs(d) == 1, what="first sync")
    (g1, group1), (g2, group2) = list(sim.groups["CONNECTOR_GRP"].items())[:2]
    [old1] = group_keys(sim, g1)
    sim.enroll("CONNECTOR_GRP", str(old1["id"]), 9)
    httpx.post(d.url + "/v1/sync")
    wait_for(lambda: len(group_keys(sim, g1)) == 2, what="usage rotation")
    wait_for(
        lambda: (
            vault.kv_get(f"zpa/CONNECTOR_GRP/{group1['name']}")["data"]["data"]["key_id"]  # type: ignore[index]
            != old1["id"]
        ),
        what="new key in Vault",
    )
    asked = run_cli(
        "rotate",
        "--daemon",
        d.url,
        "--association-type",
        "CONNECTOR_GRP",
        "--group",
        str(group2["name"]),
        env=env,
    )
    assert asked.returncode == 0, asked.stderr
    # The CLI waits for the daemon's outcome and prints it as a local rotate would.
    assert asked.stdout.startswith("start "), asked.stdout
    assert f"/zpa/CONNECTOR_GRP/{group2['name']}" in asked.stdout
    assert len(group_keys(sim, g2)) == 2
    wait_for(
        lambda: (d.metric("vault_zpa_rotations_total", outcome="in_progress") or 0) >= 2,
        what="rotation metrics",
    )
    assert d.stop() == 0
