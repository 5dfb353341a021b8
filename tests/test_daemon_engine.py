"""The daemon's parts in-process: the runner, the request queue, the engine (leadership,
runs, readiness, fail-over, requests) and the schedule, against the in-memory KV store, a fake
ZPA and a fake lease. Each test runs in milliseconds; the subprocess tests in test_daemon.py
keep what only a real process shows (signals, the listener, OpenBao)."""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vault_zpa.daemon import schedule
from vault_zpa.daemon.engine import Engine
from vault_zpa.daemon.requests import QueueFull, RequestQueue
from vault_zpa.daemon.runner import Runner
from vault_zpa.errors import ZpaApiError, ZpaAuthError
from vault_zpa.masking import Secret
from vault_zpa.model import AssociationType, ProvisioningKey
from vault_zpa.reconcile import TypeRule
from vault_zpa.rotation import RotationSettings
from vault_zpa.status import rows
from vault_zpa.sync import SyncOptions, inspect
from vault_zpa.testing.memory import MemoryKvStore

CONN = AssociationType.CONNECTOR_GRP
PREFIX = "zpa"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class FakeZpa:
    """A ZPA tenant in memory: list, get, find, create, update, delete; listings can fail."""

    def __init__(self, groups: Mapping[str, str]) -> None:
        self.ids = itertools.count(100)
        self.keys: dict[str, dict[str, Any]] = {}
        self.groups = dict(groups)  # id -> name
        self.failing: str | None = None  # "auth": every listing fails as bad credentials
        self.lists = 0
        for gid in groups:
            self.add(gid, f"key-{gid}")

    def add(self, gid: str, name: str) -> ProvisioningKey:
        key_id = str(next(self.ids))
        self.keys[key_id] = {"name": name, "gid": gid, "enabled": True}
        return self._key(key_id)

    def _key(self, key_id: str) -> ProvisioningKey:
        raw = self.keys[key_id]
        return ProvisioningKey(
            id=key_id,
            name=raw["name"],
            association_type=CONN,
            key=Secret(f"3|value-{key_id}"),
            group_id=raw["gid"],
            group_name=self.groups[raw["gid"]],
            enrollment_cert_id="7",
            enrollment_cert_name="Connector",
            max_usage=10,
            usage_count=0,
            enabled=raw["enabled"],
            creation_time=1_700_000_000,
            modified_time=1_700_000_000,
        )

    def list_provisioning_keys(self, association_type: AssociationType) -> list[ProvisioningKey]:
        self.lists += 1
        if self.failing == "auth":
            raise ZpaAuthError("ZPA rejected the client credentials (invalid_client)")
        return [self._key(k) for k in sorted(self.keys, key=int)]

    def get_provisioning_key(self, association_type: AssociationType, key_id: str) -> Any:
        if key_id not in self.keys:
            raise ZpaApiError(endpoint="get", status=400, zpa_id="resource.not.found")
        return self._key(key_id)

    def find_provisioning_key(self, association_type: AssociationType, name: str) -> Any:
        found = [k for k, raw in self.keys.items() if raw["name"] == name]
        return self._key(found[0]) if found else None

    def create_provisioning_key(
        self, association_type: AssociationType, *, name: str, group_id: str, **_: Any
    ) -> ProvisioningKey:
        return self.add(group_id, name)

    def update_provisioning_key(
        self, association_type: AssociationType, key_id: str, changes: Mapping[str, Any]
    ) -> None:
        self.keys[key_id]["enabled"] = False

    def delete_provisioning_key(self, association_type: AssociationType, key_id: str) -> None:
        del self.keys[key_id]


class FakeLease:
    period = 30.0

    def __init__(self, leader: bool = True) -> None:
        self.leader = leader
        self.error: str | None = None
        self.observed_holder: str | None = "other-replica"
        self.last_error: str | None = None
        self.released = False

    @property
    def version(self) -> int | None:
        return 7 if self.leader else None

    def tick(self) -> bool:
        self.last_error = self.error
        return self.leader

    def release(self) -> None:
        self.released = True


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.getLogger("vault_zpa").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("vault_zpa").setLevel(logging.NOTSET)


