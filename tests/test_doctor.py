"""`vault-zpa doctor` (issue 20): every check passes on a good install and each one fails, once,
on purpose, through the real entry point: the line names the problem and the fix, the exit
code says problems (1) or could-not-run (2), and no secret is ever printed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Vault, clean_env, run_cli
from vault_zpa import doctor
from vault_zpa.policy import daemon_policy
from vault_zpa.testing.openbao import OpenBaoDevServer, free_port
from vault_zpa.testing.zpa_simulator import ZpaSimulator

ORDER = [
    "config",
    "zpa.address",
    "zpa.credentials",
    "zpa.customer_id",
    "zpa.list.CONNECTOR_GRP",
    "zpa.list.SERVICE_EDGE_GRP",
    "zpa.microtenant",
    "vault.address",
    "vault.unsealed",
    "vault.token",
    "vault.mount",
    "vault.capabilities",
    "vault.leader_lease",
    "clock",
]


def run(env: dict[str, str], *args: str, secrets: tuple[str, ...] = ()) -> tuple[int, Any]:
    """doctor --output json through `python -m vault_zpa`; (exit code, {name: check})."""
    out = run_cli("doctor", "--output", "json", *args, env=env, timeout=60)
    for secret in secrets:
        assert secret not in out.stdout + out.stderr
    document = json.loads(out.stdout)
    assert document["exit_code"] == out.returncode
    assert document["ok"] is (out.returncode == 0)
    checks = {c["name"]: c for c in document["checks"]}
    assert list(checks) == [n for n in ORDER if n in checks]  # always in this order
    return out.returncode, checks


def failed(checks: dict[str, Any]) -> list[str]:
    return [name for name, c in checks.items() if c["status"] == "fail"]


@pytest.fixture
def env(sim: ZpaSimulator, vault: Vault) -> dict[str, str]:
    return clean_env(sim.env(), vault.env)


def secrets_of(sim: ZpaSimulator, vault: Vault) -> tuple[str, ...]:
    return (sim.client_secret, vault.server.root_token)


def test_all_good_passes_every_check_in_order_and_prints_no_secret(
    sim: ZpaSimulator, vault: Vault, env: dict[str, str]
) -> None:
    """A good install: every check ok, exit 0, text and JSON, no secret in either."""
    code, checks = run(env, secrets=secrets_of(sim, vault))
    assert code == 0, checks
    assert list(checks) == ORDER
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "3 provisioning key(s) in 3 group(s)" in checks["zpa.list.CONNECTOR_GRP"]["detail"]
    assert "2 provisioning key(s)" in checks["zpa.list.SERVICE_EDGE_GRP"]["detail"]
    assert "KV v2" in checks["vault.mount"]["detail"]
    text = run_cli("doctor", env=env, timeout=60)
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert len(lines) == len(ORDER) + 1
    assert lines[-1] == "doctor: all good"
    assert [line.split()[1] for line in lines[:-1]] == ORDER
    assert sim.client_secret not in text.stdout + text.stderr


def test_config_that_does_not_parse_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    """A bad value in the config file: the config line says which, nothing else runs, exit 2."""
    config = tmp_path / "bad.toml"
    config.write_text('[daemon]\ninterval = "soon"\n')
    code, checks = run(env, "--config", str(config))
    assert code == 2
    assert list(checks) == ["config"]
    assert checks["config"]["status"] == "fail"
    assert "interval" in checks["config"]["detail"]


def test_zpa_address_that_does_not_answer(sim: ZpaSimulator, vault: Vault) -> None:
    """Nothing listens at ZPA_BASE_URL: that line fails with the fix, the ZPA rest is skipped,
    Vault is still checked."""
    env = clean_env(sim.env(), vault.env, {"ZPA_BASE_URL": f"http://127.0.0.1:{free_port()}"})
    code, checks = run(env)
    assert code == 1
    assert failed(checks) == ["zpa.address"]
    assert "ZPA_BASE_URL" in checks["zpa.address"]["fix"]
    assert checks["zpa.credentials"]["status"] == "skip"
    assert checks["vault.token"]["status"] == "ok"


def test_wrong_zpa_secret(sim: ZpaSimulator, vault: Vault) -> None:
    """A secret ZPA does not know: credentials fail (naming the settings, not the value)."""
    wrong = "not-the-secret-" + uuid.uuid4().hex
    env = clean_env(sim.env(), vault.env, {"ZPA_CLIENT_SECRET": wrong})
    code, checks = run(env, secrets=(wrong, sim.client_secret))
    assert code == 1
    assert failed(checks) == ["zpa.credentials"]
    assert "ZPA_CLIENT_SECRET" in checks["zpa.credentials"]["fix"]
    assert checks["zpa.customer_id"]["status"] == "skip"


def test_wrong_customer_id(sim: ZpaSimulator, vault: Vault) -> None:
    """Signed in, but the customer id is not this client's: customer_id fails."""
    env = clean_env(sim.env(), vault.env, {"ZPA_CUSTOMER_ID": "216196257331999999"})
    code, checks = run(env)
    assert code == 1
    assert failed(checks) == ["zpa.customer_id"]
    assert checks["zpa.credentials"]["status"] == "ok"
    assert "ZPA_CUSTOMER_ID" in checks["zpa.customer_id"]["fix"]
    assert checks["zpa.list.CONNECTOR_GRP"]["status"] == "skip"


