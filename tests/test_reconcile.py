"""The pure planner, table-driven: which key a group gets and what happens to each path."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from vault_zpa.masking import Secret
from vault_zpa.model import (
    MANAGED_BY,
    Action,
    AssociationType,
    Listing,
    ProvisioningKey,
    StoredSecret,
)
from vault_zpa.reconcile import (
    Scope,
    TypeRule,
    desired,
    plan,
    secret_data,
    select_key,
    volatile_metadata,
)

CG = AssociationType.CONNECTOR_GRP
SE = AssociationType.SERVICE_EDGE_GRP
NOW = datetime(2026, 11, 27, tzinfo=UTC)
RULES = {CG: TypeRule(), SE: TypeRule()}
NO_SCOPE = Scope()


def key(
    kid: str,
    *,
    group: str = "g1",
    name: str | None = None,
    created: int = 100,
    usage: int = 0,
    max_usage: int = 10,
    enabled: bool = True,
    group_name: str = "Group One",
    atype: AssociationType = CG,
) -> ProvisioningKey:
    return ProvisioningKey(
        id=kid,
        name=name or f"key-{kid}",
        association_type=atype,
        key=Secret(f"3|h|{kid}"),
        group_id=group,
        group_name=group_name,
        enrollment_cert_id="9",
        enrollment_cert_name="Connector",
        max_usage=max_usage,
        usage_count=usage,
        enabled=enabled,
        creation_time=created,
        modified_time=created,
    )


@pytest.mark.parametrize(
    ("keys", "pattern", "chosen"),
    [
        ([key("1", created=100), key("2", created=200)], None, "2"),  # newest wins
        ([key("1", created=100), key("2", created=200, enabled=False)], None, "1"),  # disabled
        ([key("1", created=100), key("2", created=200, usage=10)], None, "1"),  # exhausted
        ([key("9", created=100), key("10", created=100)], None, "10"),  # tie: numeric id
        ([key("1", enabled=False), key("2", usage=10, max_usage=10)], None, None),  # none
        (
            [key("1", name="blue-a", created=300), key("2", name="green-b", created=100)],
            "green-.*",
            "2",
        ),  # pattern filters
        ([key("1", name="blue-a")], "green-.*", None),
    ],
)
def test_select_key(keys: list[ProvisioningKey], pattern: str | None, chosen: str | None) -> None:
    """DESIGN.md's selection: enabled, not exhausted, newest creationTime, ties by id."""
    picked = select_key(keys, re.compile(pattern) if pattern else None)
    assert (picked.id if picked else None) == chosen


def run(
    keys: list[ProvisioningKey],
    stored: dict[str, StoredSecret] | None = None,
    *,
    scope: Scope = NO_SCOPE,
    complete: bool = True,
    types: tuple[AssociationType, ...] = (CG,),
) -> dict[str, tuple[Action, str]]:
    listings = [
        Listing(t, tuple(k for k in keys if k.association_type is t), complete=complete)
        for t in types
    ]
    d = desired(listings, prefix="zpa", rules=RULES, scope=scope)
    p = plan(d, listings=listings, stored=stored or {}, rules=RULES, scope=scope, now=NOW)
    return {i.path or f"<{i.group_name}>": (i.action, i.reason) for i in p.items}


def managed(k: ProvisioningKey, *, version: int = 1, **meta: str) -> StoredSecret:
    return StoredSecret(
        "x",
        version,
        secret_data(k),
        {**volatile_metadata(k, TypeRule()), "last_synced_at": "t", **meta},
    )


PATH = "zpa/CONNECTOR_GRP/Group-One"


@pytest.mark.parametrize(
    ("stored", "zpa_key", "action"),
    [
        (None, key("1"), Action.CREATE),
        (managed(key("1")), key("1"), Action.UNCHANGED),
        (managed(key("1")), key("1", usage=3), Action.METADATA),
        (managed(key("1")), key("1", max_usage=20), Action.UPDATE),
        (managed(key("1")), key("2", created=500), Action.UPDATE),
        (StoredSecret(PATH, 3, {"provisioning_key": "mine"}, {}), key("1"), Action.CONFLICT),
        (StoredSecret(PATH, 2, None, {"managed_by": MANAGED_BY}), key("1"), Action.UPDATE),
        (StoredSecret(PATH, 1, secret_data(key("1")), {}), key("1"), Action.METADATA),
    ],
    ids=[
        "create",
        "unchanged",
        "usage-is-metadata",
        "max-usage-is-data",
        "new-key",
        "unowned-conflict",
        "deleted-rewritten",
        "interrupted-create-claimed",
    ],
)
def test_plan_single_group(
    stored: StoredSecret | None, zpa_key: ProvisioningKey, action: Action
) -> None:
    """Each state of one path yields exactly the documented action."""
    result = run([zpa_key], {PATH: stored} if stored else {})
    assert result[PATH][0] is action