@pytest.fixture
def kv() -> Iterator[MemoryKvStore]:
    store = MemoryKvStore()
    yield store
    store.close()


def engine(zpa: FakeZpa, kv: MemoryKvStore, lease: FakeLease | None = None, **kw: Any) -> Engine:
    options = SyncOptions(association_types=(CONN,), prefix=PREFIX, rules={CONN: TypeRule()})
    return Engine(zpa=zpa, store=kv, options=options, lease=lease, now=lambda: NOW, **kw)


def served(kv: MemoryKvStore, group: str) -> str:
    secret = kv.read(f"{PREFIX}/{CONN.value}/{group}")
    assert secret is not None
    assert secret.data is not None
    return secret.data["provisioning_key"]


# ---- runner ---------------------------------------------------------------------------------


def test_runner_never_overlaps_and_a_queued_full_wins() -> None:
    """Triggers during a run queue one follow-up; if any of them asked for a full read-back,
    the follow-up is full."""
    calls: list[bool] = []
    inside = threading.Event()
    release = threading.Event()

    def run(full: bool) -> None:
        calls.append(full)
        if len(calls) == 1:
            inside.set()
            release.wait(5)

    runner = Runner(run)
    first = threading.Thread(target=runner.trigger, args=(False,))
    first.start()
    assert inside.wait(5)
    assert runner.trigger(False) is False
    assert runner.trigger(True) is False
    assert runner.trigger(False) is False
    release.set()
    first.join(5)
    assert calls == [False, True]
    assert runner.wait_idle(1)
    assert not runner.running


def test_runner_recovers_from_a_crashing_run() -> None:
    def run(full: bool) -> None:
        raise RuntimeError("boom")

    runner = Runner(run)
    with pytest.raises(RuntimeError):
        runner.trigger()
    assert not runner.running


# ---- request queue --------------------------------------------------------------------------


def test_request_queue_is_bounded_and_keeps_every_outcome_it_holds() -> None:
    queue = RequestQueue(keep=3, max_queued=2, now=lambda: NOW)
    a = queue.add(frozenset({(CONN, "A")}))
    queue.add(frozenset({(CONN, "B")}))
    with pytest.raises(QueueFull):
        queue.add(frozenset({(CONN, "C")}))
    taken = queue.take()
    assert [r.state for r in taken] == ["running", "running"]
    queue.fail(taken, "the sync before it failed")
    for _ in range(5):
        queue.fail([*queue.take(), queue.add(frozenset())], "x")
    assert queue.get(a.id) is None  # old finished requests are let go, not piled up
    assert len(queue.counts()) == 1
    assert queue.counts()["failed"] == 3


# ---- runs and readiness ---------------------------------------------------------------------


def test_every_listing_failing_is_an_error_not_ready_and_ready_again_after_a_good_run(
    kv: MemoryKvStore,
) -> None:
    zpa = FakeZpa({"1": "A"})
    zpa.failing = "auth"
    e = engine(zpa, kv)
    e.tick_lease()
    e.run()
    assert e.state.last_result == "error"
    assert e.state.syncs["error"] == 1
    ready, body = e.readiness("ok", "ok")
    assert not ready
    assert "every ZPA listing failed" in body["reason"]
    assert "credentials" in body["reason"]
    zpa.failing = None
    e.run()
    ready, body = e.readiness("ok", "ok")
    assert ready
    assert body["reason"] is None
    assert e.state.last_result == "success"


@pytest.mark.parametrize(
    ("vault", "token", "says"),
    [("sealed", "unknown", "Vault is sealed"), ("ok", "invalid", "token is invalid")],
)
def test_readiness_names_vault_and_token_problems(
    kv: MemoryKvStore, vault: str, token: str, says: str
) -> None:
    e = engine(FakeZpa({"1": "A"}), kv)
    e.tick_lease()
    e.run()
    ready, body = e.readiness(vault, token)
    assert not ready
    assert says in body["reason"]
    assert body["authenticated"] is (token == "ok")


