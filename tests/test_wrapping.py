"""Secure introduction with response wrapping, on a real OpenBao: `vault-zpa wrap` hands out a
single-use token, `vault-zpa fetch --wrapped-token-file` redeems it on a host holding no Vault
token; a token redeemed twice, expired, or wrapping anything but the group's secret is one line
and exit 2, and neither the key nor the token shows in any output."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import CompletedProcess

import httpx
import pytest

from tests.conftest import ROOT, Vault, clean_env, run_cli
from tests.test_readme import blocks
from vault_zpa import policy, wrapping
from vault_zpa.errors import ConfigError
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType

TYPE = "CONNECTOR_GRP"


def new_key() -> str:
    return f"3|api.private.zscaler.com|{secrets.token_urlsafe(48)}"


def put(vault: Vault, group: str, key: str, *, mount: str | None = None, **data: str) -> None:
    """The group's secret as sync writes it (KV v2, or v1 when `mount` is a v1 mount)."""
    fields = {"provisioning_key": key, "group_name": group, "group_id": "72058", **data}
    if mount is None:
        vault.api(
            "POST", f"{vault.mount}/data/zpa/{TYPE}/{group}", json={"data": fields}
        ).raise_for_status()
    else:
        vault.api("POST", f"{mount}/zpa/{TYPE}/{group}", json=fields).raise_for_status()


def operator_env(vault: Vault, home: Path, token: str | None = None) -> dict[str, str]:
    env = clean_env(vault.env, {"HOME": str(home)})
    if token is not None:
        env["VAULT_TOKEN"] = token
    return env


def host_env(vault: Vault, home: Path, **extra: str) -> dict[str, str]:
    """A new VM: Vault's address and the mount, no Vault token anywhere (not even
    ~/.vault-token)."""
    return clean_env(
        {"VAULT_ADDR": vault.server.addr, "VAULT_ZPA_MOUNT": vault.mount, "HOME": str(home)},
        extra,
    )


def wrap_json(vault: Vault, env: dict[str, str], group: str, *args: str) -> dict[str, object]:
    made = run_cli(
        "wrap", "--association-type", TYPE, "--group", group, "--output", "json", *args, env=env
    )
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)  # type: ignore[no-any-return]


def fetch(env: dict[str, str], group: str, out: Path, *args: str) -> CompletedProcess[str]:
    return run_cli(
        "fetch", "--association-type", TYPE, "--group", group, "--out", str(out), *args, env=env
    )


def token_file(tmp_path: Path, content: str, name: str | None = None) -> Path:
    path = tmp_path / (name or f"wrapped-{uuid.uuid4().hex[:6]}")
    path.write_text(content)
    path.chmod(0o600)
    return path


def alive(vault: Vault, token: str) -> bool:
    """sys/wrapping/lookup, unauthenticated: the token is still redeemable (lookups never use
    it up)."""
    response = httpx.post(
        f"{vault.server.addr}/v1/sys/wrapping/lookup", json={"token": token}, timeout=10
    )
    return response.status_code == 200


def wrapped_by_root(vault: Vault, method: str, path: str, ttl: str, **kwargs: object) -> str:
    """A wrapping token for any request, made with the root token (as an attacker with some
    other read, or `bao ... -wrap-ttl`, could make one)."""
    response = httpx.request(
        method,
        f"{vault.server.addr}/v1/{path}",
        headers={"X-Vault-Token": vault.server.root_token, "X-Vault-Wrap-TTL": ttl},
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )
    response.raise_for_status()
    return str(response.json()["wrap_info"]["token"])


def one_line(proc: CompletedProcess[str], *secret_values: str) -> str:
    """The single stderr line of a refused run; no secret anywhere in its output."""
    for value in secret_values:
        assert value not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def daemon_token(vault: Vault) -> Iterator[str]:
    """A token with only the daemon's policy for this mount (not even Vault's default one)."""
    name = f"daemon-{vault.mount}"
    text = policy.daemon_policy(mount=vault.mount).text
    vault.api("PUT", f"sys/policies/acl/{name}", json={"policy": text}).raise_for_status()
    response = vault.api(
        "POST", "auth/token/create", json={"policies": [name], "no_default_policy": True}
    )
    response.raise_for_status()
    yield str(response.json()["auth"]["client_token"])
    vault.api("DELETE", f"sys/policies/acl/{name}")


