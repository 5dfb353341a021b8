"""Fault matrix: ZPA faults from the simulator, Vault faults on real OpenBao, SIGKILL trials.
Each trial asserts the invariants and records itself for docs/reliability.md."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Vault, clean_env, run_cli
from tests.reliability.conftest import Recorder
from vault_zpa.testing.zpa_simulator import ZpaSimulator

CANARY_SECRET = "CANARYzpaclientsecret0123456789"


def expected_state(sim: ZpaSimulator) -> dict[str, str]:
    """path -> key_id vault-zpa must hold, per DESIGN.md's selection rule."""
    out: dict[str, str] = {}
    for atype, keys in sim.keys.items():
        by_group: dict[str, list[dict[str, Any]]] = {}
        for key in keys.values():
            by_group.setdefault(str(key["zcomponentId"]), []).append(key)
        for gid, group_keys in by_group.items():
            eligible = [
                k for k in group_keys if k["enabled"] and int(k["usageCount"]) < int(k["maxUsage"])
            ]
            if not eligible:
                continue
            best = max(eligible, key=lambda k: (int(k["creationTime"]), int(k["id"])))
            out[f"zpa/{atype}/{sim.groups[atype][gid]['name']}"] = str(best["id"])
    return out


def vault_state(vault: Vault) -> dict[str, dict[str, Any]]:
    """Every secret under the prefix: path -> {data, deleted}."""
    out: dict[str, dict[str, Any]] = {}
    for atype in ("CONNECTOR_GRP", "SERVICE_EDGE_GRP"):
        listing = vault.api("LIST", f"{vault.mount}/metadata/zpa/{atype}")
        if listing.status_code == 404:
            continue
        for name in listing.json()["data"]["keys"]:
            path = f"zpa/{atype}/{name}"
            response = vault.api("GET", f"{vault.mount}/data/{path}")
            body = response.json().get("data") or {}
            out[path] = {"data": body.get("data"), "deleted": response.status_code == 404}
    return out


def check(sim: ZpaSimulator, vault: Vault, outputs: str) -> tuple[bool, int, int]:
    """(no wrong key, keys lost, leaks). A 'wrong key' is a value ZPA does not accept or one
    that is not any key of that group; a lost key is a group whose secret vanished."""
    state = vault_state(vault)
    wrong = 0
    lost = 0
    for _path, entry in state.items():
        if entry["deleted"]:
            lost += 1
            continue
        value = entry["data"]["provisioning_key"]
        if not sim.accepts(value):
            wrong += 1
    leaks = sum(outputs.count(v) for v in [CANARY_SECRET, vault.server.root_token])
    leaks += sum(
        outputs.count(str(k["provisioningKey"])) for ks in sim.keys.values() for k in ks.values()
    )
    return wrong == 0, lost, leaks


def converged(sim: ZpaSimulator, vault: Vault) -> bool:
    state = vault_state(vault)
    want = expected_state(sim)
    return all(
        path in state and not state[path]["deleted"] and state[path]["data"]["key_id"] == key_id
        for path, key_id in want.items()
    )


ZPA_FAULTS: dict[str, dict[str, Any]] = {
    "429 storm": {"storm_429": 3, "retry_after": 1},
    "500": {"fail_next": 3, "error_status": 500},
    "502": {"fail_next": 3, "error_status": 502},
    "503": {"fail_next": 3, "error_status": 503},
    "504": {"fail_next": 3, "error_status": 504},
    "timeouts": {"hang_next": 2, "hang": 3.0},
    "connection drops": {"drop_next": 3},
    "malformed / truncated JSON": {"malformed_next": 3},
    "401 mid-listing": {"unauthorized_next": 1},
    "persistent 503 (past the budget)": {"error_rate": 1.0, "error_status": 503},
    "one type failing": {
        "error_rate": 1.0,
        "error_status": 500,
        "only_association_type": "CONNECTOR_GRP",
    },
}