def test_a_healthy_standby_is_ready_and_a_lease_it_cannot_read_is_not(kv: MemoryKvStore) -> None:
    lease = FakeLease(leader=False)
    e = engine(FakeZpa({"1": "A"}), kv, lease)
    e.tick_lease()
    e.run()
    assert e.state.role == "standby"
    assert e.readiness("ok", "ok")[0]
    assert kv.read(f"{PREFIX}/{CONN.value}/A") is None  # a standby writes nothing
    lease.error = "Vault token is invalid or expired"
    e.tick_lease()
    ready, body = e.readiness("ok", "ok")
    assert body["role"] == "no-lease"
    assert not ready
    assert "Vault token is invalid" in body["reason"]


def test_gaining_the_lease_asks_for_a_full_sync_at_once(kv: MemoryKvStore) -> None:
    lease = FakeLease(leader=False)
    e = engine(FakeZpa({"1": "A"}), kv, lease)
    assert e.tick_lease() is False
    lease.leader = True
    assert e.tick_lease() is True  # the caller syncs now, not at the next scheduled time
    assert e.tick_lease() is False  # only the tick that gained it
    e.run()
    assert e.state.last_full is True
    assert e.readiness("ok", "ok")[0]


def test_an_edit_in_vault_is_repaired_by_a_full_run_and_named_as_vault_side(
    kv: MemoryKvStore,
) -> None:
    zpa = FakeZpa({"1": "A"})
    e = engine(zpa, kv)
    e.tick_lease()
    e.run()
    path = f"{PREFIX}/{CONN.value}/A"
    current = kv.read(path)
    assert current is not None
    assert current.data is not None
    kv._entries[path].versions.append({**current.data, "provisioning_key": "tampered"})
    e.run(full=False)  # warm: memory says all is well, Vault is not read
    assert served(kv, "A") == "tampered"
    snap = inspect(source=zpa, store=kv, options=e.options)
    (row,) = rows(snap)
    assert row.state == "drift"
    assert row.reason.startswith("changed in Vault: provisioning_key")
    e.run(full=True)
    assert served(kv, "A") == "3|value-100"


def test_periodic_full_runs_follow_the_setting(kv: MemoryKvStore) -> None:
    e = engine(FakeZpa({"1": "A"}), kv, full_sync_every=3)
    e.tick_lease()
    fulls = []
    for _ in range(7):
        e.run()
        fulls.append(e.state.last_full)
    assert fulls == [True, False, False, True, False, False, True]


# ---- rotation requests ----------------------------------------------------------------------


def test_a_dry_run_request_reports_the_plan_and_changes_nothing(kv: MemoryKvStore) -> None:
    zpa = FakeZpa({"1": "A", "2": "B"})
    e = engine(zpa, kv)
    e.tick_lease()
    e.run()
    before = dict(zpa.keys), kv.writes
    request = e.requests.add(frozenset({(CONN, "A")}), dry_run=True)
    e.run()
    found = e.requests.get(request.id)
    assert found is not None
    assert found["state"] == "done"
    assert [(r["group_name"], r["decision"]) for r in found["rotations"]] == [("A", "start")]
    assert (dict(zpa.keys), kv.writes) == before


def test_a_request_rotates_and_reports_the_new_key(kv: MemoryKvStore) -> None:
    zpa = FakeZpa({"1": "A"})
    e = engine(zpa, kv)
    e.tick_lease()
    e.run()
    request = e.requests.add(frozenset({(CONN, "A")}), grace=0)
    e.run()
    found = e.requests.get(request.id)
    assert found is not None
    assert found["state"] == "done", found
    (outcome,) = found["rotations"]
    assert outcome["new_key_id"] in zpa.keys
    assert served(kv, "A") == f"3|value-{outcome['new_key_id']}"
    assert "100" not in zpa.keys  # grace 0: the old key is gone once the new one is served


