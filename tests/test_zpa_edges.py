"""Issue 14, the ZPA edge (items 5, 6 and 8): listings that are complete or an error, prune
scoped to what a run could see, creates never resent blindly, and odd ZPA values that make one
key ineligible instead of wedging a run. Over real sockets: the simulator and a real OpenBao."""

from __future__ import annotations

import json
import resource
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import Vault, clean_env, run_cli
from vault_zpa import build
from vault_zpa.config import load
from vault_zpa.errors import ListingInconsistent, ZpaError, ZpaOutcomeUnknown
from vault_zpa.masking import Secret
from vault_zpa.model import (
    Action,
    AssociationType,
    Listing,
    ProvisioningKey,
    StoredSecret,
)
from vault_zpa.reconcile import Scope, TypeRule, desired, plan, secret_data, volatile_metadata
from vault_zpa.sync import SyncOptions, run_once
from vault_zpa.testing.zpa_simulator import BASE_EPOCH, ZpaSimulator
from vault_zpa.zpa.auth import LegacyAuth
from vault_zpa.zpa.client import RetryPolicy, ZpaClient, parse_key

CONNECTOR = AssociationType.CONNECTOR_GRP
EDGE = AssociationType.SERVICE_EDGE_GRP
# The same bookkeeping as the client tests: every httpx.Client opened here is closed after.
from tests.test_zpa_client import _OPEN, _close_clients  # noqa: E402, F401 - autouse fixture


def client(sim: ZpaSimulator, *, http: httpx.Client | None = None, **kw: Any) -> ZpaClient:
    """The real client against the simulator, with fast retries."""
    session = http or httpx.Client()
    _OPEN.append(session)
    return ZpaClient(
        http=session,
        auth=LegacyAuth(f"{sim.url}/signin", sim.client_id, Secret(sim.client_secret)),
        base_url=sim.url,
        customer_id=sim.customer_id,
        oneapi=False,
        retry=RetryPolicy(budget=10, base=0.01, cap=0.05, timeout=5),
        **kw,
    )


def listing_gets(sim: ZpaSimulator) -> int:
    return sum(n for k, n in sim.stats.requests.items() if k.startswith("GET provisioningKey"))


def first_key(sim: ZpaSimulator, atype: str = "CONNECTOR_GRP") -> dict[str, Any]:
    return sim.keys[atype][min(sim.keys[atype], key=int)]


# ---- (5) listing completeness ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"empty_listing_next": 1},  # 200 {}
        {"listing_omit": "list"},
        {"listing_omit": "totalPages"},
        {"listing_omit": "totalPages,totalCount"},
    ],
    ids=["empty-body", "no-list", "no-totalPages", "no-counts"],
)
def test_envelope_without_its_fields_is_an_error(sim: ZpaSimulator, fault: dict[str, Any]) -> None:
    """A 200 that is not a whole list envelope is an incomplete listing, never 'no keys'."""
    zpa = client(sim)
    sim.set_faults(**fault)
    with pytest.raises(ListingInconsistent):
        zpa.list_provisioning_keys(CONNECTOR)


def test_empty_listing_must_say_total_count_zero() -> None:
    """An empty answer counts as 'no keys' only with totalCount 0; without it, it is an error;
    a non-empty listing in the HELP shape (no totalCount) is read normally."""
    with ZpaSimulator(seed=40, connector_groups=0, service_edge_groups=2, rate_limits=False) as sim:
        zpa = client(sim)
        assert zpa.list_provisioning_keys(CONNECTOR) == []
        sim.set_faults(listing_omit="totalCount")
        with pytest.raises(ListingInconsistent):
            zpa.list_provisioning_keys(CONNECTOR)
        assert len(zpa.list_provisioning_keys(EDGE)) == 2


def test_page1_changing_with_the_same_total_is_inconsistent() -> None:
    """One key deleted and one added while we page (same total) shifts a key past us: the
    re-read of page 1 catches it; an unchanged listing passes the same check."""
    with ZpaSimulator(
        seed=41, connector_groups=25, service_edge_groups=0, rate_limits=False, max_page_size=20
    ) as sim:
        zpa = client(sim)
        assert len(zpa.list_provisioning_keys(CONNECTOR)) == 25
        assert listing_gets(sim) == 3  # pages 1 and 2, then page 1 again
        sim.set_faults(swap_page1_next=1)
        with pytest.raises(ListingInconsistent, match="page 1 changed"):
            zpa.list_provisioning_keys(CONNECTOR)
        assert len(sim.keys["CONNECTOR_GRP"]) == 25  # the same total, really