def test_a_wrapped_key_works_once(
    vault: Vault, home: Path, tmp_path: Path, daemon_token: str
) -> None:
    """The daemon's policy is enough to wrap; a host with no Vault token redeems the token
    once (written as fetch writes, mode 0644); a second try is one line, exit 2, naming the
    interception; no key or token in any output, debug logs included."""
    key = new_key()
    put(vault, "g1", key)
    made = wrap_json(vault, operator_env(vault, home, daemon_token), "g1", "--ttl", "2m")
    token = str(made["token"])
    assert made["creation_path"] == f"{vault.mount}/data/zpa/{TYPE}/g1"
    assert made["ttl"] == 120
    assert made["unwraps_to"] == "provisioning_key"
    assert made["kv_path"] == f"{vault.mount}/zpa/{TYPE}/g1"
    assert made["accessor"]
    assert made["expires_at"]
    assert key not in json.dumps(made)
    env = host_env(vault, home)
    out = tmp_path / "provision_key"
    bare = token_file(tmp_path, f"\n  {token}  \n\n")
    first = fetch(env, "g1", out, "--wrapped-token-file", str(bare), "--log-level", "debug")
    assert first.returncode == 0, first.stderr
    assert out.read_text() == key + "\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert f"wrote {out} from {vault.mount}/zpa/{TYPE}/g1" in first.stdout
    assert "unwrapped" in first.stdout
    for value in (key, token, key.split("|")[2]):
        assert value not in first.stdout + first.stderr
    assert not alive(vault, token)

    again = fetch(env, "g1", out, "--wrapped-token-file", str(bare))
    assert again.returncode == 2
    line = one_line(again, key, token)
    assert "already unwrapped, expired, or never issued" in line
    assert "intercepted" in line
    # Given wrap's JSON, which says when the token expires, the line is definite.
    document = token_file(tmp_path, json.dumps(made))
    definite = fetch(env, "g1", out, "--wrapped-token-file", str(document))
    assert definite.returncode == 2
    line = one_line(definite, key, token)
    assert "was already unwrapped" in line
    assert "intercepted" in line
    assert out.read_text() == key + "\n"  # the first key stays


def test_wrap_text_output_and_the_environment_variable(
    vault: Vault, home: Path, tmp_path: Path
) -> None:
    """`wrap` prints the token, accessor, TTL, expiry and creation path (never the key);
    VAULT_WRAPPED_TOKEN works like the file."""
    key = new_key()
    put(vault, "g1", key)
    made = run_cli(
        "wrap",
        "--association-type",
        TYPE,
        "--group",
        "g1",
        "--ttl",
        "1m",
        env=operator_env(vault, home),
    )
    assert made.returncode == 0, made.stderr
    assert key not in made.stdout + made.stderr
    fields = dict(line.split(None, 1) for line in made.stdout.strip().splitlines())
    assert set(fields) == {
        "wrapping_token",
        "wrapping_accessor",
        "wrapping_token_ttl",
        "wrapping_token_creation_time",
        "wrapping_token_expires_at",
        "wrapping_token_creation_path",
    }
    assert fields["wrapping_token_ttl"] == "1m"
    assert fields["wrapping_token_creation_path"] == f"{vault.mount}/data/zpa/{TYPE}/g1"
    token = fields["wrapping_token"]
    out = tmp_path / "provision_key"
    env = host_env(vault, home, VAULT_WRAPPED_TOKEN=token)
    done = fetch(env, "g1", out)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == key + "\n"
    assert token not in done.stdout + done.stderr


def test_an_expired_token_fails_with_one_line(vault: Vault, home: Path, tmp_path: Path) -> None:
    """A 1-second token, once Vault has expired it: one line saying so, exit 2, no file."""
    key = new_key()
    put(vault, "g1", key)
    made = wrap_json(vault, operator_env(vault, home), "g1", "--ttl", "1s")
    token = str(made["token"])
    deadline = time.monotonic() + 10
    while alive(vault, token):  # Vault's clock decides; no fake clock can stand in for it
        assert time.monotonic() < deadline, "the 1s wrapping token did not expire"
        time.sleep(0.1)
    out = tmp_path / "provision_key"
    env = host_env(vault, home)
    expired = fetch(
        env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, json.dumps(made)))
    )
    assert expired.returncode == 2
    line = one_line(expired, key, token)
    assert "the wrapping token expired at" in line
    assert "intercepted" not in line
    bare = fetch(host_env(vault, home, VAULT_WRAPPED_TOKEN=token), "g1", out)
    assert bare.returncode == 2
    assert "already unwrapped, expired, or never issued" in one_line(bare, key, token)
    assert not out.exists()