def test_an_unknown_group_fails_the_request_by_name(kv: MemoryKvStore) -> None:
    e = engine(FakeZpa({"1": "A"}), kv)
    e.tick_lease()
    e.run()
    request = e.requests.add(frozenset({(CONN, "Nope")}))
    e.run()
    found = e.requests.get(request.id)
    assert found is not None
    assert found["state"] == "failed"
    assert found["not_found"] == ["Nope"]


def test_requests_are_failed_with_the_reason_never_dropped(kv: MemoryKvStore) -> None:
    """The run before a request fails, the replica is a standby, the daemon stops: each
    request ends `failed` with why."""
    zpa = FakeZpa({"1": "A"})
    lease = FakeLease()
    e = engine(zpa, kv, lease)
    e.tick_lease()
    e.run()
    zpa.failing = "auth"
    first = e.requests.add(frozenset({(CONN, "A")}))
    e.run()
    zpa.failing = None
    lease.leader = False
    e.tick_lease()
    second = e.requests.add(frozenset({(CONN, "A")}))
    e.run()
    third = e.requests.add(frozenset({(CONN, "A")}))
    e.stopping.set()
    e.run()
    errors = [e.requests.get(r.id) for r in (first, second, third)]
    assert [x["state"] for x in errors if x] == ["failed"] * 3
    assert "the sync before it failed" in errors[0]["error"]  # type: ignore[index]
    assert "standby" in errors[1]["error"]  # type: ignore[index]
    assert "stopping" in errors[2]["error"]  # type: ignore[index]


def test_after_a_pass_that_rotated_the_next_request_waits_for_a_fresh_run(
    kv: MemoryKvStore,
) -> None:
    zpa = FakeZpa({"1": "A", "2": "B"})
    follow_ups: list[int] = []
    e = engine(zpa, kv, follow_up=lambda: follow_ups.append(1))
    e.tick_lease()
    e.run()
    a = e.requests.add(frozenset({(CONN, "A")}), grace=0)
    b = e.requests.add(frozenset({(CONN, "B")}), grace=0)
    e.run()
    assert e.requests.get(a.id)["state"] == "done"  # type: ignore[index]
    assert e.requests.get(b.id)["state"] == "queued"  # type: ignore[index]
    assert follow_ups == [1]
    e.run()
    assert e.requests.get(b.id)["state"] == "done"  # type: ignore[index]


# ---- schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "first", "weekday"),
    [
        ("0 3 * * 1", datetime(2026, 11, 30, 3, 0, tzinfo=UTC), 0),  # Monday, as cron means
        ("0 3 * * 0", datetime(2026, 11, 29, 3, 0, tzinfo=UTC), 6),  # Sunday
        ("0 3 * * 7", datetime(2026, 11, 29, 3, 0, tzinfo=UTC), 6),  # Sunday again
        ("30 1 * * sat", datetime(2026, 11, 28, 1, 30, tzinfo=UTC), 5),
        ("*/10 * * * *", datetime(2026, 11, 27, 12, 10, tzinfo=UTC), 4),
        ("@daily", datetime(2026, 11, 28, 0, 0, tzinfo=UTC), 5),
    ],
)
def test_crontab_fires_when_cron_would(cron: str, first: datetime, weekday: int) -> None:
    trigger = schedule.trigger(schedule.Schedule(cron=schedule.parse_cron(cron), jitter=0))
    fire = trigger.get_next_fire_time(None, NOW + timedelta(minutes=1))
    assert fire == first
    assert fire.weekday() == weekday


def test_weekday_ranges_and_steps_mean_what_they_mean_to_cron() -> None:
    fields = schedule._fields("0 0 * * 1-5")
    assert fields["day_of_week"] == "mon,tue,wed,thu,fri"
    assert schedule._fields("0 0 * * */2")["day_of_week"] == "sun,tue,thu,sat"
    assert schedule._fields("0 0 * * 5-7")["day_of_week"] == "sun,fri,sat"


