"""The one-shot CLI through its real entry point: every flag, both outputs, every exit code."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import ROOT, Vault, clean_env, run_cli
from vault_zpa.testing.zpa_simulator import ZpaSimulator

SCHEMA = json.loads((ROOT / "docs" / "report-schema.json").read_text())


def sync_json(*args: str, env: dict[str, str], code: int = 0) -> dict[str, object]:
    result = run_cli("sync", "--output", "json", *args, env=env)
    assert result.returncode == code, result.stdout + result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, SCHEMA)
    return report  # type: ignore[no-any-return]


def items(report: dict[str, object]) -> list[dict[str, object]]:
    return report["items"]  # type: ignore[return-value]


def test_dry_run_plans_and_writes_nothing(sim: ZpaSimulator, vault: Vault) -> None:
    """--dry-run lists five creates as planned and leaves the mount empty."""
    env = clean_env(sim.env(), vault.env)
    report = sync_json("--dry-run", env=env)
    assert report["dry_run"] is True
    assert [(i["action"], i["outcome"]) for i in items(report)] == [("create", "planned")] * 5
    assert vault.api("LIST", f"{vault.mount}/metadata/zpa/CONNECTOR_GRP").status_code == 404
    text = run_cli("sync", "--dry-run", env=env)
    assert text.returncode == 0
    assert "dry run: 5 create (5 would be written)" in text.stdout


def test_association_type_filter(sim: ZpaSimulator, vault: Vault) -> None:
    """--association-type SERVICE_EDGE_GRP touches only Service Edge groups."""
    env = clean_env(sim.env(), vault.env)
    report = sync_json("--association-type", "SERVICE_EDGE_GRP", env=env)
    assert {i["association_type"] for i in items(report)} == {"SERVICE_EDGE_GRP"}
    assert len(items(report)) == 2
    assert vault.api("LIST", f"{vault.mount}/metadata/zpa/CONNECTOR_GRP").status_code == 404


def test_group_filter_by_exact_name(sim: ZpaSimulator, vault: Vault) -> None:
    """--group NAME (repeatable) syncs exactly those groups."""
    names = [g["name"] for g in sim.groups["CONNECTOR_GRP"].values()][:2]
    env = clean_env(sim.env(), vault.env)
    report = sync_json("--group", names[0], "--group", names[1], env=env)
    assert sorted(i["group_name"] for i in items(report)) == sorted(names)  # type: ignore[type-var]


def test_prune_soft_deletes_only_with_the_flag(sim: ZpaSimulator, vault: Vault) -> None:
    """A group gone from ZPA is an orphan; --prune soft-deletes it, undelete brings it back.
    A group whose keys were all deleted but which is itself alive is never pruned."""
    env = clean_env(sim.env(), vault.env)
    sync_json(env=env)
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    for key_id in [
        k for k, v in sim.keys["CONNECTOR_GRP"].items() if v["zcomponentId"] == group_id
    ]:
        del sim.keys["CONNECTOR_GRP"][key_id]
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    alive = sync_json("--prune", env=env)
    assert [(i["action"], i["path"]) for i in items(alive) if i["action"] != "unchanged"] == [
        ("no-key", path)
    ]
    assert vault.kv_get(path)["data"]["data"] is not None  # type: ignore[index]
    del sim.groups["CONNECTOR_GRP"][group_id]  # now the group itself is gone
    orphan = sync_json(env=env)
    assert [(i["action"], i["path"]) for i in items(orphan) if i["action"] != "unchanged"] == [
        ("orphan", path)
    ]
    assert vault.kv_get(path)["data"]["data"] is not None  # type: ignore[index]
    pruned = sync_json("--prune", env=env)
    assert [(i["action"], i["outcome"]) for i in items(pruned) if i["path"] == path] == [
        ("prune", "done")
    ]
    assert vault.kv_get(path)["data"]["data"] is None  # type: ignore[index]
    vault.bao("kv", "undelete", "-versions=1", f"{vault.mount}/{path}")
    assert vault.kv_get(path)["data"]["data"]["group_name"] == group["name"]  # type: ignore[index]


def test_failed_listing_syncs_the_other_type_and_prunes_nothing(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """CONNECTOR_GRP listing fails mid-way: SERVICE_EDGE_GRP is synced, nothing is pruned,
    exit code 1, and the report says why."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_ZPA_RETRY_BUDGET": "2s"})
    sync_json(env=env)
    edge_group = next(iter(sim.groups["SERVICE_EDGE_GRP"].values()))
    edge_key = next(
        k for k in sim.keys["SERVICE_EDGE_GRP"].values() if k["zcomponentId"] == edge_group["id"]
    )
    sim.enroll("SERVICE_EDGE_GRP", edge_key["id"], 2)
    sim.set_faults(error_rate=1.0, error_status=500, only_association_type="CONNECTOR_GRP")
    report = sync_json("--prune", env=env, code=1)
    assert report["ok"] is False
    listings = {entry["association_type"]: entry for entry in report["listings"]}  # type: ignore[attr-defined]
    assert listings["CONNECTOR_GRP"]["complete"] is False
    assert "HTTP 500" in listings["CONNECTOR_GRP"]["error"]
    assert listings["SERVICE_EDGE_GRP"]["complete"] is True
    assert all(i["association_type"] == "SERVICE_EDGE_GRP" for i in items(report))
    assert {i["action"] for i in items(report)} == {"metadata", "unchanged"}
    assert any("CONNECTOR_GRP" in e for e in report["errors"])  # type: ignore[attr-defined]
    for group in sim.groups["CONNECTOR_GRP"].values():
        assert vault.kv_get(f"zpa/CONNECTOR_GRP/{group['name']}")["data"]["data"]  # type: ignore[index]
    text = run_cli("sync", "--prune", env=env)
    assert text.returncode == 1
    assert "error: CONNECTOR_GRP:" in text.stdout