def test_a_token_wrapping_anything_else_is_refused_unused(
    vault: Vault, home: Path, tmp_path: Path
) -> None:
    """Another group's secret, an arbitrary `sys/wrapping/wrap` of a canary, and a token
    made to live over a day are refused without being unwrapped: the intended recipient can
    still redeem them. A secret at the right path naming another group is not written."""
    mine, theirs = new_key(), new_key()
    put(vault, "g1", mine)
    put(vault, "g2", theirs)
    operator = operator_env(vault, home)
    env = host_env(vault, home)
    out = tmp_path / "provision_key"

    other = str(wrap_json(vault, operator, "g2", "--ttl", "2m")["token"])
    refused = fetch(env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, other)))
    assert refused.returncode == 2
    line = one_line(refused, mine, theirs, other)
    assert f"'{vault.mount}/data/zpa/{TYPE}/g2'" in line
    assert "refused without unwrapping it" in line
    assert alive(vault, other)

    canary = new_key()
    forged = wrapped_by_root(
        vault,
        "POST",
        "sys/wrapping/wrap",
        "2m",
        json={"provisioning_key": canary, "group_name": "g1"},
    )
    refused = run_cli(
        "fetch",
        "--association-type",
        TYPE,
        "--group",
        "g1",
        "--out",
        str(out),
        env=host_env(vault, home, VAULT_WRAPPED_TOKEN=forged),
    )
    assert refused.returncode == 2
    assert "'sys/wrapping/wrap'" in one_line(refused, canary, forged)
    assert alive(vault, forged)

    lasting = wrapped_by_root(vault, "GET", f"{vault.mount}/data/zpa/{TYPE}/g1", "25h")
    refused = fetch(env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, lasting)))
    assert refused.returncode == 2
    assert "more than 24 hours" in one_line(refused, mine, lasting)
    assert alive(vault, lasting)
    assert not out.exists()

    # The intended recipient of the other group's token still gets its key.
    theirs_out = tmp_path / "theirs"
    redeemed = fetch(
        env, "g2", theirs_out, "--wrapped-token-file", str(token_file(tmp_path, other))
    )
    assert redeemed.returncode == 0, redeemed.stderr
    assert theirs_out.read_text() == theirs + "\n"

    # The right path, but the secret there names another group: unwrapped, never written.
    put(vault, "g1", new_key(), group_name="somebody-else")
    wrong = wrapped_by_root(vault, "GET", f"{vault.mount}/data/zpa/{TYPE}/g1", "2m")
    refused = fetch(env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, wrong)))
    assert refused.returncode == 2
    line = one_line(refused, wrong)
    assert "belongs to group 'somebody-else'" in line
    assert "the wrapping token is now spent" in line
    assert not out.exists()


def test_nothing_is_spent_when_the_key_could_not_be_written(
    vault: Vault, home: Path, tmp_path: Path
) -> None:
    """A missing --out directory is found before the single-use token is used (exit 1)."""
    put(vault, "g1", new_key())
    token = str(wrap_json(vault, operator_env(vault, home), "g1", "--ttl", "1m")["token"])
    env = host_env(vault, home, VAULT_WRAPPED_TOKEN=token)
    failed = fetch(env, "g1", tmp_path / "missing" / "provision_key")
    assert failed.returncode == 1
    assert "the wrapped token was not used" in one_line(failed, token)
    assert alive(vault, token)


def test_kv_v1_mount(vault: Vault, home: Path, tmp_path: Path) -> None:
    """On a KV v1 mount the wrapped read is `<mount>/<path>`, and fetch accepts it."""
    mount = f"kv1-{uuid.uuid4().hex[:8]}"
    vault.api("POST", f"sys/mounts/{mount}", json={"type": "kv"}).raise_for_status()
    try:
        key = new_key()
        put(vault, "g1", key, mount=mount, _meta_managed_by="vault-zpa")
        operator = {**operator_env(vault, home), "VAULT_ZPA_MOUNT": mount}
        made = wrap_json(vault, operator, "g1", "--ttl", "1m")
        assert made["creation_path"] == f"{mount}/zpa/{TYPE}/g1"
        env = {**host_env(vault, home), "VAULT_ZPA_MOUNT": mount}
        out = tmp_path / "provision_key"
        done = fetch(
            env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, str(made["token"])))
        )
        assert done.returncode == 0, done.stderr
        assert out.read_text() == key + "\n"
    finally:
        vault.api("DELETE", f"sys/mounts/{mount}")