def test_an_association_type_that_does_not_list(sim: ZpaSimulator, env: dict[str, str]) -> None:
    """ZPA refuses one association type's listing: that type's line fails, the other counts."""
    sim.set_faults(error_rate=1.0, error_status=400, only_association_type="SERVICE_EDGE_GRP")
    code, checks = run(env)
    assert code == 1
    assert failed(checks) == ["zpa.list.SERVICE_EDGE_GRP"]
    assert "HTTP 400" in checks["zpa.list.SERVICE_EDGE_GRP"]["detail"]
    assert checks["zpa.list.CONNECTOR_GRP"]["status"] == "ok"


def test_unknown_microtenant(sim: ZpaSimulator, vault: Vault) -> None:
    """ZPA_MICROTENANT_ID names no microtenant of the customer: microtenant fails."""
    env = clean_env(sim.env(), vault.env, {"ZPA_MICROTENANT_ID": "999999"})
    code, checks = run(env)
    assert code == 1
    assert failed(checks) == ["zpa.microtenant"]
    assert "999999" in checks["zpa.microtenant"]["detail"]


def test_vault_address_that_does_not_answer(sim: ZpaSimulator, vault: Vault) -> None:
    """Nothing listens at VAULT_ADDR: vault.address fails, the Vault rest is skipped."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ADDR": f"http://127.0.0.1:{free_port()}"})
    code, checks = run(env)
    assert code == 1
    assert failed(checks) == ["vault.address"]
    assert "VAULT_ADDR" in checks["vault.address"]["fix"]
    assert {checks[n]["status"] for n in ORDER[8:]} == {"skip"}


@pytest.fixture
def sealed_bao(tmp_path: Path) -> Iterator[OpenBaoDevServer]:
    """A dev server of its own (the session's stays unsealed), sealed."""
    server = OpenBaoDevServer(log_dir=str(tmp_path))
    server.start()
    server.seal()
    yield server
    server.stop()


def test_sealed_vault(sim: ZpaSimulator, sealed_bao: OpenBaoDevServer) -> None:
    """A sealed Vault: vault.unsealed fails with the fix; token to lease are skipped; the clock
    is still compared."""
    env = clean_env(sim.env(), sealed_bao.env())
    code, checks = run(env, secrets=(sealed_bao.root_token,))
    assert code == 1
    assert failed(checks) == ["vault.unsealed"]
    assert "sealed" in checks["vault.unsealed"]["detail"]
    assert "unseal" in checks["vault.unsealed"]["fix"]
    assert checks["vault.token"]["status"] == "skip"
    assert checks["clock"]["status"] == "ok"


def test_invalid_vault_token(sim: ZpaSimulator, vault: Vault) -> None:
    """A token Vault does not know: vault.token fails; mount and after are skipped."""
    bad = "hvs.not-a-token-" + uuid.uuid4().hex
    env = clean_env(sim.env(), vault.env, {"VAULT_TOKEN": bad})
    code, checks = run(env, secrets=(bad,))
    assert code == 1
    assert failed(checks) == ["vault.token"]
    assert checks["vault.mount"]["status"] == "skip"


def test_missing_mount(sim: ZpaSimulator, vault: Vault) -> None:
    """VAULT_ZPA_MOUNT names no mount: vault.mount fails with `vault secrets enable`."""
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_MOUNT": "no-such-mount"})
    code, checks = run(env)
    assert code == 1
    assert failed(checks) == ["vault.mount"]
    assert "secrets enable" in checks["vault.mount"]["fix"]
    assert checks["vault.capabilities"]["status"] == "skip"


def test_kv_v1_mount_where_v2_is_configured(sim: ZpaSimulator, vault: Vault) -> None:
    """VAULT_ZPA_KV_VERSION=2 on a KV v1 mount: vault.mount fails and says set it to 1."""
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    vault.api(
        "POST", f"sys/mounts/{mount}", json={"type": "kv", "options": {"version": "1"}}
    ).raise_for_status()
    try:
        env = clean_env(
            sim.env(), vault.env, {"VAULT_ZPA_MOUNT": mount, "VAULT_ZPA_KV_VERSION": "2"}
        )
        code, checks = run(env)
        assert code == 1
        assert failed(checks) == ["vault.mount"]
        assert "KV v1" in checks["vault.mount"]["detail"]
        assert "VAULT_ZPA_KV_VERSION" in checks["vault.mount"]["fix"]
        # Detected (auto) instead: the mount is fine, but the leader lease needs KV v2.
        env.pop("VAULT_ZPA_KV_VERSION")
        code, checks = run(env)
        assert code == 1
        assert failed(checks) == ["vault.leader_lease"]
        assert "--no-ha" in checks["vault.leader_lease"]["fix"]
    finally:
        vault.api("DELETE", f"sys/mounts/{mount}")


def token_with_policy(vault: Vault, name: str, policy: str) -> str:
    vault.api("PUT", f"sys/policies/acl/{name}", json={"policy": policy}).raise_for_status()
    response = vault.api(
        "POST", "auth/token/create", json={"policies": [name], "ttl": "1h", "no_parent": True}
    )
    response.raise_for_status()
    return str(response.json()["auth"]["client_token"])


def test_a_policy_lacking_one_capability(sim: ZpaSimulator, vault: Vault) -> None:
    """The daemon policy minus `patch` on metadata: vault.capabilities names exactly that."""
    policy = daemon_policy(mount=vault.mount, prefix="zpa", kv_version=2).text
    assert '"create", "read", "update", "patch", "list"' in policy
    policy = policy.replace(
        '"create", "read", "update", "patch", "list"', '"create", "read", "update", "list"'
    )
    token = token_with_policy(vault, f"doctor-{vault.mount}", policy)
    code, checks = run(clean_env(sim.env(), vault.env, {"VAULT_TOKEN": token}), secrets=(token,))
    assert code == 1
    assert failed(checks) == ["vault.capabilities"]
    assert checks["vault.capabilities"]["detail"] == (
        f"the token lacks patch on {vault.mount}/metadata/zpa/*"
    )
    assert "policy apply" in checks["vault.capabilities"]["fix"]
    assert "1h" in checks["vault.token"]["detail"] or "59m" in checks["vault.token"]["detail"]


def test_the_full_daemon_policy_passes(sim: ZpaSimulator, vault: Vault) -> None:
    """A token holding exactly the daemon policy (as `policy render` writes it) passes."""
    policy = daemon_policy(mount=vault.mount, prefix="zpa", kv_version=2).text
    token = token_with_policy(vault, f"doctor-full-{vault.mount}", policy)
    code, checks = run(clean_env(sim.env(), vault.env, {"VAULT_TOKEN": token}))
    assert code == 0, failed(checks)


def test_a_leader_lease_path_the_token_may_not_write(sim: ZpaSimulator, vault: Vault) -> None:
    """The daemon policy plus a deny on `_vault-zpa/`: keys are fine, the lease is not."""
    policy = daemon_policy(mount=vault.mount, prefix="zpa", kv_version=2).text
    policy += f'\npath "{vault.mount}/data/zpa/_vault-zpa/*" {{\n  capabilities = ["deny"]\n}}\n'
    token = token_with_policy(vault, f"doctor-lease-{vault.mount}", policy)
    code, checks = run(clean_env(sim.env(), vault.env, {"VAULT_TOKEN": token}))
    assert code == 1
    assert failed(checks) == ["vault.leader_lease"]
    assert "create, read, update" in checks["vault.leader_lease"]["detail"]


def test_a_held_leader_lease_is_shown(sim: ZpaSimulator, vault: Vault, env: dict[str, str]) -> None:
    """A lease some replica holds is reported with its holder (read only: it stays as it is),
    although a live lease always carries a deletion_time (delete_version_after), as the
    daemon's does."""
    vault.api(
        "POST",
        f"{vault.mount}/metadata/zpa/_vault-zpa/leader",
        json={"delete_version_after": "60s"},
    ).raise_for_status()
    vault.api(
        "POST", f"{vault.mount}/data/zpa/_vault-zpa/leader", json={"data": {"holder": "pod-a"}}
    ).raise_for_status()
    code, checks = run(env)
    assert code == 0
    assert "held by 'pod-a', version 1" in checks["vault.leader_lease"]["detail"]
    after = vault.api("GET", f"{vault.mount}/data/zpa/_vault-zpa/leader").json()["data"]
    assert after["metadata"]["version"] == 1


def test_clock_skew_against_vault(sim: ZpaSimulator, vault: Vault) -> None:
    """This host's clock 2 minutes ahead of Vault's Date header: the clock check fails (in
    process, with the clock handed in: the machine's clock is not ours to move)."""
    env = clean_env(sim.env(), vault.env)
    checks = list(doctor.diagnose(config_path=None, environ=env, clock=lambda: time.time() + 120))
    clock = checks[-1]
    assert clock.name == "clock"
    assert clock.status == "fail"
    assert "ahead of Vault" in clock.detail
    assert "chrony" in (clock.fix or "")
    assert doctor.exit_code(checks) == 1
    checks = list(doctor.diagnose(config_path=None, environ=env, clock=lambda: time.time() - 10))
    assert checks[-1].status == "warn"
    assert "behind" in checks[-1].detail
    assert doctor.exit_code(checks) == 0


def test_vault_address_that_is_not_vault(sim: ZpaSimulator, vault: Vault) -> None:
    """An HTTP server that is not Vault at VAULT_ADDR: any answer used to count as 'answers'
    and 'initialized and unsealed'. Now vault.address fails and the rest is skipped."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        addr = f"http://127.0.0.1:{server.server_address[1]}"
        code, checks = run(clean_env(sim.env(), vault.env, {"VAULT_ADDR": addr}))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert failed(checks) == ["vault.address"]
    assert "not as Vault" in checks["vault.address"]["detail"]
    assert {checks[n]["status"] for n in ORDER[8:]} == {"skip"}


def test_seal_state_is_read_outside_the_namespace(sim: ZpaSimulator, vault: Vault) -> None:
    """sys/health is root-only: asked inside VAULT_NAMESPACE, Vault answers 400 'operation
    unavailable in namespaces', which doctor read as 'unknown version' and 'unsealed'."""
    env = clean_env(sim.env(), vault.env, {"VAULT_NAMESPACE": "no-such-ns-" + uuid.uuid4().hex})
    code, checks = run(env)
    assert code == 1
    assert "unknown version" not in checks["vault.address"]["detail"]
    assert checks["vault.unsealed"]["status"] == "ok"
    assert failed(checks) == ["vault.token"]
    assert "namespace" in checks["vault.token"]["detail"]


def test_https_to_a_plain_http_vault_is_named(sim: ZpaSimulator, vault: Vault) -> None:
    """The same words as sync: https:// to plain http is not an untrusted certificate."""
    addr = vault.server.addr.replace("http://", "https://")
    code, checks = run(clean_env(sim.env(), vault.env, {"VAULT_ADDR": addr}))
    assert code == 1
    assert "answers plain HTTP" in checks["vault.address"]["detail"]