def test_reveal_is_the_only_way_to_see_a_key(sim: ZpaSimulator, vault: Vault) -> None:
    """Key values appear in JSON and text only with --reveal."""
    env = clean_env(sim.env(), vault.env)
    secret = next(iter(sim.keys["CONNECTOR_GRP"].values()))["provisioningKey"]
    hidden = run_cli("sync", "--dry-run", "--output", "json", env=env)
    assert secret not in hidden.stdout
    shown = sync_json("--dry-run", "--reveal", env=env)
    assert secret in [i.get("provisioning_key") for i in items(shown)]
    text = run_cli("sync", "--dry-run", "--reveal", env=env)
    assert secret in text.stdout


@pytest.mark.parametrize(
    ("args", "env_extra", "message"),
    [
        (["--association-type", "NOPE"], {}, "Invalid value for '--association-type'"),
        ([], {"ZPA_CLOUD": "MARS"}, "ZPA_CLOUD='MARS' is not a known ZPA cloud"),
        ([], {"ZPA_BASE_URL": "http://zpa.example.com"}, "plain http to a non-loopback host"),
        ([], {"VAULT_ZPA_CONCURRENCY": "0"}, "VAULT_ZPA_CONCURRENCY: must be a whole number"),
        ([], {"ZSCALER_CLIENT_ID": "x", "ZSCALER_CLIENT_SECRET": "y"}, "both legacy ZPA API key"),
        ([], {"VAULT_ZPA_PATH_TEMPLATE": "{group}"}, "must start with '{prefix}/'"),
        (["--config", "/nonexistent.toml"], {}, "cannot read the config file"),
    ],
)
def test_bad_usage_and_configuration_exit_2(
    sim: ZpaSimulator, vault: Vault, args: list[str], env_extra: dict[str, str], message: str
) -> None:
    """Bad flags, environment or config: exit 2, one clear line, no traceback."""
    env = clean_env(sim.env(), vault.env, env_extra)
    if "ZPA_BASE_URL" in env_extra:
        env["ZPA_BASE_URL"] = env_extra["ZPA_BASE_URL"]
    if "ZPA_CLOUD" in env_extra:
        del env["ZPA_BASE_URL"]
    result = run_cli("sync", *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_credentials_exit_2(vault: Vault) -> None:
    """No ZPA credentials at all: exit 2 and a line saying which variables to set."""
    result = run_cli("sync", env=clean_env(vault.env))
    assert result.returncode == 2
    assert "no ZPA credentials" in result.stderr
    assert "ZPA_CLIENT_ID" in result.stderr


def test_config_file_and_precedence(sim: ZpaSimulator, vault: Vault, tmp_path: Path) -> None:
    """The TOML file is read; env beats file; flags beat env."""
    config = tmp_path / "vault-zpa.toml"
    config.write_text(
        '[vault]\nprefix = "from-file"\n'
        '[association_type.SERVICE_EDGE_GRP]\npath_template = "{prefix}/edges/{group_id}"\n'
    )
    env = clean_env(sim.env(), vault.env)
    report = sync_json("--config", str(config), env=env)
    paths = {i["path"] for i in items(report)}
    edge_ids = set(sim.groups["SERVICE_EDGE_GRP"])
    assert {f"from-file/edges/{g}" for g in edge_ids} <= paths  # type: ignore[operator]
    env["VAULT_ZPA_PREFIX"] = "from-env"
    report = sync_json("--config", str(config), "--dry-run", env=env)
    assert all(str(i["path"]).startswith("from-env/") for i in items(report))
    report = sync_json("--config", str(config), "--dry-run", "--prefix", "from-flag", env=env)
    assert all(str(i["path"]).startswith("from-flag/") for i in items(report))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[vault]\nconcurrency = 'many'\n", "[vault] concurrency: must be a whole number"),
        ("[vault]\nprefix = 5\n", "[vault] prefix: must be a string"),
        ("[vault]\nbogus = 1\n", "[vault] bogus: unknown key"),
        ("[nope]\nx = 1\n", "unknown section or key 'nope'"),
        ("[vault\n", "not valid TOML"),
        ("[association_type.WIDGETS]\nlease = '1d'\n", "[association_type.WIDGETS]: unknown"),
        (
            "[association_type.CONNECTOR_GRP]\nkey_name_pattern = '(['\n",
            "key_name_pattern: is not a valid regular expression",
        ),
        ("[sync]\nlease = '-5d'\n", "[sync] lease: must be a duration"),
    ],
)
def test_bad_config_file_names_file_key_and_reason(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path, body: str, message: str
) -> None:
    """Every config problem is one line with the file, the key and the reason; exit 2."""
    config = tmp_path / "bad.toml"
    config.write_text(body)
    result = run_cli("sync", "--config", str(config), env=clean_env(sim.env(), vault.env))
    assert result.returncode == 2, result.stderr
    assert str(config) in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_reports_usage_drift_and_orphans(sim: ZpaSimulator, vault: Vault) -> None:
    """status: in-sync groups, a near-exhausted key flagged, drift and orphans named; JSON too."""
    env = clean_env(sim.env(), vault.env)
    sync_json(env=env)
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    key = next(k for k in sim.keys["CONNECTOR_GRP"].values() if k["zcomponentId"] == group_id)
    sim.enroll("CONNECTOR_GRP", key["id"], 8)
    edge_id, edge = next(iter(sim.groups["SERVICE_EDGE_GRP"].items()))
    sim.add_key("SERVICE_EDGE_GRP", edge_id, name="newer")
    result = run_cli("status", "--output", "json", env=env)
    assert result.returncode == 1, result.stderr  # drift needs attention
    status = json.loads(result.stdout)
    by_name = {g["group_name"]: g for g in status["groups"]}
    assert by_name[group["name"]]["near_exhaustion"] is True
    assert by_name[group["name"]]["usage_ratio"] == 0.8
    assert by_name[edge["name"]]["state"] == "drift"
    assert status["in_sync"] is False
    assert by_name[group["name"]]["lease_expires_at"].endswith("Z")
    text = run_cli("status", env=env)
    assert "warning:" in text.stdout
    assert "8/10 !" in text.stdout
    assert key["provisioningKey"] not in text.stdout + result.stdout