def test_a_wrapped_approle_secret_id(vault: Vault, home: Path, tmp_path: Path) -> None:
    """`wrap --approle-role` wraps a new secret-id; the host unwraps it, logs in with its
    role_id and fetches its key; a secret-id token is no key token and the other way round."""
    approle = f"approle-{uuid.uuid4().hex[:8]}"
    grant = f"connector-{vault.mount}"
    key = new_key()
    put(vault, "g1", key)
    text = policy.connector_policy(
        association_type=AssociationType.CONNECTOR_GRP, group_name="g1", mount=vault.mount
    ).text
    vault.api("PUT", f"sys/policies/acl/{grant}", json={"policy": text}).raise_for_status()
    vault.api("POST", f"sys/auth/{approle}", json={"type": "approle"}).raise_for_status()
    try:
        vault.api(
            "POST",
            f"auth/{approle}/role/g1-host",
            json={"token_policies": [grant], "secret_id_num_uses": 1, "token_ttl": "5m"},
        ).raise_for_status()
        role_id = vault.api("GET", f"auth/{approle}/role/g1-host/role-id").json()["data"]["role_id"]
        operator = {**operator_env(vault, home), "VAULT_ZPA_APPROLE_MOUNT": approle}
        made = wrap_json(vault, operator, "g1", "--ttl", "1m", "--approle-role", "g1-host")
        assert made["creation_path"] == f"auth/{approle}/role/g1-host/secret-id"
        assert made["unwraps_to"] == "approle_secret_id"
        token = str(made["token"])
        env = host_env(
            vault, home, VAULT_ZPA_APPROLE_MOUNT=approle, VAULT_ZPA_APPROLE_ROLE_ID=role_id
        )
        out = tmp_path / "provision_key"
        as_key = fetch(env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, token)))
        assert as_key.returncode == 2
        assert "refused without unwrapping it" in one_line(as_key, token)
        done = fetch(
            env,
            "g1",
            out,
            "--wrapped-token-file",
            str(token_file(tmp_path, token)),
            "--approle-role",
            "g1-host",
        )
        assert done.returncode == 0, done.stderr
        assert out.read_text() == key + "\n"
        assert token not in done.stdout + done.stderr
        key_token = str(wrap_json(vault, operator, "g1", "--ttl", "1m")["token"])
        as_role = fetch(
            env,
            "g1",
            out,
            "--wrapped-token-file",
            str(token_file(tmp_path, key_token)),
            "--approle-role",
            "g1-host",
        )
        assert as_role.returncode == 2
        assert "refused without unwrapping it" in one_line(as_role, key, key_token)
        missing = run_cli(
            "wrap",
            "--association-type",
            TYPE,
            "--group",
            "g1",
            "--approle-role",
            "nobody",
            env=operator,
        )
        assert missing.returncode == 2
        assert "no AppRole role 'nobody'" in one_line(missing)
    finally:
        vault.api("DELETE", f"sys/auth/{approle}")
        vault.api("DELETE", f"sys/policies/acl/{grant}")