@pytest.mark.parametrize(
    "fault",
    [
        {"listing_total_pages": "1000000"},
        {"listing_total_pages": "1000000", "listing_omit": "totalCount"},
        {"listing_total_pages": "3"},  # 3 keys fit one page of 500
    ],
    ids=["huge", "huge-no-count", "more-than-the-count-implies"],
)
def test_total_pages_is_bounded(fault: dict[str, Any]) -> None:
    """totalPages beyond the cap or beyond what totalCount and the page size imply fails
    after page 1, instead of paging without bound."""
    with ZpaSimulator(seed=42, connector_groups=3, service_edge_groups=0, rate_limits=False) as sim:
        zpa = client(sim)
        sim.set_faults(**fault)
        started = time.monotonic()
        with pytest.raises(ListingInconsistent):
            zpa.list_provisioning_keys(CONNECTOR)
        assert time.monotonic() - started < 2
        assert listing_gets(sim) == 1


def test_item_cap() -> None:
    """More entries than the client's cap is an error, not an ever-growing list."""
    with ZpaSimulator(
        seed=43, connector_groups=30, service_edge_groups=0, rate_limits=False
    ) as sim:
        with pytest.raises(ListingInconsistent, match="over the limit of 25"):
            client(sim, max_items=25).list_provisioning_keys(CONNECTOR)
        sim.set_faults(listing_omit="totalCount")
        with pytest.raises(ListingInconsistent, match="more than 25"):
            client(sim, max_items=25, page_size=20).list_provisioning_keys(CONNECTOR)


# ---- (5) prune scope (pure planning) ----------------------------------------------------------


def key(kid: str, group: str, tenant: str | None = None) -> ProvisioningKey:
    return ProvisioningKey(
        id=kid,
        name=f"key-{kid}",
        association_type=CONNECTOR,
        key=Secret(f"3|h|{kid}"),
        group_id=group,
        group_name=f"G{group}",
        enrollment_cert_id="9",
        enrollment_cert_name="Connector",
        max_usage=10,
        usage_count=0,
        enabled=True,
        creation_time=BASE_EPOCH,
        modified_time=BASE_EPOCH,
        microtenant_id=tenant,
    )


def stored_for(k: ProvisioningKey) -> StoredSecret:
    path = f"zpa/CONNECTOR_GRP/{k.group_name}"
    meta = {**volatile_metadata(k, TypeRule()), "last_synced_at": "t"}
    return StoredSecret(path, 1, secret_data(k), meta)


@pytest.mark.parametrize(
    ("scoped_to", "gone_tenant", "listed", "expected"),
    [
        (None, None, [None], Action.PRUNE),  # unscoped run, parent's group gone
        ("777", None, ["777"], None),  # microtenant run never judges the parent
        ("777", "777", ["777"], Action.PRUNE),  # ... but prunes its own
        ("777", "888", ["777"], None),  # ... and never another microtenant's
        ("0", None, [None], Action.PRUNE),  # 0 is the default microtenant: no microtenant_id
        ("0", "777", [None], None),
        (None, "888", [None, "777"], Action.ORPHAN),  # 888 not seen: reported, not pruned
        (None, "777", [None, "777"], Action.PRUNE),  # 777 seen in this listing
    ],
)
def test_prune_only_what_the_run_could_see(
    scoped_to: str | None,
    gone_tenant: str | None,
    listed: list[str | None],
    expected: Action | None,
) -> None:
    """A secret is an orphan (and pruned with --prune) only within the listing's microtenant."""
    live = [key(str(10 + i), f"live{i}", tenant) for i, tenant in enumerate(listed)]
    gone = key("99", "gone", gone_tenant)
    stored = {s.path: s for s in map(stored_for, [*live, gone])}
    listings = [Listing(CONNECTOR, tuple(live), microtenant_id=scoped_to)]
    scope = Scope(prune=True)
    d = desired(listings, prefix="zpa", rules={}, scope=scope)
    p = plan(d, listings=listings, stored=stored, rules={}, scope=scope, now=datetime.now(UTC))
    got = {i.path: i for i in p.items if i.action in (Action.ORPHAN, Action.PRUNE)}
    assert set(got) <= {"zpa/CONNECTOR_GRP/Ggone"}
    item = got.get("zpa/CONNECTOR_GRP/Ggone")
    assert (item.action if item else None) is expected
    if expected is Action.ORPHAN:
        assert item is not None
        assert "not pruned" in item.reason


