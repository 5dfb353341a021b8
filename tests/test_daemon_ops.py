"""The daemon as an SRE runs it (issue 15): every schedule form, readiness that tells the
truth, drift healed on demand, fail-over that syncs at once, honest remote requests, and one
clear line for every start-up mistake. Real processes, real OpenBao, the simulator."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import DaemonProc, Vault, clean_env, run_cli, syncs, wait_for
from vault_zpa.testing.zpa_simulator import ZpaSimulator

CG = "CONNECTOR_GRP"


def first_group(sim: ZpaSimulator) -> str:
    return str(next(iter(sim.groups[CG].values()))["name"])


def served(vault: Vault, group: str, prefix: str = "zpa") -> str:
    data = vault.kv_get(f"{prefix}/{CG}/{group}")["data"]["data"]  # type: ignore[index]
    return str(data["provisioning_key"])  # type: ignore[index]


def log_records(d: DaemonProc) -> list[dict[str, object]]:
    out = []
    for line in d.log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# ---- schedules ------------------------------------------------------------------------------

FORMS: dict[str, tuple[dict[str, str], tuple[str, ...], str]] = {
    # name: (env, flags, TOML [daemon] body)
    "interval flag": ({}, ("--interval", "1s", "--jitter", "0"), ""),
    "interval env + jitter": ({"VAULT_ZPA_INTERVAL": "1s", "VAULT_ZPA_JITTER": "1s"}, (), ""),
    "interval TOML + jitter": ({}, (), 'interval = "1s"\njitter = "1s"'),
    "cron flag + jitter": ({}, ("--cron", "* * * * *", "--jitter", "2s"), ""),
    "cron env": ({"VAULT_ZPA_CRON": "* * * * *", "VAULT_ZPA_JITTER": "0"}, (), ""),
    "cron TOML + jitter": ({}, (), 'cron = "* * * * *"\njitter = "1s"'),
}


def test_every_schedule_form_runs_on_schedule(
    sim: ZpaSimulator,
    vault: Vault,
    start_daemon: Callable[..., DaemonProc],
    tmp_path: Path,
) -> None:
    """Interval and cron, flag, env and TOML, with and without jitter: each daemon starts,
    says its schedule, runs at once and then runs again on its schedule. All six run side by
    side (each on its own prefix, so each holds its own lease): the cron ones wait for the next
    minute boundary once, together."""
    daemons: dict[str, DaemonProc] = {}
    for n, (name, (env, flags, toml)) in enumerate(FORMS.items()):
        config = tmp_path / f"form-{n}.toml"
        config.write_text(f"[daemon]\n{toml}\n" if toml else "")
        daemons[name] = start_daemon(
            clean_env(
                sim.env(),
                vault.env,
                {"VAULT_ZPA_PREFIX": f"zpa-form{n}", "VAULT_ZPA_LOG_FORMAT": "json"},
                env,
            ),
            "--config",
            str(config),
            *flags,
            schedule=False,
        )
    for name, d in daemons.items():
        started = [r for r in log_records(d) if str(r.get("message")).startswith("daemon started")]
        expected = "cron '* * * * *' (UTC)" if "cron" in name else "every 1s"
        assert started, name
        assert expected in str(started[0]["schedule"]), (name, started)
        jitter = "jitter up to 0s" if "jitter" not in name else "jitter up to "
        assert jitter in str(started[0]["schedule"]), name
    for name, d in daemons.items():
        timeout = 80 if "cron" in name else 20
        wait_for(lambda d=d: syncs(d) >= 2, timeout=timeout, what=f"a scheduled run ({name})")
    for d in daemons.values():
        assert d.stop() == 0


@pytest.mark.parametrize(
    ("args", "env", "toml", "says"),
    [
        (("--cron", "nope"), {}, "", "--cron"),
        (("--cron", "61 * * * *"), {}, "", "61"),
        (("--cron", "0 0 1 * 1"), {}, "", "both day-of-month and day-of-week"),
        ((), {"VAULT_ZPA_CRON": "* * *"}, "", "VAULT_ZPA_CRON"),
        ((), {}, 'cron = "every day"', "cron"),
        (("--interval", "0s"), {}, "", "--interval"),
        (("--interval", "soon"), {}, "", "--interval"),
        (("--jitter", "-1s"), {}, "", "--jitter"),
        ((), {"VAULT_ZPA_INTERVAL": "100y"}, "", "VAULT_ZPA_INTERVAL"),
        (("--interval", "5m"), {"VAULT_ZPA_CRON": "* * * * *"}, "", "set one"),
        ((), {}, 'interval = "5m"\ncron = "@hourly"', "set one"),
        (("--interval", "10s", "--jitter", "1m"), {}, "", "longer than the 10s interval"),
        (("--listen", "127.0.0.1:99999"), {}, "", "--listen"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_a_bad_schedule_or_listen_value_exits_2_with_one_line(
    sim: ZpaSimulator,
    vault: Vault,
    tmp_path: Path,
    args: tuple[str, ...],
    env: dict[str, str],
    toml: str,
    says: str,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[daemon]\n{toml}\n" if toml else "")
    done = run_cli(
        "daemon",
        "--config",
        str(config),
        *args,
        env=clean_env(sim.env(), vault.env, env),
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert says in lines[0]
    assert "internal error" not in lines[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_port_in_use_or_an_unresolvable_host_is_one_line_exit_2(
    sim: ZpaSimulator, vault: Vault
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_cli(
            "daemon", "--listen", f"127.0.0.1:{port}", env=clean_env(sim.env(), vault.env)
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = run_cli(
        "daemon",
        "--listen",
        "no-such-host.invalid:9850",
        env=clean_env(sim.env(), vault.env, {"VAULT_ZPA_API_TOKEN": "t0k3n-for-the-listener"}),
    )
    assert done.returncode == 2, done.stderr
    assert "not an address or a resolvable host name" in done.stderr
    assert "t0k3n-for-the-listener" not in done.stderr + done.stdout


# ---- readiness and metrics tell the truth ---------------------------------------------------


def test_wrong_zpa_credentials_make_the_daemon_not_ready_until_a_good_run(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    env = clean_env(
        sim.env(),
        vault.env,
        {"ZPA_CLIENT_SECRET": "not-the-secret-zpa-knows", "VAULT_ZPA_LOG_FORMAT": "json"},
    )
    d = start_daemon(env)
    wait_for(lambda: syncs(d) >= 1, what="first run")
    response = d.get("/readyz")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["ready"] is False
    assert "every ZPA listing failed" in body["reason"]
    assert body["last_sync"]["result"] == "error"
    assert d.metric("vault_zpa_syncs_total", result="error") == 1
    assert d.metric("vault_zpa_syncs_total", result="partial") == 0
    failed = [r for r in log_records(d) if str(r.get("message", "")).startswith("sync error")]
    assert failed
    assert failed[0]["level"] == "error"
    sim.client_secret = "not-the-secret-zpa-knows"  # the credential is fixed on ZPA's side
    httpx.post(d.url + "/v1/sync")
    wait_for(lambda: d.get("/readyz").status_code == 200, what="ready again")
    assert d.get("/readyz").json()["last_sync"]["result"] == "success"
    assert "not-the-secret-zpa-knows" not in d.log.read_text()
    assert d.stop() == 0


def test_a_revoked_token_is_not_ready_and_the_log_says_why(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    token = json.loads(vault.bao("token", "create", "-format=json", "-ttl=1h").stdout)["auth"][
        "client_token"
    ]
    d = start_daemon(clean_env(sim.env(), vault.env, {"VAULT_TOKEN": token}))
    wait_for(lambda: syncs(d) >= 1, what="first run")
    assert d.get("/readyz").status_code == 200
    vault.bao("token", "revoke", token)
    wait_for(lambda: d.get("/readyz").status_code == 503, what="not ready", timeout=30)
    body = d.get("/readyz").json()
    assert body["token"] == "invalid"
    assert body["authenticated"] is False
    assert "token" in body["reason"]
    wait_for(
        lambda: (
            "leader lease cannot be read or written" in d.log.read_text()
            or d.get("/readyz").json()["role"] == "no-lease"
        ),
        what="lease error",
        timeout=30,
    )
    assert "another replica holds the leader lease" not in d.log.read_text()
    assert token not in d.log.read_text()
    assert d.stop() == 0


# ---- drift heals on demand ------------------------------------------------------------------


def test_an_edit_in_vault_is_named_by_status_and_healed_by_sighup_and_post(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    d = start_daemon(clean_env(sim.env(), vault.env), "--no-ha")
    wait_for(lambda: syncs(d) >= 1, what="first run")
    group = first_group(sim)
    good = served(vault, group)
    path = f"{vault.mount}/zpa/{CG}/{group}"
    vault.bao("kv", "patch", path, "provisioning_key=tampered")
    status = run_cli("status", env=clean_env(sim.env(), vault.env))
    assert "changed in Vault: provisioning_key" in status.stdout, status.stdout
    assert "changed in ZPA" not in status.stdout
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: served(vault, group) == good, what="SIGHUP repairs the edit")
    vault.bao("kv", "patch", path, "provisioning_key=tampered-again")
    response = httpx.post(d.url + "/v1/sync")
    assert response.json()["full"] is True
    wait_for(lambda: served(vault, group) == good, what="POST /v1/sync repairs the edit")
    assert d.stop() == 0


# ---- fail-over ------------------------------------------------------------------------------


def test_failover_syncs_at_once_and_a_replica_is_always_ready(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    env = clean_env(sim.env(), vault.env, {"VAULT_ZPA_LEASE_PERIOD": "5s"})
    a = start_daemon(env)
    wait_for(lambda: syncs(a) >= 1, what="a leads and syncs")
    b = start_daemon(env)
    wait_for(lambda: b.get("/readyz").json()["role"] == "standby", what="b is standby")
    gaps: list[float] = []
    stop = threading.Event()

    def ready(d: DaemonProc) -> bool:
        try:
            return httpx.get(d.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def poll() -> None:
        while not stop.is_set():
            if not (ready(a) or ready(b)):
                gaps.append(time.monotonic())
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        killed = time.monotonic()
        a.proc.kill()  # a crash: the lease is not released, it lapses by Vault's clock
        a.proc.wait()
        wait_for(lambda: b.get("/readyz").json()["role"] == "leader", timeout=15, what="b leads")
        wait_for(lambda: syncs(b) >= 1, timeout=10, what="b syncs at once")
        took = time.monotonic() - killed
    finally:
        stop.set()
        poller.join()
    assert gaps == [], f"no replica was ready at {len(gaps)} polls"
    assert b.get("/readyz").status_code == 200
    assert "leader lease gained: syncing now" in b.log.read_text()
    # The schedule is an hour: the run came from the fail-over, within the lapse (5 s) plus a
    # tick (5/3 s) and the run itself; generous bound for a loaded CI machine.
    assert took < 30
    assert b.stop() == 0


# ---- remote requests are honest -------------------------------------------------------------


def test_rotate_via_the_daemon_waits_for_the_outcome_and_tells_the_truth(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    env = clean_env(sim.env(), vault.env)
    d = start_daemon(env)
    wait_for(lambda: syncs(d) >= 1, what="first run")
    group = first_group(sim)
    keys_before = {k: dict(v) for k, v in sim.keys[CG].items()}
    version = vault.metadata(f"zpa/{CG}/{group}")["current_version"]

    dry = run_cli(
        "rotate",
        "--daemon",
        d.url,
        "--association-type",
        CG,
        "--group",
        group,
        "--dry-run",
        env=env,
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would rotate"), dry.stdout
    assert f"/zpa/{CG}/{group}" in dry.stdout
    assert {k: dict(v) for k, v in sim.keys[CG].items()} == keys_before
    assert vault.metadata(f"zpa/{CG}/{group}")["current_version"] == version

    due = run_cli("rotate", "--daemon", d.url, "--all-due", "--dry-run", env=env)
    assert due.returncode == 0, due.stderr
    assert "nothing is due" in due.stdout

    missing = run_cli(
        "rotate", "--daemon", d.url, "--association-type", CG, "--group", "No Such Group", env=env
    )
    assert missing.returncode == 1
    assert "not found: no group named 'No Such Group'" in missing.stdout

    done = run_cli(
        "rotate",
        "--daemon",
        d.url,
        "--association-type",
        CG,
        "--group",
        group,
        "--grace",
        "0",
        "--output",
        "json",
        env=env,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["request"]["state"] == "done"
    (rotation,) = report["rotations"]
    assert rotation["new_key_id"] in sim.keys[CG]
    assert served(vault, group) == sim.keys[CG][rotation["new_key_id"]]["provisioningKey"]

    queued = run_cli("rotate", "--daemon", d.url, "--all-due", "--no-wait", env=env)
    assert queued.returncode == 0
    request_id = queued.stdout.split()[2]
    wait_for(
        lambda: httpx.get(f"{d.url}/v1/requests/{request_id}").json()["state"] == "done",
        what="the queued request finishes",
    )
    assert httpx.get(f"{d.url}/v1/requests/ffff").status_code == 404
    assert d.stop() == 0


def test_a_standby_refuses_rotation_requests_and_the_cli_exits_1(
    sim: ZpaSimulator, vault: Vault, start_daemon: Callable[..., DaemonProc]
) -> None:
    env = clean_env(sim.env(), vault.env)
    a = start_daemon(env)
    wait_for(lambda: syncs(a) >= 1, what="a leads")
    b = start_daemon(env)
    wait_for(lambda: b.get("/readyz").json()["role"] == "standby", what="b is standby")
    asked = run_cli("rotate", "--daemon", b.url, "--all-due", env=env)
    assert asked.returncode == 1
    assert "not the leader" in asked.stderr
    assert "queued" not in asked.stdout
    assert a.stop() == 0
    assert b.stop() == 0