def test_the_readme_wrap_block_runs_as_written(vault: Vault, home: Path, tmp_path: Path) -> None:
    """README's `wrap` block, in bash as a reader pastes it after the quick start (only /tmp
    swapped): the host's fetch works once and the second is refused; the key is never shown."""
    key = new_key()
    put(vault, "Connector-Group-0001", key)
    env = operator_env(vault, home)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    script = "set -e\n" + blocks()["wrap"].replace("/tmp/", f"{tmp_path}/")
    proc = subprocess.run(
        ["bash", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "provision_key").read_text() == key + "\n"
    assert "refused (exit 2)" in proc.stdout
    assert "already unwrapped" in proc.stderr
    token = json.loads((tmp_path / "wrapped.json").read_text())["token"]
    assert key not in proc.stdout + proc.stderr
    assert token not in proc.stdout + proc.stderr


@pytest.mark.parametrize("ttl", ["nope", "25h", "1.5s"])
def test_a_bad_ttl_is_one_line_and_exit_2(vault: Vault, home: Path, ttl: str) -> None:
    """Refused before Vault is asked anything."""
    proc = run_cli(
        "wrap",
        "--association-type",
        TYPE,
        "--group",
        "g1",
        "--ttl",
        ttl,
        env=operator_env(vault, home),
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--ttl" in one_line(proc)


def test_an_unusable_token_file_is_one_line_and_exit_2(
    vault: Vault, home: Path, tmp_path: Path
) -> None:
    """An empty token file stops fetch before Vault is asked anything."""
    proc = fetch(
        host_env(vault, home),
        "g1",
        tmp_path / "out",
        "--wrapped-token-file",
        str(token_file(tmp_path, " \n")),
    )
    assert proc.returncode == 2
    assert "is empty" in one_line(proc)


def test_a_token_wrapping_an_error_answer_is_one_line_and_exit_2(
    vault: Vault, home: Path, tmp_path: Path
) -> None:
    """Vault wraps a KV v2 read's 404 too: a KV v1-style read of the v2 mount (`bao read
    -wrap-ttl`), a soft-deleted version (`bao kv get -wrap-ttl`). With a bare token the host
    cannot know the mount's version (it has no token) and no lookup shows the answer, so the
    unwrap spends the token; fetch says what Vault answered in one line, exit 2, no file."""
    key = new_key()
    put(vault, "g1", key)
    env = host_env(vault, home)
    out = tmp_path / "provision_key"

    v1_style = wrapped_by_root(vault, "GET", f"{vault.mount}/zpa/{TYPE}/g1", "2m")
    wrong = fetch(env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, v1_style)))
    assert wrong.returncode == 2, wrong.stderr
    line = one_line(wrong, key, v1_style)
    assert "404" in line
    assert "a KV v1 read of a KV v2 mount" in line
    assert "the wrapping token is now spent" in line
    assert not alive(vault, v1_style)

    vault.api("DELETE", f"{vault.mount}/data/zpa/{TYPE}/g1").raise_for_status()
    made = vault.bao("kv", "get", "-wrap-ttl=10m", "-format=json", f"{vault.mount}/zpa/{TYPE}/g1")
    token = json.loads(made.stdout)["wrap_info"]["token"]
    deleted = fetch(env, "g1", out, "--wrapped-token-file", str(token_file(tmp_path, made.stdout)))
    assert deleted.returncode == 2, deleted.stderr
    line = one_line(deleted, key, token)
    assert "its version 1 had been deleted at" in line
    assert "the wrapping token is now spent" in line
    assert not out.exists()