def test_prune_with_microtenant_spares_the_parent(sim: ZpaSimulator, vault: Vault) -> None:
    """ZPA_MICROTENANT_ID=777 with --prune soft-deletes none of the parent's secrets; once
    777's own group is gone, a 777 run prunes that one secret and still nothing else."""
    group = sim.add_group("CONNECTOR_GRP", "Tenant-777-Group", microtenant_id="777")
    sim.add_key("CONNECTOR_GRP", group["id"], name="tenant-key", created=BASE_EPOCH)
    # A second group of 777 stays: a listing with no key at all prunes nothing (reconcile.py).
    other = sim.add_group("CONNECTOR_GRP", "Tenant-777-Other", microtenant_id="777")
    sim.add_key("CONNECTOR_GRP", other["id"], name="other-key", created=BASE_EPOCH)
    env = clean_env(sim.env(), vault.env)
    first = run_cli("sync", env=env)
    assert first.returncode == 0, first.stderr
    assert (
        vault.kv_get("zpa/CONNECTOR_GRP/Tenant-777-Group")["data"]["data"][  # type: ignore[index]
            "microtenant_id"
        ]
        == "777"
    )
    scoped = {**env, "ZPA_MICROTENANT_ID": "777"}
    run = run_cli("sync", "--prune", "--output", "json", env=scoped)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [i["action"] for i in report["items"]] == ["unchanged", "unchanged"]
    for atype, groups in sim.groups.items():
        for g in groups.values():
            assert vault.kv_get(f"zpa/{atype}/{g['name']}")["data"]["data"]  # type: ignore[index]
    # 777's group disappears: a 777 run prunes it, and only it.
    del sim.groups["CONNECTOR_GRP"][group["id"]]
    sim.keys["CONNECTOR_GRP"] = {
        k: v for k, v in sim.keys["CONNECTOR_GRP"].items() if v["zcomponentId"] != group["id"]
    }
    run = run_cli("sync", "--prune", "--output", "json", env=scoped)
    assert run.returncode == 0, run.stderr
    pruned = [i["path"] for i in json.loads(run.stdout)["items"] if i["action"] == "prune"]
    assert pruned == ["zpa/CONNECTOR_GRP/Tenant-777-Group"]
    for atype, groups in sim.groups.items():
        for g in groups.values():
            assert vault.kv_get(f"zpa/{atype}/{g['name']}")["data"]["data"]  # type: ignore[index]


# ---- (5) end to end: nothing pruned from a listing that is not whole --------------------------


def live_paths(vault: Vault) -> set[str]:
    """Paths whose current version is readable (not soft-deleted)."""
    found = set()
    for atype in ("CONNECTOR_GRP", "SERVICE_EDGE_GRP"):
        listed = vault.api("LIST", f"{vault.mount}/metadata/zpa/{atype}")
        for name in listed.json()["data"]["keys"] if listed.status_code == 200 else []:
            if vault.api("GET", f"{vault.mount}/data/zpa/{atype}/{name}").status_code == 200:
                found.add(f"zpa/{atype}/{name}")
    return found