def test_status_marks_expired_leases_and_says_when_nothing_rotates_them(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """The simulator's keys are months old, past the 30-day lease: with rotation off, status
    marks each lease expired and says nothing will rotate them; with rotation on, the note
    goes."""
    env = clean_env(sim.env(), vault.env)
    sync_json(env=env)
    off = run_cli("status", env=env)
    assert "note: 5 lease(s) have expired (!) and rotation is off" in off.stdout, off.stdout
    assert off.stdout.count(" !") >= 5
    due = run_cli("rotate", "--all-due", "--dry-run", env=env)
    assert "rotate: nothing is due (rotation is off for every type)" in due.stdout
    config = tmp_path / "rotation.toml"
    config.write_text("[association_type.CONNECTOR_GRP.rotation]\nenabled = true\n")
    on = run_cli("status", "--config", str(config), env=env)
    assert "rotation is off" not in on.stdout
    assert on.stdout.count(" !") >= 5


def test_fetch_from_a_missing_mount_is_a_configuration_error(vault: Vault, tmp_path: Path) -> None:
    """A mount that does not exist is exit 2 naming the mount, not 'no provisioning key'."""
    env = clean_env(vault.env, {"VAULT_ZPA_MOUNT": "no-such-mount", "VAULT_ZPA_KV_VERSION": "2"})
    done = run_cli(
        "fetch",
        "--association-type",
        "CONNECTOR_GRP",
        "--group",
        "G",
        "--out",
        str(tmp_path / "key"),
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "no secrets engine mounted at 'no-such-mount'" in done.stderr
    assert not (tmp_path / "key").exists()