def test_a_kv_v1_read_of_a_v2_mount_is_refused_unused_when_the_version_is_known(
    vault: Vault, home: Path, tmp_path: Path
) -> None:
    """The host has no token to ask the mount's version, but VAULT_ZPA_KV_VERSION says it, and
    so does Vault, unauthenticated, for a mount listed with listing_visibility=unauth: then a
    read of the other layout is refused before unwrapping and stays good."""
    key = new_key()
    put(vault, "g1", key)
    out = tmp_path / "provision_key"
    v1_style = wrapped_by_root(vault, "GET", f"{vault.mount}/zpa/{TYPE}/g1", "2m")
    bare = str(token_file(tmp_path, v1_style))

    pinned = fetch(
        host_env(vault, home, VAULT_ZPA_KV_VERSION="2"), "g1", out, "--wrapped-token-file", bare
    )
    assert pinned.returncode == 2
    line = one_line(pinned, key, v1_style)
    assert "KV v1 read" in line
    assert "refused without unwrapping it" in line
    assert alive(vault, v1_style)

    vault.api(
        "POST", f"sys/mounts/{vault.mount}/tune", json={"listing_visibility": "unauth"}
    ).raise_for_status()
    listed = fetch(host_env(vault, home), "g1", out, "--wrapped-token-file", bare)
    assert listed.returncode == 2
    line = one_line(listed, key, v1_style)
    assert f"the mount '{vault.mount}' is KV v2" in line
    assert "refused without unwrapping it" in line
    assert alive(vault, v1_style)
    assert not out.exists()

    # Vault's answer and a pinned version that contradicts it: one line, nothing spent.
    contradicted = fetch(
        host_env(vault, home, VAULT_ZPA_KV_VERSION="1"), "g1", out, "--wrapped-token-file", bare
    )
    assert contradicted.returncode == 2
    assert "VAULT_ZPA_KV_VERSION=1" in one_line(contradicted, key, v1_style)
    assert alive(vault, v1_style)

    # A token made by `wrap` still works on the listed mount.
    made = wrap_json(vault, operator_env(vault, home), "g1", "--ttl", "1m")
    done = fetch(
        host_env(vault, home),
        "g1",
        out,
        "--wrapped-token-file",
        str(token_file(tmp_path, json.dumps(made))),
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == key + "\n"


def test_two_group_names_sharing_one_path(vault: Vault, home: Path, tmp_path: Path) -> None:
    """'A B' and 'A-B' have one path. wrap's JSON names the group it was made for, so fetch
    --group 'A-B' refuses it without unwrapping and the rightful host still gets its key. A
    bare token says nothing: fetch can only tell after unwrapping, then refuses (exit 2) and
    says the token is spent and the rightful host needs a new one."""
    key = new_key()
    put(vault, "A-B", key, group_name="A B")
    operator = operator_env(vault, home)
    env = host_env(vault, home)
    out = tmp_path / "provision_key"

    made = wrap_json(vault, operator, "A B", "--ttl", "2m")
    token = str(made["token"])
    assert made["creation_path"] == f"{vault.mount}/data/zpa/{TYPE}/A-B"
    document = str(token_file(tmp_path, json.dumps(made)))
    refused = fetch(env, "A-B", out, "--wrapped-token-file", document)
    assert refused.returncode == 2
    line = one_line(refused, key, token)
    assert f"made for {TYPE} group 'A B', not {TYPE} group 'A-B'" in line
    assert "refused without unwrapping it" in line
    assert alive(vault, token)
    done = fetch(env, "A B", out, "--wrapped-token-file", document)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == key + "\n"

    bare = str(wrap_json(vault, operator, "A B", "--ttl", "2m")["token"])
    other_out = tmp_path / "other"
    spent = fetch(env, "A-B", other_out, "--wrapped-token-file", str(token_file(tmp_path, bare)))
    assert spent.returncode == 2
    line = one_line(spent, key, bare)
    assert "belongs to group 'A B' (id 72058), not 'A-B'" in line
    assert "the wrapping token is now spent" in line
    assert "needs a new one" in line
    assert not alive(vault, bare)
    assert not other_out.exists()


def test_a_token_file_that_is_not_a_regular_file_is_refused_at_once(
    vault: Vault, home: Path, tmp_path: Path
) -> None:
    """A FIFO with no writer (directly or behind a link), a device: one line, exit 2, at once;
    nothing waits on a pipe."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    for path in (str(fifo), str(link), "/dev/null"):
        started = time.monotonic()
        proc = fetch(host_env(vault, home), "g1", tmp_path / "out", "--wrapped-token-file", path)
        assert proc.returncode == 2, (path, proc.stderr)
        assert "is not a regular file" in one_line(proc), path
        assert time.monotonic() - started < 30


# -- in process: the token file and the wording ----------------------------------------------


def test_token_files_are_read_strictly(tmp_path: Path) -> None:
    """Missing, empty, oversized, binary, a directory, or not a token: one ConfigError whose
    message never quotes the file."""
    canary = "s.CANARY" + secrets.token_hex(8)
    cases = {
        "missing": None,
        "empty": "",
        "blank": " \n\t\n",
        "huge": "s." + "A" * (70 * 1024),
        "two words": f"{canary} {canary}",
        "json without token": json.dumps({"accessor": canary}),
        "broken json": "{" + canary,
    }
    for name, content in cases.items():
        path = tmp_path / name.replace(" ", "-")
        if content is not None:
            path.write_text(content)
        with pytest.raises(ConfigError) as caught:
            wrapping.read_token_file(str(path))
        assert canary not in str(caught.value), name
        assert "\n" not in str(caught.value)
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + canary.encode())
    with pytest.raises(ConfigError, match="not text"):
        wrapping.read_token_file(str(tmp_path / "binary"))
    with pytest.raises(ConfigError, match="is not a regular file"):
        wrapping.read_token_file(str(tmp_path))
    with pytest.raises(ConfigError, match="is not a regular file"):
        wrapping.read_token_file("/dev/zero")
    # A link to a regular file is followed (a Kubernetes secret volume is links).
    token = "s." + secrets.token_hex(12)
    (tmp_path / "real").write_text(token + "\n")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    assert wrapping.read_token_file(str(tmp_path / "linked")).token.reveal() == token


def test_token_documents_and_masking() -> None:
    """The bare token, wrap's JSON and the vault CLI's wrap_info all give the token (and the
    expiry where they say it); its repr is masked."""
    token = "hvs.CAESI" + secrets.token_hex(12)
    bare = wrapping.parse_token(f"  {token}\n", source="test")
    assert bare.token.reveal() == token
    assert bare.expires_at is None
    assert token not in repr(bare)
    assert token not in str(bare)
    ours = wrapping.parse_token(
        json.dumps({"token": token, "expires_at": "2026-11-28T00:51:13Z"}), source="test"
    )
    assert ours.expires_at == datetime(2026, 11, 28, 0, 51, 13, tzinfo=UTC)
    cli = wrapping.parse_token(
        json.dumps(
            {
                "data": None,
                "wrap_info": {
                    "token": token,
                    "ttl": 60,
                    "creation_time": "2026-11-28T00:36:13.737403633Z",
                },
            }
        ),
        source="test",
    )
    assert cli.token.reveal() == token
    assert cli.expires_at == datetime(2026, 11, 28, 0, 37, 13, 737403, tzinfo=UTC)


@pytest.mark.parametrize(
    ("left", "says"),
    [
        (None, "already unwrapped, expired, or never issued"),
        (-5.0, "expired at"),
        (600.0, "was already unwrapped"),
        (10.0, "already unwrapped, expired, or never issued"),  # too near to tell
    ],
)
def test_the_one_line_for_a_token_vault_does_not_know(left: float | None, says: str) -> None:
    """Expired or intercepted when the expiry is known (beyond clock slack); both otherwise."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    until = None if left is None else now + timedelta(seconds=left)
    token = wrapping.WrappedToken(Secret("s.x" * 4), "test", until)
    error = wrapping.spent(token, None, now=now)
    assert says in error.message
    assert error.exit_code == 2
    assert ("intercepted" in error.message) == ("expired at" not in says)


def test_the_record_in_wraps_json_only_ever_refuses() -> None:
    """wrap's JSON names what the token was made for; a record that contradicts the flags is
    refused (exit 2) before Vault is asked anything; a bare token or the vault CLI's answer has
    no record and passes to the lookup."""
    token = "s." + secrets.token_hex(12)
    made = {
        "schema_version": 1,
        "token": token,
        "association_type": "CONNECTOR_GRP",
        "group_name": "A B",
        "group_id": "72058",
        "unwraps_to": "provisioning_key",
        "kv_path": "secret/zpa/CONNECTOR_GRP/A-B",
    }
    ours = wrapping.parse_token(json.dumps(made), source="the file")
    fine = {
        "association_type": "CONNECTOR_GRP",
        "group": "A B",
        "group_id": None,
        "unwraps_to": "provisioning_key",
    }
    wrapping.check_claims(ours, **fine)  # type: ignore[arg-type]
    wrapping.check_claims(ours, **{**fine, "group_id": "72058"})  # type: ignore[arg-type]
    refusals = {
        "made for CONNECTOR_GRP group 'A B', not CONNECTOR_GRP group 'A-B'": {"group": "A-B"},
        "not SERVICE_EDGE_GRP group 'A B'": {"association_type": "SERVICE_EDGE_GRP"},
        "group id 72058, not --group-id 9": {"group_id": "9"},
        "unwraps to a provisioning key, not an AppRole secret-id": {
            "unwraps_to": "approle_secret_id"
        },
    }
    for says, flags in refusals.items():
        with pytest.raises(wrapping.WrappedTokenRefused) as caught:
            wrapping.check_claims(ours, **{**fine, **flags})  # type: ignore[arg-type]
        assert says in caught.value.message
        assert "refused without unwrapping it" in caught.value.message
        assert caught.value.exit_code == 2
        assert token not in str(caught.value)
    for bare in (
        wrapping.parse_token(token, source="env"),
        wrapping.parse_token(json.dumps({"wrap_info": {"token": token}}), source="bao"),
    ):
        assert bare.claims == {}
        wrapping.check_claims(bare, **{**fine, "group": "A-B"})  # type: ignore[arg-type]