def test_adopt_takes_over_an_unowned_path() -> None:
    """--adopt turns the conflict into an update that marks the path as ours."""
    stored = {PATH: StoredSecret(PATH, 3, {"provisioning_key": "mine"}, {})}
    assert run([key("1")], stored, scope=Scope(adopt=True))[PATH][0] is Action.UPDATE


def test_write_carries_the_version_read() -> None:
    """The check-and-set version of a write is the version the plan read."""
    listings = [Listing(CG, (key("1", max_usage=20),))]
    d = desired(listings, prefix="zpa", rules=RULES, scope=Scope())
    p = plan(
        d,
        listings=listings,
        stored={PATH: managed(key("1"), version=7)},
        rules=RULES,
        scope=Scope(),
        now=NOW,
    )
    assert p.items[0].expected_version == 7


def test_no_eligible_key_keeps_the_secret_and_marks_it() -> None:
    """All keys exhausted: skipped with a reason; the old secret stays, marked in metadata."""
    stored = {PATH: managed(key("1"))}
    listings = [Listing(CG, (key("1", usage=10),))]
    d = desired(listings, prefix="zpa", rules=RULES, scope=Scope())
    p = plan(d, listings=listings, stored=stored, rules=RULES, scope=Scope(), now=NOW)
    [item] = p.items
    assert item.action is Action.SKIPPED
    assert "1 exhausted" in item.reason
    assert item.custom_metadata is not None
    assert item.custom_metadata["key_state"] == "no-eligible-key"
    assert item.data is None


def test_slug_collisions_move_lossy_names_and_true_collisions_conflict() -> None:
    """'a b' and 'a/b' both slug to 'a-b': each moves to 'a-b-<group id>' while the plain
    'a-b' keeps its path; two groups both named 'dup' are a conflict for both, neither written."""
    keys = [
        key("1", group="g1", group_name="a b"),
        key("2", group="g2", group_name="a/b"),
        key("3", group="g3", group_name="a-b"),
        key("4", group="g4", group_name="dup"),
        key("5", group="g5", group_name="dup"),
    ]
    listings = [Listing(CG, tuple(keys))]
    d = desired(listings, prefix="zpa", rules=RULES, scope=Scope())
    p = plan(d, listings=listings, stored={}, rules=RULES, scope=Scope(), now=NOW)
    got = {i.group_id: (i.action, i.path) for i in p.items}
    assert got["g1"] == (Action.CREATE, "zpa/CONNECTOR_GRP/a-b-g1")
    assert got["g2"] == (Action.CREATE, "zpa/CONNECTOR_GRP/a-b-g2")
    assert got["g3"] == (Action.CREATE, "zpa/CONNECTOR_GRP/a-b")
    assert got["g4"] == got["g5"] == (Action.CONFLICT, "zpa/CONNECTOR_GRP/dup")
    assert all("collides" in i.reason for i in p.items if i.action is Action.CONFLICT)


def test_orphans_reported_and_pruned_only_on_request() -> None:
    """A managed path whose group is gone is an orphan; --prune turns it into a soft delete."""
    gone = key("5", group="g5", group_name="Gone")
    stored = {"zpa/CONNECTOR_GRP/Gone": managed(gone)}
    assert run([key("1")], stored)["zpa/CONNECTOR_GRP/Gone"][0] is Action.ORPHAN
    pruned = run([key("1")], stored, scope=Scope(prune=True))
    assert pruned["zpa/CONNECTOR_GRP/Gone"][0] is Action.PRUNE


def test_nothing_is_orphaned_from_an_incomplete_listing() -> None:
    """A failed listing proves nothing is gone: no orphan, no prune, no writes for that type."""
    stored = {"zpa/CONNECTOR_GRP/Gone": managed(key("5", group="g5", group_name="Gone"))}
    assert run([], stored, scope=Scope(prune=True), complete=False) == {}


def test_unmanaged_and_other_type_paths_are_never_orphans() -> None:
    """Paths not marked as ours, or of a type not in this run, are left alone."""
    edge = key("7", group="e1", group_name="Edge", atype=SE)
    stored = {
        "zpa/CONNECTOR_GRP/Theirs": StoredSecret("x", 1, {"association_type": "CONNECTOR_GRP"}, {}),
        "zpa/SERVICE_EDGE_GRP/Edge": managed(edge),
    }
    assert run([key("1")], stored, scope=Scope(prune=True)) == {
        PATH: (Action.CREATE, "new group in ZPA")
    }