FAST = {"500", "429 storm", "one type failing", "malformed / truncated JSON"}


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=() if f in FAST else pytest.mark.slow) for f in ZPA_FAULTS]
)
def test_zpa_fault(fault: str, vault: Vault, recorder: Recorder) -> None:
    """Each ZPA fault on a second sync (with --prune!): no wrong key, nothing pruned, the
    failure reported, and the next clean run converges."""
    with ZpaSimulator(
        seed=31,
        connector_groups=4,
        service_edge_groups=2,
        rate_limits=False,
        client_secret=CANARY_SECRET,
    ) as sim:
        env = clean_env(
            sim.env(),
            vault.env,
            {"VAULT_ZPA_ZPA_TIMEOUT": "1s", "VAULT_ZPA_ZPA_RETRY_BUDGET": "6s"},
        )
        outputs = []
        first = run_cli("sync", "--log-level", "debug", env=env)
        outputs += [first.stdout, first.stderr]
        group_id = next(iter(sim.groups["SERVICE_EDGE_GRP"]))
        sim.add_key("SERVICE_EDGE_GRP", group_id, name="newer")  # something to change
        sim.set_faults(**ZPA_FAULTS[fault])
        during = run_cli("sync", "--prune", "--output", "json", "--log-level", "debug", env=env)
        outputs += [during.stdout, during.stderr]
        persistent = "error_rate" in ZPA_FAULTS[fault]
        reported = during.returncode == (1 if persistent else 0)
        if persistent:
            report = json.loads(during.stdout)
            reported = (
                reported
                and bool(report["errors"])
                and not any(i["action"] == "prune" for i in report["items"])
            )
        sim.clear_faults()
        after = run_cli("sync", "--prune", env=env)
        outputs += [after.stdout, after.stderr]
        ok, lost, leaks = check(sim, vault, "\n".join(outputs))
        survived = (
            ok
            and reported
            and lost == 0
            and leaks == 0
            and after.returncode == 0
            and converged(sim, vault)
        )
        recorder.trial("ZPA", fault, survived=survived, keys_lost=lost, leaks=leaks)
        assert survived, (fault, during.returncode, during.stderr[-500:], lost, leaks)


def test_zpa_state_changes_between_runs(vault: Vault, recorder: Recorder) -> None:
    """A key disabled, a key exhausted, a group deleted between runs: the right key is held,
    the deleted group is an orphan (kept) until --prune."""
    with ZpaSimulator(seed=32, connector_groups=3, service_edge_groups=0, rate_limits=False) as sim:
        env = clean_env(sim.env(), vault.env)
        assert run_cli("sync", env=env).returncode == 0
        (g1, _), (g2, _), (g3, group3) = list(sim.groups["CONNECTOR_GRP"].items())
        k1 = next(k for k in sim.keys["CONNECTOR_GRP"].values() if k["zcomponentId"] == g1)
        newer = sim.add_key("CONNECTOR_GRP", g1, name="backup", created=1)  # older, eligible
        k1["enabled"] = False
        k2 = next(k for k in sim.keys["CONNECTOR_GRP"].values() if k["zcomponentId"] == g2)
        sim.enroll("CONNECTOR_GRP", k2["id"], int(k2["maxUsage"]))
        for key_id in [k for k, v in sim.keys["CONNECTOR_GRP"].items() if v["zcomponentId"] == g3]:
            del sim.keys["CONNECTOR_GRP"][key_id]
        del sim.groups["CONNECTOR_GRP"][g3]
        result = run_cli("sync", "--output", "json", env=env)
        actions = {i["group_name"]: i["action"] for i in json.loads(result.stdout)["items"]}
        state = vault_state(vault)
        ok = (
            actions.get(group3["name"]) == "orphan"
            and not state[f"zpa/CONNECTOR_GRP/{group3['name']}"]["deleted"]
            and any(s["data"]["key_id"] == newer["id"] for s in state.values() if s["data"])
        )
        recorder.trial(
            "ZPA",
            "key disabled / exhausted / group deleted between runs",
            survived=ok,
            note="exhausted-only group keeps its last key, reported",
        )
        assert ok, actions


def restart_bao_on_same_port(vault: Vault) -> None:
    server = vault.server
    port = server.port
    server.stop()
    server.port = port
    server.start()