def test_empty_body_with_prune_deletes_nothing_and_exits_1(sim: ZpaSimulator, vault: Vault) -> None:
    """ZPA answering `{}` to both listings: `sync --prune` soft-deletes nothing and exits 1."""
    env = clean_env(sim.env(), vault.env)
    assert run_cli("sync", env=env).returncode == 0
    before = live_paths(vault)
    assert len(before) == 5
    sim.set_faults(empty_listing_next=2)
    run = run_cli("sync", "--prune", "--output", "json", env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert not [i for i in report["items"] if i["action"] == "prune"]
    assert [listing["complete"] for listing in report["listings"]] == [False, False]
    assert all("not a list envelope" in e for e in report["errors"])
    assert live_paths(vault) == before


def test_page1_change_prunes_nothing_and_rolls_nothing_back(vault: Vault) -> None:
    """A key deleted and one added on page 1 during a --prune run (same total): the listing is
    incomplete, so no group is pruned and none is rewritten."""
    with ZpaSimulator(
        seed=44, connector_groups=25, service_edge_groups=1, rate_limits=False, max_page_size=20
    ) as sim:
        settings = load(path=None, environ={**sim.env(), **vault.env})
        store = build.kv_store(settings)
        zpa = build.zpa_client(settings.zpa())
        try:
            options = SyncOptions(
                association_types=settings.association_types,
                prefix=settings.vault.prefix,
                rules=dict(settings.rules),
            )
            first = run_once(source=zpa, store=store, options=options)
            assert not first.failed
            before = live_paths(vault)
            assert len(before) == 26
            sim.set_faults(swap_page1_next=1)
            pruning = SyncOptions(
                association_types=settings.association_types,
                prefix=settings.vault.prefix,
                rules=dict(settings.rules),
                scope=Scope(prune=True),
            )
            report = run_once(source=zpa, store=store, options=pruning)
        finally:
            store.close()
            zpa.close()
        assert report.failed
        assert any("CONNECTOR_GRP" in e and "page 1 changed" in e for e in report.errors)
        actions = {r.item.action for r in report.results}
        assert Action.PRUNE not in actions
        assert not [r for r in report.results if r.item.association_type is CONNECTOR]
        assert live_paths(vault) == before


# ---- (8) odd values ---------------------------------------------------------------------------


VALID = {
    "id": "71001",
    "name": "k",
    "provisioningKey": "3|h|x",
    "maxUsage": "10",
    "usageCount": "0",
    "enabled": True,
    "zcomponentId": "70001",
    "enrollmentCertId": "9",
    "creationTime": str(BASE_EPOCH),
    "modifiedTime": str(BASE_EPOCH),
}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"maxUsage": None}, "maxUsage is null"),
        ({"maxUsage": "ten"}, "maxUsage"),
        ({"maxUsage": 2.5}, "maxUsage"),
        ({"usageCount": None}, "usageCount is null"),
        ({"creationTime": "-5"}, "negative"),
        ({"creationTime": str(300_000_000_000 * 1000)}, "year 9000"),  # ms past year 9000
        ({"creationTime": None}, "creationTime is null"),
        ({"provisioningKey": ""}, "no provisioningKey value"),
        ({"provisioningKey": None, "exportable": False}, "exportable: false"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_odd_value_makes_one_key_ineligible(changes: dict[str, Any], problem: str) -> None:
    """Each odd value: the key parses, is ineligible, and says why."""
    parsed = parse_key({**VALID, **changes}, CONNECTOR)
    assert parsed.problem is not None
    assert problem in parsed.problem
    assert not parsed.eligible


@pytest.mark.parametrize("missing", ["maxUsage", "usageCount", "creationTime", "provisioningKey"])
def test_missing_value_makes_one_key_ineligible(missing: str) -> None:
    """A missing number or key value: one ineligible key with a reason, not an error."""
    parsed = parse_key({k: v for k, v in VALID.items() if k != missing}, CONNECTOR)
    assert parsed.problem is not None
    assert not parsed.eligible


def test_millisecond_timestamps_are_read_as_seconds() -> None:
    """creationTime/modifiedTime above 10^11 are milliseconds; the key stays eligible."""
    ms = str(BASE_EPOCH * 1000 + 123)
    parsed = parse_key({**VALID, "creationTime": ms, "modifiedTime": ms}, CONNECTOR)
    assert parsed.problem is None
    assert parsed.creation_time == parsed.modified_time == BASE_EPOCH


@pytest.mark.parametrize("missing", ["id", "zcomponentId"])
def test_key_that_cannot_be_placed_fails_its_listing(missing: str) -> None:
    """Without an id or a group a key cannot be attributed: dropping it could make its group
    look deleted, so the listing fails instead."""
    with pytest.raises(ZpaError):
        parse_key({k: v for k, v in VALID.items() if k != missing}, CONNECTOR)


def test_odd_keys_through_a_real_listing(sim: ZpaSimulator) -> None:
    """Odd values set over the simulator's control API reach the client; one key each."""
    gid = next(iter(sim.groups["CONNECTOR_GRP"]))
    odd = sim.add_key("CONNECTOR_GRP", gid, name="odd", created=BASE_EPOCH + 10)
    answer = httpx.post(
        f"{sim.url}/_sim/key",
        json={
            "association_type": "CONNECTOR_GRP",
            "key_id": odd["id"],
            "set": {"maxUsage": None},
            "unset": ["provisioningKey"],
        },
    )
    assert answer.status_code == 200
    keys = {k.id: k for k in client(sim).list_provisioning_keys(CONNECTOR)}
    assert len(keys) == 4
    problem = keys[odd["id"]].problem
    assert problem is not None
    assert "maxUsage is null" in problem
    assert "no provisioningKey value" in problem
    assert all(k.eligible for i, k in keys.items() if i != odd["id"])


def test_millisecond_creation_time_syncs(sim: ZpaSimulator, vault: Vault) -> None:
    """A key whose creationTime is in milliseconds syncs like any other, lease from its
    real creation time."""
    odd = first_key(sim)
    sim.patch_key("CONNECTOR_GRP", odd["id"], values={"creationTime": str(BASE_EPOCH * 1000)})
    run = run_cli("sync", "--output", "json", env=clean_env(sim.env(), vault.env))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert [i["action"] for i in report["items"]] == ["create"] * 5
    group = sim.groups["CONNECTOR_GRP"][odd["zcomponentId"]]["name"]
    meta = vault.metadata(f"zpa/CONNECTOR_GRP/{group}")["custom_metadata"]
    assert meta["lease_expires_at"] == "2026-01-31T00:00:00Z"  # created 2026-01-01 + 30 d


def test_null_max_usage_makes_only_that_key_ineligible(sim: ZpaSimulator, vault: Vault) -> None:
    """maxUsage null on one key: its group (no other key) is skipped with the reason, a group
    where it is the newest key falls back to its good key, and every other group syncs."""
    groups = sorted(sim.groups["CONNECTOR_GRP"], key=int)
    alone = next(k for k in sim.keys["CONNECTOR_GRP"].values() if k["zcomponentId"] == groups[0])
    sim.patch_key("CONNECTOR_GRP", alone["id"], values={"maxUsage": None})
    good = next(k for k in sim.keys["CONNECTOR_GRP"].values() if k["zcomponentId"] == groups[1])
    newer = sim.add_key("CONNECTOR_GRP", groups[1], name="newer", created=BASE_EPOCH + 99999)
    sim.patch_key("CONNECTOR_GRP", newer["id"], remove=["maxUsage"])
    run = run_cli("sync", "--output", "json", env=clean_env(sim.env(), vault.env))
    report = json.loads(run.stdout)
    assert all(listing["complete"] for listing in report["listings"]), report["errors"]
    by_group = {i["group_id"]: i for i in report["items"]}
    skipped = by_group[groups[0]]
    assert skipped["action"] == "skipped"
    assert "maxUsage is null" in skipped["reason"]
    assert by_group[groups[1]]["action"] == "create"
    assert by_group[groups[1]]["key_id"] == good["id"]
    others = [i for g, i in by_group.items() if g != groups[0]]
    assert [i["action"] for i in others] == ["create"] * 4
    assert run.returncode == 0, run.stderr


@pytest.mark.timeout(90)
def test_huge_total_pages_errors_quickly_with_bounded_memory(
    sim: ZpaSimulator, vault: Vault
) -> None:
    """totalPages "1000000": the sync fails that listing after one page, in seconds, with a
    small footprint (it used to page on, 1.4 GB in 45 s)."""
    sim.set_faults(listing_total_pages="1000000", only_association_type="CONNECTOR_GRP")
    started = time.monotonic()
    run = run_cli("sync", "--output", "json", env=clean_env(sim.env(), vault.env), timeout=60)
    assert time.monotonic() - started < 30
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert [listing["complete"] for listing in report["listings"]] == [False, True]
    assert "totalPages 1000000" in report["errors"][0]
    assert [i["action"] for i in report["items"]] == ["create"] * 2  # the other type synced
    gets = sim.stats.requests
    assert sum(n for k, n in gets.items() if k.startswith("GET provisioningKey")) == 2
    # The largest child this test process ever waited for (bao CLI, our CLI): nowhere near GBs.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 400 * 1024


# ---- (6) creates are never resent blindly -----------------------------------------------------


def create(zpa: ZpaClient, sim: ZpaSimulator, name: str) -> ProvisioningKey:
    gid = min(sim.groups["CONNECTOR_GRP"], key=int)
    return zpa.create_provisioning_key(
        CONNECTOR,
        name=name,
        group_id=gid,
        enrollment_cert_id=sim.cert_id("CONNECTOR_GRP"),
        max_usage=5,
    )


def named(sim: ZpaSimulator, name: str) -> list[dict[str, Any]]:
    return [k for k in sim.keys["CONNECTOR_GRP"].values() if k["name"] == name]


def posts(sim: ZpaSimulator) -> int:
    return sum(n for k, n in sim.stats.requests.items() if k.startswith("POST provisioningKey"))


def test_dropped_create_response_is_outcome_unknown_and_find_finds_one(
    sim: ZpaSimulator,
) -> None:
    """ZPA creates the key but the connection closes before the answer: the client raises
    ZpaOutcomeUnknown instead of creating again, and a find by the name gets that one key."""
    zpa = client(sim)
    name = "Connector-Group-0001-2026-rotated"
    sim.set_faults(drop_after_create_next=1)
    with pytest.raises(ZpaOutcomeUnknown):
        create(zpa, sim, name)
    assert posts(sim) == 1
    [made] = named(sim, name)
    found = zpa.find_provisioning_key(CONNECTOR, name)
    assert found is not None
    assert found.id == made["id"]
    assert len(named(sim, name)) == 1


def test_create_answered_5xx_is_not_resent(sim: ZpaSimulator) -> None:
    """A 503 on create may hide a done create: raised as outcome-unknown after one POST."""
    zpa = client(sim)
    sim.set_faults(fail_next=3, error_status=503, only_method="POST")
    with pytest.raises(ZpaOutcomeUnknown):
        create(zpa, sim, "five-oh-three")
    assert posts(sim) == 1


def test_create_refused_before_processing_is_retried(sim: ZpaSimulator) -> None:
    """429 (rate limited) means ZPA did nothing: the create is retried and made once."""
    zpa = client(sim)
    sim.set_faults(storm_429=1, retry_after=0, only_method="POST")
    made = create(zpa, sim, "after-429")
    assert [k["id"] for k in named(sim, "after-429")] == [made.id]


class RefuseFirstConnect(httpx.BaseTransport):
    """A real transport whose first POST fails to connect (nothing was sent)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "provisioningKey" in request.url.path and not self.refused:
            self.refused += 1
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_create_after_a_connect_error_is_retried(sim: ZpaSimulator) -> None:
    """A connection that never opened carried nothing: that create is safely retried."""
    transport = RefuseFirstConnect()
    zpa = client(sim, http=httpx.Client(transport=transport))
    made = create(zpa, sim, "after-connect-error")
    assert transport.refused == 1
    assert [k["id"] for k in named(sim, "after-connect-error")] == [made.id]


@pytest.mark.parametrize(
    "name",
    [
        "plain-name_1.2",
        "new key 1",
        "a+b/c?d&e=f#g%h",
        "東京-key",
        " leading space",
        "Tokyo+EQ+x",
    ],
)
def test_find_matches_hostile_names_exactly(name: str) -> None:
    """Names with spaces, URL/search syntax or non-ASCII are found exactly, even by a ZPA that
    strips unsafe search characters, past decoys that share the prefix, over several pages."""
    with ZpaSimulator(
        seed=45, connector_groups=1, service_edge_groups=0, rate_limits=False, max_page_size=20
    ) as sim:
        gid = next(iter(sim.groups["CONNECTOR_GRP"]))
        for i in range(25):
            sim.add_key("CONNECTOR_GRP", gid, name=f"{name}{i}")  # same prefix, not the name
        sim.add_key("CONNECTOR_GRP", gid, name=name.upper() if name != name.upper() else "x")
        wanted = sim.add_key("CONNECTOR_GRP", gid, name=name)
        sim.set_faults(search_strips_unsafe=True)
        found = client(sim).find_provisioning_key(CONNECTOR, name)
        assert found is not None
        assert (found.id, found.name) == (wanted["id"], name)
        assert client(sim).find_provisioning_key(CONNECTOR, name + "-absent") is None