def test_group_filter_limits_the_plan_and_disables_orphans() -> None:
    """--group NAME plans only that group and never reports others as orphans."""
    keys = [key("1", group="g1", group_name="One"), key("2", group="g2", group_name="Two")]
    stored = {"zpa/CONNECTOR_GRP/Gone": managed(key("5", group="g5", group_name="Gone"))}
    result = run(keys, stored, scope=Scope(groups=frozenset({"Two"}), prune=True))
    assert list(result) == ["zpa/CONNECTOR_GRP/Two"]


def test_lease_runs_from_key_creation() -> None:
    """lease_expires_at = creationTime + lease, the same on every run and replica."""
    meta = volatile_metadata(key("1", created=1767225600), TypeRule(lease_seconds=86400))
    assert meta["lease_expires_at"] == "2026-01-02T00:00:00Z"


@pytest.mark.parametrize(
    ("served", "excluded", "action", "chosen", "why"),
    [
        # The rotation's new key (2) is newest: written, whatever the journal says of key 1.
        ("1", frozenset({"1"}), Action.UPDATE, "2", "different key"),
        # Key 2 used up: the retiring key 1 is eligible but never written back.
        ("2", frozenset({"1"}), Action.SKIPPED, "2", "retired or being retired"),
        # Nothing excluded: the usual rule picks key 1 (2 is exhausted).
        ("2", frozenset(), Action.UPDATE, "1", "different key"),
    ],
)
def test_keys_a_rotation_retires_are_never_written(
    served: str, excluded: frozenset[str], action: Action, chosen: str, why: str
) -> None:
    """A key a rotation journal names as retiring or retired is never chosen for any path (the
    sync must not put back a key the rotation is about to delete)."""
    one = key("1", created=100)
    two = key("2", created=200, usage=10 if served == "2" else 0)
    listing = [Listing(CG, (one, two))]
    d = desired(listing, prefix="zpa", rules=RULES, scope=NO_SCOPE)
    current = managed(one if served == "1" else two)
    p = plan(
        d,
        listings=listing,
        stored={PATH: current},
        rules=RULES,
        scope=NO_SCOPE,
        now=NOW,
        excluded=excluded,
    )
    [item] = p.items
    assert item.action is action
    assert why in item.reason
    if action is Action.UPDATE:
        assert item.key is not None
        assert item.key.id == chosen


def test_the_served_key_is_kept_while_a_rotation_replaces_it() -> None:
    """Before the rotation's new key exists, the key Vault serves stays, reported in sync (not
    'no eligible key'): exclusion stops a key coming back, not one that never left."""
    one = key("1")
    listing = [Listing(CG, (one,))]
    d = desired(listing, prefix="zpa", rules=RULES, scope=NO_SCOPE)
    p = plan(
        d,
        listings=listing,
        stored={PATH: managed(one)},
        rules=RULES,
        scope=NO_SCOPE,
        now=NOW,
        excluded=frozenset({"1"}),
    )
    assert [i.action for i in p.items] == [Action.UNCHANGED]


def test_a_path_holding_another_groups_secret_is_never_handed_over() -> None:
    """A path whose managed secret names another group id (the group was renamed, or a slug
    collision came or went) is a conflict: its readers never get another group's key."""
    theirs = key("7", group="g9", group_name="Group One")  # same name, another group
    elsewhere = key("8", group="g9", group_name="Group Nine")  # g9 lives on, renamed
    result = run([key("1"), elsewhere], {PATH: managed(theirs)})
    action, reason = result[PATH]
    assert action is Action.CONFLICT
    assert "id g9" in reason


def test_a_group_made_again_under_its_name_takes_its_path_back() -> None:
    """The old group is gone from a complete listing (deleted and re-created in ZPA, as
    Terraform does): its successor of the same name gets the path."""
    old = key("7", group="g9", group_name="Group One")
    result = run([key("1")], {PATH: managed(old)})
    assert result[PATH][0] is Action.UPDATE
    partial = run([key("1")], {PATH: managed(old)}, complete=False)
    assert partial[PATH][0] is Action.CONFLICT  # a partial listing proves nothing


def test_an_empty_listing_prunes_nothing() -> None:
    """A complete listing with no key at all (a wrong customer or microtenant id, more likely
    than every group deleted at once) reports orphans but prunes none of them."""
    result = run([], {PATH: managed(key("1"))}, scope=Scope(prune=True))
    action, reason = result[PATH]
    assert action is Action.ORPHAN
    assert "not pruning every group" in reason
