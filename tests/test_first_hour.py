"""A new user's first hour (issue 17): one exit-code table, one true line per mistake, progress
on long work, and the habits of vault users. Every test goes through the real entry point."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Vault, clean_env, run_cli
from vault_zpa.progress import Monitor
from vault_zpa.testing.zpa_simulator import ZpaSimulator

CG = "CONNECTOR_GRP"


def _env(sim: ZpaSimulator, vault: Vault, **extra: str) -> dict[str, str]:
    return clean_env(sim.env(), vault.env, extra)


def _first_key(sim: ZpaSimulator, atype: str = CG) -> tuple[dict[str, object], dict[str, object]]:
    group_id, group = next(iter(sim.groups[atype].items()))
    key = next(k for k in sim.keys[atype].values() if k["zcomponentId"] == group_id)
    return group, key


def _v1_mount(vault: Vault) -> str:
    mount = vault.mount + "-v1"
    vault.api(
        "POST", f"sys/mounts/{mount}", json={"type": "kv", "options": {"version": "1"}}
    ).raise_for_status()
    return mount


# -- exit code 0 ----------------------------------------------------------------------------


def test_exit_0_when_all_is_done_and_a_dry_run_says_nothing_would_change(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Row 0: a sync that did everything exits 0; a dry run afterwards says nothing would
    change (not '5 unchanged (would change)')."""
    env = _env(sim, vault)
    assert run_cli("sync", env=env).returncode == 0
    again = run_cli("sync", "--dry-run", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == "dry run: 5 unchanged (nothing would change)"
    assert again.stderr == ""


# -- exit code 1 ----------------------------------------------------------------------------


def test_exit_1_for_a_group_no_listing_has_in_sync_and_status(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Row 1: a typo'd --group is one line naming it and exit 1, for sync and status alike."""
    env = _env(sim, vault)
    for command in ("sync", "status"):
        result = run_cli(command, "--group", "NoSuchGroup", env=env)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "not found: no group named 'NoSuchGroup'" in result.stdout
    report = json.loads(
        run_cli("sync", "--group", "NoSuchGroup", "--output", "json", env=env).stdout
    )
    assert report["not_found"] == ["NoSuchGroup"]
    assert report["ok"] is False


def test_exit_1_when_every_listing_failed_says_so_once(sim: ZpaSimulator, vault: Vault) -> None:
    """Row 1: every listing failed: the summary says nothing was listed (not 'nothing to do
    (done)'), and each ZPA error appears once, not also as a warning on stderr."""
    env = _env(sim, vault, VAULT_ZPA_ZPA_RETRY_BUDGET="1s")
    sim.set_faults(error_rate=1.0, error_status=500)
    result = run_cli("sync", env=env)
    assert result.returncode == 1
    assert "every ZPA listing failed" in result.stdout
    assert "(done)" not in result.stdout
    both = result.stdout + result.stderr
    assert both.count("HTTP 500") == 2, both  # one line per association type


def test_status_exit_1_on_drift_and_current_usage_after_exhaustion(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Row 1: status exits 1 with a no-eligible-key (or drift) row, and shows the key's usage
    as ZPA has it now (10/10), not what the last sync saw (8/10)."""
    env = _env(sim, vault)
    assert run_cli("sync", env=env).returncode == 0
    clean = run_cli("status", env=env)
    assert clean.returncode == 0, clean.stdout
    group, key = _first_key(sim)
    sim.enroll(CG, str(key["id"]), 8)
    assert run_cli("sync", env=env).returncode == 0
    sim.enroll(CG, str(key["id"]), 2)
    result = run_cli("status", "--output", "json", env=env)
    assert result.returncode == 1, result.stderr
    row = next(g for g in json.loads(result.stdout)["groups"] if g["group_name"] == group["name"])
    assert row["state"] == "no-eligible-key"
    assert (row["usage_count"], row["max_usage"]) == (10, 10)
    assert row["kv_path"] == f"{vault.mount}/{row['path']}"


def test_fetch_of_a_used_up_key_warns_and_exits_1(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """Row 1: fetch writes an exhausted key (Vault's count may lag) but warns and exits 1."""
    env = _env(sim, vault)
    group, key = _first_key(sim)
    sim.enroll(CG, str(key["id"]), 9)
    assert run_cli("sync", env=env).returncode == 0
    sim.enroll(CG, str(key["id"]), 1)  # the last enrollment: sync marks the group
    assert run_cli("sync", env=env).returncode == 0
    out = tmp_path / "provision_key"
    result = run_cli(
        "fetch", "--association-type", CG, "--group", str(group["name"]), "--out", str(out),
        env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "warning:" in result.stderr
    assert "no usable key" in result.stderr
    assert out.read_text().strip() == key["provisioningKey"]
    assert str(key["provisioningKey"]) not in result.stdout + result.stderr


def test_unreachable_vault_says_what_it_waits_for_then_exits_1(sim: ZpaSimulator) -> None:
    """Row 1: an unreachable Vault is transient (a later run may succeed unchanged): a
    'waiting for Vault' line within seconds, the bound named, then exit 1."""
    env = clean_env(
        sim.env(),
        {
            "VAULT_ADDR": "http://127.0.0.1:9",
            "VAULT_TOKEN": "x",
            "VAULT_ZPA_VAULT_RETRY_BUDGET": "2s",
        },
    )
    started = time.monotonic()
    result = run_cli("sync", env=env, timeout=60)
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    first = result.stderr.splitlines()[0]
    assert "waiting for Vault" in first
    assert "connection refused" in first
    assert "VAULT_ZPA_VAULT_RETRY_BUDGET" in first


# -- exit code 2 ----------------------------------------------------------------------------


def test_exit_2_for_bad_usage_with_choices_as_typed(sim: ZpaSimulator, vault: Vault) -> None:
    """Row 2: a bad flag value is exit 2; help and the error show CONNECTOR_GRP as typed, and
    any case is accepted."""
    env = _env(sim, vault)
    bad = run_cli("sync", "--association-type", "bogus", env=env)
    assert bad.returncode == 2
    assert "'CONNECTOR_GRP'" in bad.stderr
    helped = run_cli("sync", "--help", env=env)
    assert "[CONNECTOR_GRP|SERVICE_EDGE_GRP]" in helped.stdout
    lower = run_cli("sync", "--dry-run", "--association-type", "connector_grp", env=env)
    assert lower.returncode == 0, lower.stderr
    top = run_cli("--help", env=env)
    assert "Exit codes" in top.stdout
    assert "2  bad usage or configuration" in top.stdout


def test_exit_2_for_refused_credentials_and_wrong_addresses(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Row 2: a refused token, https:// to a plain-http Vault and an unknown namespace are
    configuration: one true line each, exit 2."""
    env = _env(sim, vault)
    cases = {
        "token": ({"VAULT_TOKEN": "not-a-token"}, "invalid, expired or revoked"),
        "https": (
            {"VAULT_ADDR": vault.server.addr.replace("http://", "https://")},
            "answers plain HTTP",
        ),
        "namespace": ({"VAULT_NAMESPACE": "no-such-ns"}, "no namespace 'no-such-ns'"),
    }
    for name, (change, message) in cases.items():
        result = run_cli("sync", "--dry-run", env={**env, **change}, timeout=60)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert message in lines[0], (name, result.stderr)
        assert "TLS verification" not in result.stderr


def test_exit_2_for_a_kv_version_that_contradicts_the_mount(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Row 2: VAULT_ZPA_KV_VERSION=2 on a KV v1 mount (and 1 on v2) is one line, exit 2, and
    nothing is written under <mount>/data/."""
    v1 = _v1_mount(vault)
    env = _env(sim, vault)
    for mount, forced, actual in ((v1, "2", "1"), (vault.mount, "1", "2")):
        result = run_cli(
            "sync", env={**env, "VAULT_ZPA_MOUNT": mount, "VAULT_ZPA_KV_VERSION": forced}
        )
        assert result.returncode == 2, result.stderr
        assert f"is KV v{actual}" in result.stderr
        assert "internal error" not in result.stderr
    assert vault.api("LIST", f"{v1}/data").status_code == 404


def test_exit_2_for_fetch_owner_and_case_colliding_policies(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """Row 2: fetch --owner of nobody, and policy apply of Lab and LAB (one policy to Vault),
    are refused with one line before anything is written."""
    env = _env(sim, vault)
    owner = run_cli(
        "fetch", "--association-type", CG, "--group", "x", "--owner", "nosuchuser-zz",
        "--out", str(tmp_path / "k"), env=env,
    )  # fmt: skip
    assert owner.returncode == 2, owner.stderr
    assert "no such user" in owner.stderr
    policy = run_cli(
        "policy", "apply", "--association-type", CG, "--group", "Lab", "--group", "LAB", env=env
    )
    assert policy.returncode == 2, policy.stderr
    assert "Vault lowercases policy names" in policy.stderr
    assert policy.stdout == ""  # not even the daemon's policy was written
    listed = vault.api("LIST", "sys/policies/acl").json()["data"]["keys"]
    assert not any(name.startswith("vault-zpa-connector-grp-lab") for name in listed)


# -- messages and habits --------------------------------------------------------------------


def test_fatal_errors_are_json_under_output_json_and_log_format_json(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """A script parsing --output json gets a JSON document on stdout; --log-format json makes
    the fatal stderr line JSON; the token never appears."""
    env = _env(sim, vault, VAULT_TOKEN="s.secret-canary-token")
    result = run_cli("sync", "--output", "json", "--log-format", "json", env=env)
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["error"]["type"] == "VaultAuthError"
    assert document["error"]["exit_code"] == 2
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "error"
    assert line["exit_code"] == 2
    assert "secret-canary" not in result.stdout + result.stderr
    usage = run_cli("status", "--association-type", "nope", "--output", "json", env=env)
    assert usage.returncode == 2
    assert json.loads(usage.stdout)["error"]["type"] == "usage"


def test_the_vault_token_file_is_read_after_vault_token(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """~/.vault-token (what `vault login` leaves) is used when VAULT_TOKEN is unset, and
    VAULT_TOKEN wins when both are there."""
    env = _env(sim, vault, HOME=str(tmp_path))
    del env["VAULT_TOKEN"]
    missing = run_cli("sync", "--dry-run", env=env)
    assert missing.returncode == 2
    assert "~/.vault-token" in missing.stderr
    (tmp_path / ".vault-token").write_text(vault.server.root_token)
    assert run_cli("sync", env=env).returncode == 0
    (tmp_path / ".vault-token").write_text("stale-token")
    assert run_cli("sync", env={**env, "VAULT_TOKEN": vault.server.root_token}).returncode == 0
    assert run_cli("sync", env=env).returncode == 2


def test_kv_v1_fetch_detects_the_version_and_orphans_do_not_suggest_prune(
    sim: ZpaSimulator, vault: Vault, tmp_path: Path
) -> None:
    """On KV v1, fetch finds the key without VAULT_ZPA_KV_VERSION (as `vault kv get` does),
    and the orphan hint does not say `use --prune`, which KV v1 refuses; the JSON path has
    the mount where the text PATH has it."""
    mount = _v1_mount(vault)
    env = {**_env(sim, vault), "VAULT_ZPA_MOUNT": mount}
    report = json.loads(run_cli("sync", "--output", "json", env=env).stdout)
    assert all(i["kv_path"] == f"{mount}/{i['path']}" for i in report["items"])
    group, key = _first_key(sim)
    out = tmp_path / "key"
    fetched = run_cli(
        "fetch", "--association-type", CG, "--group", str(group["name"]), "--out", str(out),
        env=env,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_text().strip() == key["provisioningKey"]
    sim.keys[CG].pop(str(key["id"]))
    sim.groups[CG].pop(str(group["id"]))  # the group is gone, not only its key
    orphaned = run_cli("sync", env=env)
    assert orphaned.returncode == 0, orphaned.stderr
    assert "orphan" in orphaned.stdout
    assert "use --prune" not in orphaned.stdout
    assert "--prune needs a KV v2 mount" in orphaned.stdout


# -- progress -------------------------------------------------------------------------------


def test_progress_on_a_terminal_every_2s_with_rate_limits_and_json_untouched(
    vault: Vault,
) -> None:
    """Under a pseudo-terminal, a rate-limited listing of 10,500 keys (21 GETs, over ZPA's
    20 per 10 s) shows a live line at least every 2 s, naming pages and the rate-limit wait;
    stdout (--output json) holds only the report, the same as without a terminal."""
    with ZpaSimulator(seed=3, connector_groups=10_500, service_edge_groups=0) as sim:
        env = clean_env(sim.env(), vault.env)
        args = [sys.executable, "-m", "vault_zpa", "sync", "--dry-run", "--output", "json"]
        args += ["--association-type", CG]
        master, slave = pty.openpty()
        started = time.monotonic()
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT
        )  # fmt: skip
        os.close(slave)
        out: dict[str, bytes] = {}
        reader = threading.Thread(target=lambda: out.setdefault("stdout", proc.stdout.read()))  # type: ignore[union-attr]
        reader.start()
        stamps, screen = [], b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break  # the child closed the terminal
            if not chunk:
                break
            stamps.append(time.monotonic() - started)
            screen += chunk
        proc.wait(timeout=60)
        reader.join(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        os.close(master)
        total = time.monotonic() - started
    assert proc.returncode == 0
    assert total > 8, "the rate limit should have held the run back"
    gaps = [b - a for a, b in zip([0.0, *stamps], [*stamps, total], strict=True)]
    late = [g for g in gaps[1:-1] if g > 2.0]  # after the first line, until the end
    assert not late, (gaps, screen[-500:])
    text = screen.decode(errors="replace")
    assert "CONNECTOR_GRP 20 page(s)" in text  # the 21st waits on the limit
    assert "waiting on ZPA's rate limit" in text
    report = json.loads(out["stdout"])
    assert b"\x1b" not in out["stdout"]
    assert b"\r" not in out["stdout"]
    assert report["summary"]["create"] == 10_500


def test_json_output_is_the_same_bytes_with_and_without_a_terminal(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """--output json is byte-identical on a terminal and off one (timestamps aside)."""
    env = _env(sim, vault)
    args = [sys.executable, "-m", "vault_zpa", "sync", "--dry-run", "--output", "json"]
    plain = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, timeout=60, check=True)
    master, slave = pty.openpty()
    tty = subprocess.run(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, timeout=60)
    os.close(slave)
    os.close(master)

    def strip(raw: bytes) -> bytes:
        return b"\n".join(
            line for line in raw.splitlines() if b'"started_at"' not in line
            and b'"finished_at"' not in line
        )  # fmt: skip

    assert strip(tty.stdout) == strip(plain.stdout)
    assert plain.stderr == b""


class _Pending:
    """A Vault connection with one call hanging (what a blackholed VAULT_ADDR looks like)."""

    def request_counts(self) -> dict[tuple[str, str], int]:
        return {}

    def oldest_pending(self) -> tuple[float, str]:
        return 3.0, "read sys/internal/ui/mounts/secret at https://10.0.0.1:8200"


def test_off_a_terminal_progress_is_periodic_log_lines_and_a_stall_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Off a terminal the monitor writes nothing to its stream, logs a warning naming what it
    waits for once, and a progress line every `log_every` seconds."""
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger="vault_zpa.progress")
    monitor = Monitor(stream=stream, tty=False, conn=_Pending(), redraw_every=0.02, log_every=0.1)  # type: ignore[arg-type]
    with monitor:
        time.sleep(0.5)
    assert stream.getvalue() == ""
    stalls = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(stalls) == 1
    assert "waiting 3s for Vault (read sys/internal/ui/mounts/secret" in stalls[0].getMessage()
    periodic = [r for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert len(periodic) >= 2


# -- adversarial review: more true lines ------------------------------------------------------


@pytest.fixture
def not_vault() -> Iterator[str]:
    """A plain HTTP server that is not Vault (a web server, a proxy's 404 page) on loopback."""
    import http.server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_vault_addr_that_is_not_vault_is_not_called_a_bad_token(
    sim: ZpaSimulator, vault: Vault, not_vault: str
) -> None:
    """Row 2: VAULT_ADDR naming some other HTTP server answers lookup-self with 404, which
    Vault never does for a bad token: one line saying so, not 'the Vault token is invalid'."""
    result = run_cli("status", env=_env(sim, vault, VAULT_ADDR=not_vault), timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "does not look like Vault or OpenBao" in lines[0]
    assert "token is invalid" not in lines[0]


def test_a_501_at_vault_addr_is_one_line_not_an_internal_error(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """A server answering 501 (hvac's VaultNotInitialized) was 'internal error', exit 1."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        addr = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_cli("status", env=_env(sim, vault, VAULT_ADDR=addr), timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr
    assert "not initialized, or it is not Vault" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_policy_apply_refuses_to_replace_another_groups_policy(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """`policy apply --group Lab`, later `--group LAB`: one Vault policy (names ignore case);
    the second run used to print `updated` and take Lab's grant away. Refused, exit 2, and
    two names with one slug are named as such, not as a case clash."""
    env = _env(sim, vault)
    base = "Rv" + os.urandom(4).hex()
    first = run_cli("policy", "apply", "--association-type", CG, "--group", base, env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli("policy", "apply", "--association-type", CG, "--group", base.upper(), env=env)
    assert second.returncode == 2, second.stderr
    assert "already grants group" in second.stderr
    assert second.stdout == ""
    name = f"vault-zpa-connector-grp-{base}".lower()
    kept = vault.api("GET", f"sys/policies/acl/{name}").json()["data"]["policy"]
    assert f'/{base}"' in kept  # Lab's grant is still Lab's
    slug = run_cli(
        "policy", "render", "--association-type", CG, "--group", "a b", "--group", "a-b", env=env
    )
    assert slug.returncode == 2
    assert "map to the same secret path" in slug.stderr
    assert "lowercases" not in slug.stderr


def test_rotate_with_refused_zpa_credentials_exits_2_with_one_line(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Row 2 names `rotate` for a refused ZPA sign-in; it used to print 'not found: no group
    named ... with a key in Vault' (false: it is there) and exit 1, hiding the real error."""
    env = _env(sim, vault)
    group, _ = _first_key(sim)
    assert run_cli("sync", env=env).returncode == 0
    result = run_cli(
        "rotate", "--association-type", CG, "--group", str(group["name"]), "--dry-run",
        env={**env, "ZPA_CLIENT_SECRET": "wrong-secret"},
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "refused the credentials" in result.stderr
    assert "not found" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
