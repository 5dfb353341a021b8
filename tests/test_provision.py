"""Issue 22: every group gets a key. Groups are listed; a group with no key is reported (and
never pruned); with provisioning on, a key is created in ZPA and written to the group's path
in the same run, exactly once per group whatever crashes, lost responses or competing runs.

End to end: the real CLI and daemon processes against OpenBao and the ZPA simulator.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import ROOT, DaemonProc, Vault, clean_env, run_cli, wait_for
from vault_zpa.testing.zpa_simulator import ZpaSimulator

CG, SE = "CONNECTOR_GRP", "SERVICE_EDGE_GRP"
SCHEMA = json.loads((ROOT / "docs" / "report-schema.json").read_text())
PROVISION_ON = """
[association_type.CONNECTOR_GRP.provision]
enabled = true
max_usage = 7
name_template = "vz-{group}-{timestamp}"

[association_type.SERVICE_EDGE_GRP.provision]
enabled = true
groups = ["Edges Without Keys"]
"""


def _config(tmp_path: Path, text: str = PROVISION_ON) -> str:
    path = tmp_path / "vault-zpa.toml"
    path.write_text(text)
    return str(path)


def _sync(env: dict[str, str], *args: str, code: int | None = 0) -> dict[str, object]:
    """The JSON report; exit `code` (None: 0 or 1, a run that may find work left to another)."""
    result = run_cli("sync", "--output", "json", *args, env=env)
    assert result.returncode in ((0, 1) if code is None else (code,)), result.stdout + result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, SCHEMA)
    return report  # type: ignore[no-any-return]


def _items(report: dict[str, object], action: str | None = None) -> list[dict[str, object]]:
    found: list[dict[str, object]] = report["items"]  # type: ignore[assignment]
    return [i for i in found if action is None or i["action"] == action]


def _keys_of(sim: ZpaSimulator, atype: str, group_id: str) -> list[dict[str, object]]:
    return [k for k in sim.keys[atype].values() if k["zcomponentId"] == group_id]


@pytest.fixture
def bare(sim: ZpaSimulator) -> dict[str, dict[str, object]]:
    """Groups with no key at all (as a group just made in the console), by name."""
    return {
        "New Connectors": sim.add_group(CG, "New Connectors"),
        "Edges Without Keys": sim.add_group(SE, "Edges Without Keys"),
        "Other Edges": sim.add_group(SE, "Other Edges"),
    }


def test_groups_without_a_key_are_reported_not_touched_when_provisioning_is_off(
    sim: ZpaSimulator, vault: Vault, bare: dict[str, dict[str, object]]
) -> None:
    env = clean_env(sim.env(), vault.env)
    before = {atype: dict(sim.keys[atype]) for atype in (CG, SE)}
    report = _sync(env)
    no_key = {i["group_name"]: i for i in _items(report, "no-key")}
    assert set(no_key) == set(bare)
    assert "no provisioning key in ZPA (provisioning is off for it)" in str(
        no_key["New Connectors"]["reason"]
    )
    assert report["summary"]["no-key"] == 3  # type: ignore[index]
    assert report["ok"] is True  # reported, not a failure
    assert {atype: dict(sim.keys[atype]) for atype in (CG, SE)} == before  # ZPA untouched
    assert not [r for r in sim.stats.requests if r.startswith(("POST prov", "PUT", "DELETE"))]
    assert (
        vault.api("GET", f"{vault.mount}/data/zpa/CONNECTOR_GRP/New-Connectors").status_code == 404
    )
    listings = {entry["association_type"]: entry for entry in report["listings"]}  # type: ignore[attr-defined]
    assert listings[CG]["groups"] == len(sim.groups[CG])
    status = run_cli("status", "--output", "json", env=env)
    states = {r["group_name"]: r["state"] for r in json.loads(status.stdout)["groups"]}
    assert states["New Connectors"] == "no-key"
    text = run_cli("sync", env=env).stdout
    assert "no-key" in text
    assert "New Connectors" in text


def test_provisioning_creates_one_key_and_serves_it_in_the_same_run(
    sim: ZpaSimulator, vault: Vault, bare: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
    planned = _sync(env, "--dry-run")
    assert {(i["group_name"], i["outcome"]) for i in _items(planned, "provision")} == {
        ("New Connectors", "planned"),
        ("Edges Without Keys", "planned"),
    }
    assert _keys_of(sim, CG, str(bare["New Connectors"]["id"])) == []  # a dry run made nothing

    report = _sync(env)
    done = {i["group_name"]: i for i in _items(report, "provision")}
    assert {name: i["outcome"] for name, i in done.items()} == {
        "New Connectors": "done",
        "Edges Without Keys": "done",
    }
    # "Other Edges" is not among the selected groups: reported, left alone.
    assert [i["group_name"] for i in _items(report, "no-key")] == ["Other Edges"]
    assert _keys_of(sim, SE, str(bare["Other Edges"]["id"])) == []

    made = _keys_of(sim, CG, str(bare["New Connectors"]["id"]))
    assert len(made) == 1
    key = made[0]
    assert str(key["name"]).startswith("vz-New Connectors-")
    assert key["maxUsage"] == "7"
    assert key["enrollmentCertId"] == sim.cert_id(CG)
    edge = _keys_of(sim, SE, str(bare["Edges Without Keys"]["id"]))
    assert len(edge) == 1
    assert edge[0]["enrollmentCertId"] == sim.cert_id(SE)
    assert edge[0]["maxUsage"] == "10"  # the default
    assert done["New Connectors"]["key_id"] == key["id"]

    # A connector reads it the way connectors do, and ZPA accepts it.
    got = vault.kv_get("zpa/CONNECTOR_GRP/New-Connectors")["data"]["data"]  # type: ignore[index]
    assert got["key_id"] == key["id"]  # type: ignore[index]
    assert got["group_name"] == "New Connectors"  # type: ignore[index]
    assert sim.accepts(got["provisioning_key"])  # type: ignore[index]
    out = tmp_path / "provision_key"
    fetched = run_cli(
        "fetch", "--association-type", CG, "--group", "New Connectors", "--out", str(out),
        env=env,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_text().strip() == key["provisioningKey"]
    # Key values never reach the report without --reveal.
    assert str(key["provisioningKey"]) not in json.dumps(report)

    again = _sync(env)
    assert _items(again, "provision") == []
    assert len(_keys_of(sim, CG, str(bare["New Connectors"]["id"]))) == 1


def test_a_group_whose_keys_are_all_used_up_gets_a_new_one(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """An exhausted key: provisioning makes another and the path serves it; the old key is
    left in ZPA (provisioning never removes anything)."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
    _sync(env)
    group_id, group = next(iter(sim.groups[CG].items()))
    (old,) = _keys_of(sim, CG, group_id)
    sim.enroll(CG, str(old["id"]), int(str(old["maxUsage"])))
    report = _sync(env)
    (item,) = [i for i in _items(report, "provision") if i["group_id"] == group_id]
    assert "exhausted" in str(item["reason"])
    assert item["outcome"] == "done"
    keys = _keys_of(sim, CG, group_id)
    assert len(keys) == 2
    assert old["id"] in {k["id"] for k in keys}
    served = vault.kv_get(f"zpa/CONNECTOR_GRP/{group['name']}")["data"]["data"]  # type: ignore[index]
    assert served["key_id"] != old["id"]  # type: ignore[index]
    assert sim.accepts(served["provisioning_key"])  # type: ignore[index]