def test_cron_jitter_and_interval_jitter_reach_the_trigger() -> None:
    cron = schedule.trigger(schedule.Schedule(cron="* * * * *", jitter=20))
    interval = schedule.trigger(schedule.Schedule(interval=60, jitter=20))
    assert getattr(cron, "jitter", None) == 20
    assert getattr(interval, "jitter", None) == 20


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("nope", "5"),
        ("* * * *", "has 4 field(s)"),
        ("61 * * * *", "61"),
        ("0 0 1 * 1", "both day-of-month and day-of-week"),
        ("0 0 * * 8", "not a day of the week"),
        ("0 0 * * 5-1", "backwards"),
        ("@sometimes", "unknown macro"),
        ("0 0 30 2 *", "never fires"),  # Feb 30: would start, sync once, then never again
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("\u0661 * * * *", "only ASCII"),  # Arabic-Indic one, which int() reads as 1
    ],
)
def test_a_bad_cron_expression_is_one_clear_line(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        schedule.parse_cron(value)
    message = str(caught.value)
    assert "\n" not in message


def test_schedule_describe_says_what_it_does() -> None:
    assert schedule.Schedule(cron="*/10 * * * *", jitter=5).describe() == (
        "cron '*/10 * * * *' (UTC), jitter up to 5s"
    )
    assert schedule.Schedule(interval=300, jitter=0).describe() == "every 300s, jitter up to 0s"


@pytest.mark.parametrize(
    "body",
    [
        b'{"all_due": true, "dryrun": true}',  # a typo must not become a real rotation
        b'{"all_due": true, "dry-run": true}',
        b'{"association_type": "CONNECTOR_GRP", "groups": ["g"], "group": "h"}',
    ],
)
def test_a_rotate_body_with_an_unknown_field_is_refused(body: bytes) -> None:
    from vault_zpa.daemon.http import parse_rotate

    with pytest.raises(ValueError, match="unknown field"):
        parse_rotate(body)
    assert parse_rotate(b'{"all_due": true, "dry_run": true}')["dry_run"] is True


def test_the_listener_binds_an_ipv6_loopback_address() -> None:
    """`--listen [::1]:PORT` passed check_listen but the server was IPv4-only: exit 2 with
    "'::1' is not an address" after a Vault login."""
    import socket as socket_mod

    from vault_zpa.daemon.http import Handler, Server

    if not socket_mod.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = Server(("::1", 0), Handler, max_connections=1)
    except OSError as exc:  # IPv6 present but ::1 not configured
        pytest.skip(f"::1 not usable here: {exc}")
    try:
        assert server.address_family == socket_mod.AF_INET6
    finally:
        server.server_close()


def test_rotate_daemon_that_stops_while_the_cli_waits_is_reported_as_unknown() -> None:
    """The daemon accepted the request, then stopped (SIGTERM closes the listener right after
    failing queued requests): the waiting CLI says it lost contact and the outcome is unknown
    (exit 1), instead of the bare "cannot reach the daemon ... is it running?"."""
    import json as json_mod
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from vault_zpa.daemon.client import DaemonRequestFailed, ask

    class Accepting(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json_mod.dumps({"accepted": True, "id": "abc123"}).encode()
            self.send_response(202)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer(("127.0.0.1", 0), Accepting)

    def serve_the_post_then_stop() -> None:
        server.handle_request()
        server.server_close()  # a GET waiting in the backlog is reset at once

    thread = threading.Thread(target=serve_the_post_then_stop, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(DaemonRequestFailed, match=r"lost contact .* abc123") as raised:
            ask(
                url,
                association_type="CONNECTOR_GRP",
                groups=("g",),
                all_due=False,
                dry_run=False,
                grace=None,
                token=None,
                wait=True,
                timeout=5,
                output="text",
                echo=lambda line: None,
                sleep=lambda seconds: None,
            )
        assert raised.value.exit_code == 1
    finally:
        thread.join(5)
        server.server_close()


_ = RotationSettings
