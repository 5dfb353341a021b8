"""Issue 16: the behaviours of the real ZPA API (zpa-api.md §12) that a simulator-only test
missed. The simulator now models each row (its defaults follow the real API); vault-zpa is
proven against each over real sockets, through the CLI and a real OpenBao where it matters."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Vault, clean_env, run_cli
from tests.test_rotation import group_keys, journal_of
from vault_zpa.errors import ConfigError, ZpaApiError, ZpaAuthError, ZpaRateLimited
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.zpa.auth import LegacyAuth
from vault_zpa.zpa.client import RetryPolicy, ZpaClient, is_not_found
from vault_zpa.zpa.ratelimit import SlidingWindowLimiter

CONN = AssociationType.CONNECTOR_GRP


class FakeClock:
    """Time that passes only when the client sleeps: Retry-After waits cost nothing."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


_OPEN: list[ZpaClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(
    sim: ZpaSimulator, clock: FakeClock | None = None, budget: float = 120.0, **kw: Any
) -> ZpaClient:
    """The real client over sockets, on a fake clock; closed after the test."""
    clock = clock or FakeClock()
    made = ZpaClient(
        http=httpx.Client(timeout=10),
        auth=LegacyAuth(f"{sim.url}/signin", sim.client_id, Secret(sim.client_secret)),
        base_url=sim.url,
        customer_id=sim.customer_id,
        oneapi=False,
        retry=RetryPolicy(budget=budget, timeout=10),
        clock=clock.clock,
        sleep=clock.sleep,
        get_limiter=SlidingWindowLimiter(20, 10.0, clock=clock.clock, sleep=clock.sleep),
        write_limiter=SlidingWindowLimiter(10, 10.0, clock=clock.clock, sleep=clock.sleep),
        **kw,
    )
    _OPEN.append(made)
    return made


def api(sim: ZpaSimulator, method: str, path: str, **kw: Any) -> httpx.Response:
    """A raw legacy-API call, as any ZPA client would make it."""
    token = httpx.post(
        f"{sim.url}/signin", data={"client_id": sim.client_id, "client_secret": sim.client_secret}
    ).json()["access_token"]
    return httpx.request(
        method,
        f"{sim.url}/mgmtconfig/v1/admin/customers/{sim.customer_id}{path}",
        headers={"Authorization": f"Bearer {token}"},
        **kw,
    )


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# ---- the simulator's defaults follow the real API --------------------------------------------


def test_simulator_answers_in_the_real_shapes(sim: ZpaSimulator) -> None:
    """18-digit ids, key objects linked by zcomponentId only, missing objects 400
    resource.not.found, group create 201, a 429 with `exception`, space-separated search."""
    listed = api(sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey").json()["list"]
    assert all(re.fullmatch(r"\d{18}", k["id"]) for k in listed)
    assert all(re.fullmatch(r"\d{18}", k["zcomponentId"]) for k in listed)
    assert re.fullmatch(r"\d{18}", sim.customer_id)
    assert not any("appConnectorGroupId" in k or "appConnectorGroupName" in k for k in listed)
    missing = api(sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey/216196257331999999")
    assert missing.status_code == 400
    assert missing.json()["id"] == "resource.not.found"
    created = api(sim, "POST", "/appConnectorGroup", json={"name": "new-group"})
    assert created.status_code == 201
    spaced = api(
        sim,
        "GET",
        "/associationType/CONNECTOR_GRP/provisioningKey",
        params={"search": "maxUsage EQ 10"},
    )
    assert spaced.json()["totalCount"] == str(len(listed))
    sim.set_faults(storm_429=1, retry_after=4)
    limited = api(sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "4s"
    assert limited.json() == {
        "exception": "invalid.toomanyrequests",
        "id": "invalid.toomanyrequests",
        "reason": "Exceeded the number of requests allowed.",
    }


def test_simulator_controls_for_the_real_answers(sim: ZpaSimulator) -> None:
    """Controls: a non-exportable key hides its value, overload 401, real-shaped 503, unknown
    microtenant refused, a migrated tenant's non-JSON answer, legacy shapes on request."""
    group_id = next(iter(sim.groups["CONNECTOR_GRP"]))
    hidden = sim.add_key("CONNECTOR_GRP", group_id, name="hidden", exportable=False)
    got = api(sim, "GET", f"/associationType/CONNECTOR_GRP/provisioningKey/{hidden['id']}").json()
    assert got["exportable"] is False
    assert "provisioningKey" not in got
    assert sim.accepts(hidden["provisioningKey"])  # hidden, not gone: enrollments still work
    sim.set_faults(overload_401_next=1)
    blocked = api(sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey")
    assert blocked.status_code == 401
    assert "Resource Access Blocked" in blocked.text
    sim.set_faults(unavailable_next=1)
    down = api(sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey")
    assert down.status_code == 503
    assert down.headers["retry-after"] == "10s"
    assert down.json()["id"] == "retryable.server.error"
    unknown = api(
        sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey", params={"microtenantId": "9"}
    )
    assert unknown.status_code == 400
    assert api(sim, "GET", "/microtenants/9").json()["id"] == "resource.not.found"
    httpx.post(f"{sim.url}/_sim/microtenant", json={"id": "9"}).raise_for_status()
    assert api(sim, "GET", "/microtenants/9").status_code == 200
    httpx.post(
        f"{sim.url}/_sim/tenant",
        json={"not_found_status": 404, "key_group_fields": True, "migrated": False},
    ).raise_for_status()
    assert api(sim, "GET", "/appConnectorGroup/216196257331999999").status_code == 404
    assert (
        "appConnectorGroupId"
        in api(sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey").json()["list"][0]
    )
    httpx.post(f"{sim.url}/_sim/tenant", json={"migrated": True}).raise_for_status()
    moved = api(sim, "GET", "/associationType/CONNECTOR_GRP/provisioningKey")
    assert moved.status_code == 403
    assert "json" not in moved.headers["content-type"]
    assert "only through Zscaler OneAPI" in moved.text


# ---- non-exportable keys -----------------------------------------------------------------


def test_non_exportable_key_is_skipped_with_its_reason(sim: ZpaSimulator, vault: Vault) -> None:
    """One group's only key is non-exportable: that group is skipped with the reason (report
    and status); a group whose newest key is non-exportable gets its older key; every other
    group syncs; the listing is complete."""
    groups = list(sim.groups["CONNECTOR_GRP"].values())
    only, newer = groups[0], groups[1]
    [only_key] = group_keys(sim, only["id"])
    sim.patch_key("CONNECTOR_GRP", str(only_key["id"]), values={"exportable": False})
    [older] = group_keys(sim, newer["id"])
    sim.add_key("CONNECTOR_GRP", newer["id"], name="newest-hidden", exportable=False)
    env = clean_env(sim.env(), vault.env)
    done = run_cli("sync", "--output", "json", env=env)
    report = json.loads(done.stdout)
    assert all(listing["complete"] for listing in report["listings"])
    by_group = {i["group_name"]: i for i in report["items"]}
    assert by_group[only["name"]]["action"] == "skipped"
    assert "exportable: false" in by_group[only["name"]]["reason"]
    assert by_group[newer["name"]]["key_id"] == older["id"]
    written = [i for i in report["items"] if i["action"] == "create"]
    assert len(written) == 4  # 3 + 2 groups, all but the one with no exportable key
    status = run_cli("status", "--output", "json", env=env)
    rows = {g["group_name"]: g for g in json.loads(status.stdout)["groups"]}
    assert "exportable: false" in rows[only["name"]]["reason"]


# ---- not found: 400 resource.not.found and 404 ----------------------------------------------


@pytest.mark.parametrize("status", [400, 404])
def test_not_found_either_way(status: int) -> None:
    """A missing key is not-found whether ZPA says 400 resource.not.found or 404; deleting a
    key already gone is done, not an error."""
    with ZpaSimulator(rate_limits=False, not_found_status=status) as sim:
        zpa = client(sim)
        with pytest.raises(ZpaApiError) as raised:
            zpa.get_provisioning_key(CONN, "216196257331999999")
        assert raised.value.status == status
        assert is_not_found(raised.value)
        zpa.delete_provisioning_key(CONN, "216196257331999999")  # no error
        key_id = next(iter(sim.keys["CONNECTOR_GRP"]))
        zpa.delete_provisioning_key(CONN, key_id)
        zpa.delete_provisioning_key(CONN, key_id)  # again: already gone, done


def test_rotation_resumes_after_the_old_key_was_deleted_in_the_console(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """Rotate with a grace period, delete the old key in ZPA's console (400 resource.not.found
    from then on), resume after the grace: the rotation completes."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    group_id, group = next(iter(sim.groups["CONNECTOR_GRP"].items()))
    [old] = group_keys(sim, group_id)
    args = ("rotate", "--association-type", "CONNECTOR_GRP", "--group", group["name"])
    first = run_cli(*args, "--grace", "1s", env=env)
    assert first.returncode == 0, first.stderr
    del sim.keys["CONNECTOR_GRP"][str(old["id"])]  # deleted by an admin in the console
    time.sleep(1.1)
    resumed = run_cli("rotate", "--all-due", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    path = f"zpa/CONNECTOR_GRP/{group['name']}"
    assert journal_of(vault, path)["state"] == "idle"
    [new] = group_keys(sim, group_id)
    assert vault.kv_get(path)["data"]["data"]["key_id"] == new["id"]  # type: ignore[index]


# ---- search: never an unsafe character --------------------------------------------------------

HOSTILE = ['Lab "A" + B & c=1', "a+EQ+b", "ünï cöde/grp", "50% off; x=%2B"]


def test_hostile_group_names_rotate_and_resume(sim: ZpaSimulator, vault: Vault) -> None:
    """Groups named with quotes, +, &, %, non-ASCII: a rotation whose create answer is lost
    resumes by finding its key by name, on a ZPA that refuses unsafe search characters; no
    search ever carries one, and each group ends with exactly one new key."""
    for name in HOSTILE:
        group = sim.add_group("CONNECTOR_GRP", name)
        sim.add_key("CONNECTOR_GRP", group["id"], name=f"{name}-key", created=1767225600)
    sim.set_faults(search_rejects_unsafe=True)
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    for name in HOSTILE:
        group_id = next(g for g, v in sim.groups["CONNECTOR_GRP"].items() if v["name"] == name)
        [old] = group_keys(sim, group_id)
        sim.set_faults(drop_after_create_next=1)
        args = ("rotate", "--association-type", "CONNECTOR_GRP", "--group", name, "--grace", "0")
        lost = run_cli(*args, env=env)
        assert lost.returncode != 0, lost.stdout
        assert len(group_keys(sim, group_id)) == 2  # the key exists; its creator never heard
        resumed = run_cli(*args, env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        [new] = group_keys(sim, group_id)
        assert new["id"] != old["id"]
    refused = {k: v for k, v in sim.stats.requests.items() if k.startswith("GET provisioningKey 4")}
    assert refused == {}


# ---- overload 401 and 503 Retry-After ----------------------------------------------------------


def test_overload_401_storm_is_rate_limiting_not_bad_credentials(sim: ZpaSimulator) -> None:
    """A run of 401 "Resource Access Blocked": one token refresh, then backoff and retry as
    for a 429; the listing succeeds and no credentials error is raised."""
    clock = FakeClock()
    zpa = client(sim, clock)
    zpa.list_provisioning_keys(CONN)  # signed in
    sim.set_faults(overload_401_next=6)
    assert len(zpa.list_provisioning_keys(CONN)) == 3
    assert zpa.stats.reauth == 1
    assert zpa.stats.rate_limited == 5  # each waited (backoff) and was retried


def test_overload_401_past_the_budget_is_rate_limited(sim: ZpaSimulator) -> None:
    """Endless overload 401s end in ZpaRateLimited within the retry budget, never in
    ZpaAuthError (a credentials failure, exit 2)."""
    clock = FakeClock()
    zpa = client(sim, clock, budget=30.0)
    sim.set_faults(overload_401_next=1000)
    start = clock.now
    with pytest.raises(ZpaRateLimited) as raised:
        zpa.list_provisioning_keys(CONN)
    assert not isinstance(raised.value, ZpaAuthError)
    assert raised.value.status == 401
    assert clock.now - start <= 30.0


def test_503_retry_after_is_honoured(sim: ZpaSimulator) -> None:
    """503 retryable.server.error with Retry-After: 10s: the client waits at least 10 s (on a
    fake clock) before each retry and then succeeds."""
    clock = FakeClock()
    zpa = client(sim, clock)
    zpa.list_provisioning_keys(CONN)
    sim.set_faults(unavailable_next=2)
    assert len(zpa.list_provisioning_keys(CONN)) == 3
    assert sum(1 for s in clock.sleeps if s >= 10.0) == 2


def test_503_retry_after_past_the_budget_gives_up_at_once(sim: ZpaSimulator) -> None:
    """A Retry-After longer than what is left of the budget is not slept through."""
    clock = FakeClock()
    zpa = client(sim, clock, budget=5.0)
    sim.set_faults(unavailable_next=5)
    with pytest.raises(ZpaApiError) as raised:
        zpa.list_provisioning_keys(CONN)
    assert raised.value.status == 503
    assert raised.value.zpa_id == "retryable.server.error"
    assert clock.sleeps == []


def test_a_huge_429_retry_after_does_not_stall_later_calls_past_the_budget(
    sim: ZpaSimulator,
) -> None:
    """A 429 with `retry-after: 99999s` fails that call at once, and the limiter it penalises
    holds later calls back no further than the call's budget: before the fix the next listing
    (and a daemon's run and its SIGTERM) slept for 27 hours."""
    clock = FakeClock()
    zpa = client(sim, clock, budget=30.0)
    zpa.list_provisioning_keys(CONN)
    sim.set_faults(storm_429=1, retry_after=99999)
    with pytest.raises(ZpaRateLimited):
        zpa.list_provisioning_keys(CONN)
    start = clock.now
    assert len(zpa.list_provisioning_keys(CONN)) == 3
    assert clock.now - start <= 30.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("10s", 10.0), (" 13 ", 13.0), ("9" * 400, None), ("abc", None), ("-5", None)],
)
def test_retry_after_values_that_are_not_finite_seconds_are_ignored(
    header: str, seconds: float | None
) -> None:
    from vault_zpa.zpa.client import parse_retry_after

    assert parse_retry_after(header) == seconds


# ---- migrated tenants, microtenants, clouds: one line, exit 2 ---------------------------------


def test_migrated_tenant_says_use_oneapi_credentials(vault: Vault) -> None:
    """A tenant migrated to ZIdentity: `sync` with legacy credentials prints one line telling
    the user to use OneAPI credentials, and exits 2."""
    with ZpaSimulator(rate_limits=False, migrated=True) as sim:
        done = run_cli("sync", env=clean_env(sim.env(), vault.env))
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_line_error(done.stderr)
    assert "only through Zscaler OneAPI" in line
    assert "ZSCALER_CLIENT_ID" in line


def test_microtenant_zero_unset_and_unknown_are_distinct(vault: Vault) -> None:
    """ZPA_MICROTENANT_ID unset: every key; 0: the default microtenant's only; an unknown id:
    one line naming it, exit 2 (not an empty tenant)."""
    with ZpaSimulator(rate_limits=False, connector_groups=2, service_edge_groups=1) as sim:
        group = sim.add_group("CONNECTOR_GRP", "tenant-777-group", microtenant_id="777")
        sim.add_key("CONNECTOR_GRP", group["id"], name="tenant-777-key")
        base = clean_env(sim.env(), vault.env)

        def created(**extra: str) -> int:
            done = run_cli("sync", "--dry-run", "--output", "json", env={**base, **extra})
            assert done.returncode == 0, done.stderr
            return int(json.loads(done.stdout)["summary"]["create"])

        assert created() == 4
        assert created(ZPA_MICROTENANT_ID="0") == 3
        assert created(ZPA_MICROTENANT_ID="777") == 1
        unknown = run_cli("sync", env={**base, "ZPA_MICROTENANT_ID": "999"})
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    line = one_line_error(unknown.stderr)
    assert "ZPA_MICROTENANT_ID='999' is not a microtenant" in line


def test_unknown_microtenant_is_a_config_error_in_the_client(sim: ZpaSimulator) -> None:
    """The client checks ZPA_MICROTENANT_ID once before its first call."""
    with pytest.raises(ConfigError, match="not a microtenant"):
        client(sim, microtenant_id="424242").list_provisioning_keys(CONN)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ZSCALER_CLOUD": "prod"}, "ZSCALER_CLOUD='prod' is not a known OneAPI cloud"),
        ({"ZPA_CLOUD": "prod"}, "ZPA_CLOUD='prod' is not a known ZPA cloud"),
    ],
)
def test_unknown_cloud_is_one_line_exit_2(env: dict[str, str], needle: str) -> None:
    """A cloud name that is not one of ZPA's is refused at once, naming the valid ones."""
    creds = (
        {
            "ZSCALER_CLIENT_ID": "x",
            "ZSCALER_CLIENT_SECRET": "y",
            "ZSCALER_VANITY_DOMAIN": "acme",
        }
        if "ZSCALER_CLOUD" in env
        else {"ZPA_CLIENT_ID": "x", "ZPA_CLIENT_SECRET": "y"}
    )
    base = {
        "ZPA_CUSTOMER_ID": "216196257331281920",
        "VAULT_ADDR": "http://127.0.0.1:9",
        "VAULT_TOKEN": "t",
    }
    done = run_cli("sync", env=clean_env(base, creds, env), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_line_error(done.stderr)
    assert needle in line
    assert ("production, beta, gov, govus" in line) or ("PRODUCTION" in line)