@pytest.mark.parametrize("step", ["intent", "created", "written"])
def test_sigkill_at_each_step_ends_with_one_key_served(
    sim: ZpaSimulator,
    vault: Vault,
    bare: dict[str, dict[str, object]],
    tmp_path: Path,
    step: str,
) -> None:
    # A short ZPA budget: another process's open INTENT is taken over after 2 x 3 + 5 s.
    budget = {"VAULT_ZPA_ZPA_RETRY_BUDGET": "1s", "VAULT_ZPA_ZPA_TIMEOUT": "2s"}
    env = clean_env(sim.env(), vault.env, budget, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
    one = ("--group", "New Connectors")
    killed = run_cli("sync", *one, env={**env, "VAULT_ZPA_FAULT_KILL_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    journal_path = f"zpa/_vault-zpa/rotation/CONNECTOR_GRP/{bare['New Connectors']['id']}"
    reasons = []
    for _ in range(15):
        report = _sync(env, *one, code=None)
        reasons += [f"{i['reason']} {i['error']}" for i in _items(report, "provision")]
        if vault.kv_get(journal_path)["data"]["data"]["state"] == "idle":  # type: ignore[index]
            break
        time.sleep(1.1)
    if step == "intent":  # the dead process may have been creating the key: left alone a while
        assert "began this rotation" in reasons[0], reasons
    keys = _keys_of(sim, CG, str(bare["New Connectors"]["id"]))
    assert len(keys) == 1, keys
    served = vault.kv_get("zpa/CONNECTOR_GRP/New-Connectors")["data"]["data"]  # type: ignore[index]
    assert served["key_id"] == keys[0]["id"]  # type: ignore[index]
    assert sim.accepts(served["provisioning_key"])  # type: ignore[index]
    journal = vault.kv_get(journal_path)["data"]["data"]  # type: ignore[index]
    assert journal["kind"] == "provision"  # type: ignore[index]


def test_a_lost_create_response_is_found_by_name_not_repeated(
    sim: ZpaSimulator, vault: Vault, bare: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    env = clean_env(
        sim.env(),
        vault.env,
        {"VAULT_ZPA_CONFIG": _config(tmp_path), "VAULT_ZPA_ZPA_RETRY_BUDGET": "2s"},
    )
    sim.set_faults(drop_after_create_next=1)
    first = _sync(env, "--group", "New Connectors", code=1)
    (failed,) = _items(first, "provision")
    assert failed["outcome"] == "failed"
    assert len(_keys_of(sim, CG, str(bare["New Connectors"]["id"]))) == 1  # made, answer lost
    # The failure backs off; a person (or the next run after the back-off) finishes it. Here
    # the journal's retry time is moved back so the rerun does not wait a minute.
    journal_path = f"zpa/_vault-zpa/rotation/CONNECTOR_GRP/{bare['New Connectors']['id']}"
    data = vault.kv_get(journal_path)["data"]["data"]  # type: ignore[index]
    assert data["state"] == "intent"
    assert data["failures"] == "1"
    retry = dict(data, retry_at="")  # type: ignore[arg-type]
    assert vault.api("POST", f"{vault.mount}/data/{journal_path}", json={"data": retry}).is_success
    second = _sync(env, "--group", "New Connectors")
    assert [i["outcome"] for i in _items(second, "provision")] == ["done"]
    keys = _keys_of(sim, CG, str(bare["New Connectors"]["id"]))
    assert len(keys) == 1
    served = vault.kv_get("zpa/CONNECTOR_GRP/New-Connectors")["data"]["data"]  # type: ignore[index]
    assert served["key_id"] == keys[0]["id"]  # type: ignore[index]


def test_two_replicas_and_a_cli_run_at_once_make_one_key_per_group(
    sim: ZpaSimulator,
    vault: Vault,
    tmp_path: Path,
    start_daemon: Callable[..., DaemonProc],
) -> None:
    """Twelve new groups; two daemon replicas and a one-shot sync all start provisioning at
    once, again and again: every group ends with exactly one key, served."""
    groups = [sim.add_group(CG, f"Scale Group {n:02d}") for n in range(12)]
    sim.add_group(SE, "Other Edges")  # not selected: reported by the metrics, left alone
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
    replicas = [
        start_daemon(env, "--interval", "1s", "--jitter", "0", schedule=False) for _ in range(2)
    ]
    clis = [
        subprocess.Popen(
            [sys.executable, "-m", "vault_zpa", "sync", "--output", "json"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in clis:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 1), err  # 1: a group left to another writer this run

    def all_served() -> bool:
        for group in groups:
            read = vault.api(
                "GET", f"{vault.mount}/data/zpa/CONNECTOR_GRP/{group['name'].replace(' ', '-')}"
            )
            if read.status_code != 200:
                return False
        return True

    wait_for(all_served, timeout=60, what="every group served")
    # Let the replicas run a few more cycles over the finished state.
    before = [
        replica.metric("vault_zpa_syncs_total", result="success") or 0 for replica in replicas
    ]
    wait_for(
        lambda: (
            sum(r.metric("vault_zpa_syncs_total", result="success") or 0 for r in replicas)
            >= sum(before) + 3
        ),
        timeout=30,
        what="three more syncs",
    )
    for group in groups:
        keys = _keys_of(sim, CG, str(group["id"]))
        assert len(keys) == 1, (group["name"], keys)
        path = f"zpa/CONNECTOR_GRP/{str(group['name']).replace(' ', '-')}"
        served = vault.kv_get(path)["data"]["data"]  # type: ignore[index]
        assert served["key_id"] == keys[0]["id"]  # type: ignore[index]
    leader = next(r for r in replicas if r.metric("vault_zpa_leader") == 1)
    assert leader.metric("vault_zpa_keys", association_type=CG, state="ok") == len(sim.groups[CG])
    assert leader.metric("vault_zpa_keys", association_type=SE, state="no-key") == 1


def test_a_failed_group_listing_prunes_nothing_and_says_so(sim: ZpaSimulator, vault: Vault) -> None:
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_ZPA_RETRY_BUDGET": "1s"})
    _sync(env)
    group_id, group = next(iter(sim.groups[CG].items()))
    for key in _keys_of(sim, CG, group_id):
        del sim.keys[CG][str(key["id"])]
    del sim.groups[CG][group_id]
    # The group listing (GET .../appConnectorGroup) fails; key listings answer.
    sim.set_faults(error_rate=1.0, error_status=500, only_endpoint="appConnectorGroup")
    report = _sync(env, "--prune", code=1)
    assert _items(report, "prune") == []
    (orphan,) = _items(report, "orphan")
    assert "groups could not be listed" in str(orphan["reason"])
    assert any("groups" in e for e in report["errors"])  # type: ignore[attr-defined]
    assert vault.kv_get(f"zpa/CONNECTOR_GRP/{group['name']}")["data"]["data"] is not None  # type: ignore[index]


def test_provision_settings_are_checked_with_one_line(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    env = clean_env(sim.env(), vault.env)
    for body, words in [
        ("enabled = 'yes'", "must be true or false"),
        ("enabled = true\nmax_usage = 0", "from 1 to 5000"),
        ("enabled = true\nname_template = 'x'", "{timestamp}"),
        ("enabled = true\ngroup_pattern = '('", "group_pattern"),
        ("enabled = true\nbogus = 1", "unknown key"),
    ]:
        config = _config(tmp_path, f"[association_type.CONNECTOR_GRP.provision]\n{body}\n")
        result = run_cli("sync", "--config", config, env=env)
        assert result.returncode == 2, (body, result.stdout, result.stderr)
        assert words in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2
    pattern = _config(
        tmp_path,
        "[association_type.CONNECTOR_GRP]\nkey_name_pattern = 'prod-.*'\n"
        "[association_type.CONNECTOR_GRP.provision]\nenabled = true\n",
    )
    result = run_cli("sync", "--config", pattern, env=env)
    assert result.returncode == 2
    assert "does not select" in result.stderr
    capped = run_cli("sync", "--dry-run", env={**env, "VAULT_ZPA_MAX_PROVISIONS_PER_RUN": "0"})
    assert capped.returncode == 2
    assert "VAULT_ZPA_MAX_PROVISIONS_PER_RUN" in capped.stderr


def test_at_most_max_provisions_per_run(sim: ZpaSimulator, vault: Vault, tmp_path: Path) -> None:
    """The cap per run, and a pattern-selected policy with the certificate named by hand."""
    for n in range(3):
        sim.add_group(CG, f"Capped {n}")
    sim.add_group(CG, "Not Selected")
    config = _config(
        tmp_path,
        "[association_type.CONNECTOR_GRP.provision]\nenabled = true\n"
        "group_pattern = '^Capped'\nenrollment_cert = 'Connector'\n"
        "name_template = 'vz-{group}-{timestamp}'\n",
    )
    env = clean_env(
        sim.env(),
        vault.env,
        {"VAULT_ZPA_CONFIG": config, "VAULT_ZPA_MAX_PROVISIONS_PER_RUN": "2"},
    )
    report = _sync(env, code=1)  # a group left without a key this run is not "done"
    outcomes = sorted((i["outcome"], str(i["error"])[:20]) for i in _items(report, "provision"))
    assert outcomes == [("done", "None"), ("done", "None"), ("failed", "deferred to the next")]
    assert sum(1 for k in sim.keys[CG].values() if str(k["name"]).startswith("vz-Capped")) == 2
    assert [i["group_name"] for i in _items(report, "no-key")] == ["Not Selected"]
    _sync(env)
    assert sum(1 for k in sim.keys[CG].values() if str(k["name"]).startswith("vz-Capped")) == 3
    assert all(k["enrollmentCertId"] == sim.cert_id(CG) for k in sim.keys[CG].values())
    wrong = _config(
        tmp_path,
        "[association_type.CONNECTOR_GRP.provision]\nenabled = true\n"
        "enrollment_cert = 'No Such Cert'\n",
    )
    sim.add_group(CG, "Needs Cert")
    refused = run_cli("sync", env={**env, "VAULT_ZPA_CONFIG": wrong})  # checked at start-up
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no enrollment certificate named 'No Such Cert'" in refused.stderr
    assert not [k for k in sim.keys[CG].values() if k["zcomponentId"] == "Needs Cert"]


# ---- regressions from the adversarial review -------------------------------------------------


def _bare_sim() -> ZpaSimulator:
    return ZpaSimulator(seed=3, connector_groups=0, service_edge_groups=0, rate_limits=False)


def test_provisioning_is_refused_on_a_kv_v1_mount(
    sim: ZpaSimulator, vault: Vault, bare: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    """KV v1 has no check-and-set, so the journal could not keep one creation per group:
    refused before anything is made, one line, exit 2 (as rotation is)."""
    mount = vault.mount + "-v1"
    vault.api("POST", f"sys/mounts/{mount}", json={"type": "kv", "options": {"version": "1"}})
    env = clean_env(
        sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path), "VAULT_ZPA_MOUNT": mount}
    )
    result = run_cli("sync", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "provisioning needs a KV v2 mount" in result.stderr
    assert _keys_of(sim, CG, str(bare["New Connectors"]["id"])) == []


def test_a_keyless_group_never_touches_a_renamed_live_groups_secret(
    vault: Vault, tmp_path: Path
) -> None:
    """Group "Z" is renamed "Z2" and a new keyless "Z" appears: the old path still holds Z2's
    secret. The new group gets a conflict (provisioning off or on), and Z2's secret is
    neither marked, nor pruned, nor provisioned over."""
    with _bare_sim() as sim:
        renamed = sim.add_group(CG, "Z")
        sim.add_key(CG, str(renamed["id"]), name="za")
        env = clean_env(sim.env(), vault.env)
        _sync(env)
        renamed["name"] = "Z2"
        newcomer = sim.add_group(CG, "Z")
        for extra in ({}, {"VAULT_ZPA_CONFIG": _config(tmp_path)}):
            report = _sync({**env, **extra}, "--prune", code=1)
            (item,) = [i for i in _items(report) if i["group_id"] == newcomer["id"]]
            assert item["action"] == "conflict", item
            assert "still exists" in str(item["reason"])
            meta = vault.metadata("zpa/CONNECTOR_GRP/Z")["custom_metadata"]
            assert meta["key_state"] == "ok"  # type: ignore[index]
            held = vault.kv_get("zpa/CONNECTOR_GRP/Z")["data"]["data"]  # type: ignore[index]
            assert held["group_id"] == renamed["id"]  # type: ignore[index]
            assert _keys_of(sim, CG, str(newcomer["id"])) == []


def test_disabled_groups_and_unlisted_groups_are_not_provisioned(
    vault: Vault, tmp_path: Path
) -> None:
    with _bare_sim() as sim:
        off = sim.add_group(CG, "Disabled Keyed", enabled=False)
        used = sim.add_key(CG, str(off["id"]), name="old", max_usage=1)
        sim.enroll(CG, str(used["id"]), 1)
        unlisted = sim.add_group(CG, "Used Up")
        spent = sim.add_key(CG, str(unlisted["id"]), name="spent", max_usage=1)
        sim.enroll(CG, str(spent["id"]), 1)
        env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
        sim.set_faults(error_rate=1.0, error_status=500, only_endpoint="appConnectorGroup")
        failing = _sync({**env, "VAULT_ZPA_ZPA_RETRY_BUDGET": "1s"}, code=1)
        assert _items(failing, "provision") == []  # groups not listed: nobody is provisioned
        sim.clear_faults()
        report = _sync(env)
        assert [i["group_name"] for i in _items(report, "provision")] == ["Used Up"]
        assert [k["name"] for k in _keys_of(sim, CG, str(off["id"]))] == ["old"]
        (skipped,) = [i for i in _items(report) if i["group_id"] == off["id"]]
        assert "disabled in ZPA" in str(skipped["reason"])


def test_a_group_deleted_and_made_again_under_its_name_is_provisioned_at_its_path(
    vault: Vault, tmp_path: Path
) -> None:
    with _bare_sim() as sim:
        first = sim.add_group(CG, "Recreated")
        other = sim.add_group(CG, "Other")
        sim.add_key(CG, str(other["id"]), name="o")
        key = sim.add_key(CG, str(first["id"]), name="first")
        env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
        _sync(env)
        del sim.groups[CG][str(first["id"])]
        sim.keys[CG].pop(str(key["id"]))
        second = sim.add_group(CG, "Recreated")
        report = _sync(env)
        (item,) = _items(report, "provision")
        assert item["outcome"] == "done", item
        (made,) = _keys_of(sim, CG, str(second["id"]))
        held = vault.kv_get("zpa/CONNECTOR_GRP/Recreated")["data"]["data"]  # type: ignore[index]
        assert held["group_id"] == second["id"]  # type: ignore[index]
        assert held["key_id"] == made["id"]  # type: ignore[index]


def test_a_served_key_the_name_pattern_does_not_select_is_replaced_for_real(
    vault: Vault, tmp_path: Path
) -> None:
    with _bare_sim() as sim:
        group = sim.add_group(CG, "Legacy")
        sim.add_key(CG, str(group["id"]), name="legacy-key")
        env = clean_env(sim.env(), vault.env)
        _sync(env)
        config = _config(
            tmp_path,
            "[association_type.CONNECTOR_GRP]\nkey_name_pattern = 'vz-.*'\n"
            "[association_type.CONNECTOR_GRP.provision]\nenabled = true\n"
            "name_template = 'vz-{group}-{timestamp}'\n",
        )
        report = _sync({**env, "VAULT_ZPA_CONFIG": config})
        (item,) = _items(report, "provision")
        assert "created key" in str(item["reason"]), item
        held = vault.kv_get("zpa/CONNECTOR_GRP/Legacy")["data"]["data"]  # type: ignore[index]
        assert str(held["key_name"]).startswith("vz-Legacy-")  # type: ignore[index]


def test_an_unmanaged_soft_deleted_path_is_a_conflict_not_taken(
    sim: ZpaSimulator, vault: Vault, bare: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    path = "zpa/CONNECTOR_GRP/New-Connectors"
    vault.api("POST", f"{vault.mount}/data/{path}", json={"data": {"by": "hand"}})
    vault.api("POST", f"{vault.mount}/delete/{path}")
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
    report = _sync(env, code=1)
    (item,) = [i for i in _items(report) if i["group_name"] == "New Connectors"]
    assert item["action"] == "conflict"
    assert "not managed by vault-zpa" in str(item["reason"])
    assert _keys_of(sim, CG, str(bare["New Connectors"]["id"])) == []
    assert "managed_by" not in (vault.metadata(path)["custom_metadata"] or {})  # type: ignore[operator]


def test_an_unfinished_provisioning_of_a_deleted_group_is_ended(
    sim: ZpaSimulator, vault: Vault, bare: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": _config(tmp_path)})
    killed = run_cli(
        "sync", "--group", "New Connectors", env={**env, "VAULT_ZPA_FAULT_KILL_AT": "intent"}
    )
    assert killed.returncode == -signal.SIGKILL
    gid = str(bare["New Connectors"]["id"])
    del sim.groups[CG][gid]
    report = _sync(env)
    (item,) = [i for i in _items(report, "provision") if i["group_id"] == gid]
    assert "gone from ZPA" in str(item["reason"])
    journal = vault.kv_get(f"zpa/_vault-zpa/rotation/CONNECTOR_GRP/{gid}")["data"]["data"]  # type: ignore[index]
    assert journal["state"] == "idle"  # type: ignore[index]
    assert "deleted in ZPA" in str(journal["last_error"])  # type: ignore[index]
    assert _keys_of(sim, CG, gid) == []
    again = _sync(env)
    assert [i for i in _items(again, "provision") if i["group_id"] == gid] == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("name_template = '{group.x}-{timestamp}'", "may only use the placeholders"),
        ("name_template = '{group:>999999999999}{timestamp}'", "may only use the placeholders"),
        ("name_template = '{key_name}-{timestamp}'", "may only use the placeholders"),
    ],
)
def test_odd_name_templates_are_one_line_exit_2(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path, body: str, words: str
) -> None:
    env = clean_env(sim.env(), vault.env)
    for section in ("provision", "rotation"):
        if section == "rotation" and "key_name" in body:
            continue  # {key_name} is the old key's name: rotation has one
        config = _config(
            tmp_path, f"[association_type.CONNECTOR_GRP.{section}]\nenabled = true\n{body}\n"
        )
        result = run_cli("sync", "--dry-run", "--config", config, env=env)
        assert result.returncode == 2, (section, result.stdout, result.stderr)
        assert words in result.stderr
        assert "Traceback" not in result.stderr


def test_a_name_pattern_most_groups_would_miss_is_refused_at_start_up(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    env = clean_env(sim.env(), vault.env)
    config = _config(
        tmp_path,
        "[association_type.CONNECTOR_GRP]\nkey_name_pattern = 'Connector-.*'\n"
        "[association_type.CONNECTOR_GRP.provision]\nenabled = true\n",
    )
    result = run_cli("sync", "--dry-run", "--config", config, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "does not select" in result.stderr


def test_a_failing_provisioning_does_not_hold_up_other_groups_rotations(
    sim: ZpaSimulator,
    vault: Vault,
    bare: dict[str, dict[str, object]],
    tmp_path: Path,
    start_daemon: Callable[..., DaemonProc],
) -> None:
    """Creates of CONNECTOR_GRP keys fail for good; a Service Edge key due by usage is
    rotated all the same (a provisioning failure leaves the rest of Vault known)."""
    config = _config(
        tmp_path,
        PROVISION_ON + "\n[association_type.SERVICE_EDGE_GRP.rotation]\n"
        'enabled = true\nat_usage_ratio = 0.5\ngrace = "0s"\n',
    )
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": config})
    edge_id, edge = next((gid, g) for gid, g in sim.groups[SE].items() if _keys_of(sim, SE, gid))
    (old,) = _keys_of(sim, SE, edge_id)
    sim.enroll(SE, str(old["id"]), 6)
    sim.set_faults(error_rate=1.0, error_status=500, only_association_type=CG, only_method="POST")
    daemon = start_daemon(
        {**env, "VAULT_ZPA_ZPA_RETRY_BUDGET": "1s"}, "--interval", "1s", "--jitter", "0",
        schedule=False,
    )  # fmt: skip
    path = f"zpa/SERVICE_EDGE_GRP/{edge['name']}"

    def rotated() -> bool:
        read = vault.api("GET", f"{vault.mount}/data/{path}")
        return read.status_code == 200 and read.json()["data"]["data"]["key_id"] != old["id"]

    wait_for(rotated, timeout=60, what="the Service Edge key rotated")
    assert daemon.metric("vault_zpa_keys", association_type=CG, state="failed") == 1
    assert _keys_of(sim, CG, str(bare["New Connectors"]["id"])) == []


def test_a_rotations_new_key_used_up_in_its_grace_does_not_leave_the_group_keyless(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """Rotation (grace 1 h) and provisioning both on: the new key is used up inside the grace
    and the old one too. The rotation ends within its grace (nothing removed), and the
    provisioning then gives the group a usable key, instead of waiting out the hour."""
    config = _config(
        tmp_path,
        PROVISION_ON + "\n[association_type.CONNECTOR_GRP.rotation]\n"
        'enabled = true\ngrace = "1h"\n',
    )
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_CONFIG": config})
    _sync(env)
    group_id, group = next(iter(sim.groups[CG].items()))
    (old,) = _keys_of(sim, CG, group_id)
    name = str(group["name"])
    rotated = run_cli("rotate", "--association-type", CG, "--group", name, env=env)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new = next(k for k in _keys_of(sim, CG, group_id) if k["id"] != old["id"])
    for key in (old, new):
        sim.enroll(CG, str(key["id"]), int(str(key["maxUsage"])))
    _sync(env, code=None)  # the group has no usable key; the rotation still holds the journal
    resumed = run_cli("rotate", "--all-due", "--output", "json", env=env)
    assert "ended within its grace" in resumed.stdout, resumed.stdout + resumed.stderr
    assert {old["id"], new["id"]} <= {k["id"] for k in _keys_of(sim, CG, group_id)}  # kept
    report = _sync(env)
    (item,) = [i for i in _items(report, "provision") if i["group_id"] == group_id]
    assert item["outcome"] == "done", item
    served = vault.kv_get(f"zpa/CONNECTOR_GRP/{name}")["data"]["data"]  # type: ignore[index]
    assert served["key_id"] not in (old["id"], new["id"])  # type: ignore[index]
    assert sim.accepts(served["provisioning_key"])  # type: ignore[index]