def test_vault_faults(sim: ZpaSimulator, vault: Vault, recorder: Recorder) -> None:
    """Sealed mid-run, 403 after a policy change, token revoked, mount disabled: each reported,
    nothing wrong written, and the next run after repair converges."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_VAULT_RETRY_BUDGET": "3s"})
    assert run_cli("sync", env=env).returncode == 0
    # 403 after a policy change
    policy = (
        f'path "{vault.mount}/*" {{ capabilities = ["read", "list"] }}\n'
        f'path "sys/mounts/{vault.mount}" {{ capabilities = ["read"] }}'
    )
    vault.api("PUT", "sys/policies/acl/rel-ro", json={"policy": policy}).raise_for_status()
    token = vault.api("POST", "auth/token/create", json={"policies": ["rel-ro"]}).json()["auth"][
        "client_token"
    ]
    group_id = next(iter(sim.groups["CONNECTOR_GRP"]))
    sim.add_key("CONNECTOR_GRP", group_id, name="needs-write")
    denied = run_cli("sync", env={**env, "VAULT_TOKEN": token})
    ok = denied.returncode == 1 and "Vault denied 'update'" in denied.stdout
    after = run_cli("sync", env=env)
    recorder.trial(
        "Vault",
        "403 after a policy change",
        survived=ok and after.returncode == 0 and converged(sim, vault),
    )
    # token revoked before the run
    revoked = vault.api("POST", "auth/token/create", json={"policies": ["root"]}).json()["auth"][
        "client_token"
    ]
    vault.api("POST", "auth/token/revoke", json={"token": revoked}).raise_for_status()
    dead = run_cli("sync", env={**env, "VAULT_TOKEN": revoked})
    ok = dead.returncode == 2 and "invalid, expired or revoked" in dead.stderr
    ok = ok and converged(sim, vault)
    recorder.trial(
        "Vault",
        "token revoked",
        survived=ok,
        note="a plain VAULT_TOKEN cannot be re-obtained: one line, exit 1",
    )
    assert ok, dead.stderr
    # mount disabled
    vault.api("DELETE", f"sys/mounts/{vault.mount}").raise_for_status()
    gone = run_cli("sync", env=env)
    ok = gone.returncode == 2 and "no secrets engine mounted" in gone.stderr
    vault.api(
        "POST", f"sys/mounts/{vault.mount}", json={"type": "kv", "options": {"version": "2"}}
    ).raise_for_status()
    again = run_cli("sync", env=env)
    recorder.trial(
        "Vault",
        "mount disabled",
        survived=ok and again.returncode == 0 and converged(sim, vault),
        note="exit 2 until the mount is back",
    )
    assert ok


@pytest.mark.slow
def test_vault_sealed_mid_run_and_restarted(
    sim: ZpaSimulator, tmp_path: Path, recorder: Recorder
) -> None:
    """Seal while a large sync writes; unseal: the run finishes or reports, nothing wrong is
    written, and the next run converges. Then stop and restart OpenBao (dev: empty again)."""
    from vault_zpa.testing.openbao import OpenBaoDevServer

    with (
        ZpaSimulator(
            seed=33, connector_groups=400, service_edge_groups=100, rate_limits=False
        ) as big,
        OpenBaoDevServer(log_dir=str(tmp_path)) as bao,
    ):
        env = clean_env(big.env(), bao.env(), {"VAULT_ZPA_VAULT_RETRY_BUDGET": "20s"})
        proc = subprocess.Popen(
            [sys.executable, "-m", "vault_zpa", "sync"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        bao.seal()
        time.sleep(2.0)
        bao.unseal()
        out, err = proc.communicate(timeout=120)
        vault = Vault(bao, "secret")
        ok, lost, _leaks = check(big, vault, out + err)
        again = run_cli("sync", env=env)
        survived = ok and lost == 0 and again.returncode == 0 and converged(big, vault)
        recorder.trial(
            "Vault",
            "sealed mid-run",
            survived=survived,
            keys_lost=lost,
            note=f"first run exit {proc.returncode}",
        )
        assert survived, (proc.returncode, err[-500:])
        port = bao.port
        bao.stop()
        down = run_cli("sync", env={**env, "VAULT_ZPA_VAULT_RETRY_BUDGET": "2s"})
        bao.port = port
        bao.start()
        back = run_cli("sync", env={**env, "VAULT_TOKEN": bao.root_token})
        survived = (
            down.returncode == 1
            and "unreachable" in down.stderr
            and back.returncode == 0
            and converged(big, Vault(bao, "secret"))
        )
        recorder.trial(
            "Vault",
            "stopped and restarted",
            survived=survived,
            note="dev server restarts empty: the next run recreates every secret",
        )
        assert survived


@pytest.mark.parametrize(
    "trial", [pytest.param(t, marks=() if t < 2 else pytest.mark.slow) for t in range(6)]
)
def test_sigkill_during_sync(trial: int, vault: Vault, recorder: Recorder) -> None:
    """SIGKILL the sync at a random moment (seeded); the next run converges; no wrong key."""
    rng = random.Random(1000 + trial)
    with ZpaSimulator(
        seed=40 + trial, connector_groups=300, service_edge_groups=100, rate_limits=False
    ) as sim:
        env = clean_env(sim.env(), vault.env)
        proc = subprocess.Popen(
            [sys.executable, "-m", "vault_zpa", "sync"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 2.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ok, lost, _ = check(sim, vault, "")
        again = run_cli("sync", env=env)
        survived = ok and lost == 0 and again.returncode == 0 and converged(sim, vault)
        recorder.trial(
            "process",
            "SIGKILL during sync (seeded random points)",
            survived=survived,
            keys_lost=lost,
            note="seeds 1000-1005",
        )
        assert survived, again.stdout[-500:]
