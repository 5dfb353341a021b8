"""How a sync spends its time and memory: each path read once, the ZPA listing overlapped with
the Vault side, nothing but a digest of a key kept from what Vault holds, bounded fan-out."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Vault, Wired
from vault_zpa.concurrency import ordered_map
from vault_zpa.model import Action, AssociationType, KeyDigest, Outcome, ProvisioningKey
from vault_zpa.sync import inspect, run_once
from vault_zpa.zpa.client import ZpaClient


def vault_calls(wired: Wired, kind: str) -> int:
    return sum(n for (k, _), n in wired.store.conn.request_counts().items() if k == kind)


def test_cold_sync_reads_each_path_once_and_writes_nothing(wired: Wired) -> None:
    run_once(source=wired.zpa, store=wired.store, options=wired.options())
    wired.store.conn.requests.clear()
    report = run_once(source=wired.zpa, store=wired.store, options=wired.options())
    assert {r.item.action for r in report.results} == {Action.UNCHANGED}
    assert vault_calls(wired, "read") == 5  # 3 connector groups + 2 service edge groups
    # One folder per association type, and the rotation journals' folder (empty: 404).
    assert vault_calls(wired, "list") == 3
    assert wired.store.conn.total_requests() == 8  # and no writes


class GatedSource:
    """The real ZPA client, but one association type's listing waits (up to 20 s) for a
    condition; records whether the condition came true while it waited."""

    def __init__(
        self, inner: ZpaClient, gated: AssociationType, until: threading.Event | None = None
    ) -> None:
        self.inner, self.gated = inner, gated
        self.until = until or threading.Event()
        self.saw_it: bool | None = None

    def list_provisioning_keys(self, atype: AssociationType) -> list[ProvisioningKey]:
        if atype is self.gated:
            self.saw_it = self.until.wait(timeout=20)
        return self.inner.list_provisioning_keys(atype)


def test_one_type_is_written_while_the_next_is_still_listed(wired: Wired) -> None:
    """With ZPA's 20 GET / 10 s limit, listing 20,000 keys takes 20 s: connector groups are
    written while service edge groups are still being listed, not after."""
    source = GatedSource(wired.zpa, AssociationType.SERVICE_EDGE_GRP)

    def watch() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not source.until.is_set():
            if len(wired.store.list_tree("zpa/CONNECTOR_GRP")) == 3:
                source.until.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    report = run_once(source=source, store=wired.store, options=wired.options())
    watcher.join()
    assert source.saw_it is True
    assert [r.outcome for r in report.results] == [Outcome.DONE] * 5
    assert [r.item.association_type for r in report.results] == [
        AssociationType.CONNECTOR_GRP
    ] * 3 + [AssociationType.SERVICE_EDGE_GRP] * 2


class CountingStore:
    """The real store; sets an event once Vault has answered a read."""

    def __init__(self, wired: Wired) -> None:
        self.inner = wired.store
        self.kv_version = wired.store.kv_version
        self.read_done = threading.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def read(self, path: str) -> object:
        secret = self.inner.read(path)
        self.read_done.set()
        return secret


def test_vault_is_read_back_while_zpa_is_listed(wired: Wired) -> None:
    run_once(source=wired.zpa, store=wired.store, options=wired.options())
    store = CountingStore(wired)
    source = GatedSource(wired.zpa, AssociationType.CONNECTOR_GRP, until=store.read_done)
    snap = inspect(source=source, store=store, options=wired.options())  # type: ignore[arg-type]
    assert source.saw_it is True  # Vault answered before the first listing even started
    assert {i.action for i in snap.plan.items} == {Action.UNCHANGED}


def test_a_sync_holds_digests_of_keys_not_the_keys(wired: Wired, vault: Vault) -> None:
    """What a sync read from Vault stays in memory (the daemon keeps it between runs): it
    holds a per-process digest of each key, and a changed key is still noticed."""
    run_once(source=wired.zpa, store=wired.store, options=wired.options())
    snap = inspect(source=wired.zpa, store=wired.store, options=wired.options())
    keys = {k.key.reveal() for listing in snap.listings for k in listing.keys}
    held = [s.data["provisioning_key"] for s in snap.stored.values() if s.data]
    assert len(held) == 5
    assert all(isinstance(v, KeyDigest) for v in held)
    assert not keys & set(held)
    assert not any(k in repr(snap.stored) for k in keys)

    # A value that merely looks like our digest is a plain string: it is replaced.
    path = next(iter(sorted(snap.stored)))
    fake = str(snap.stored[path].data["provisioning_key"])  # type: ignore[index]
    vault.bao("kv", "patch", f"{vault.mount}/{path}", f"provisioning_key={fake}")
    report = run_once(source=wired.zpa, store=wired.store, options=wired.options())
    changed = [r.item for r in report.results if r.item.action is Action.UPDATE]
    assert [i.path for i in changed] == [path]
    assert "provisioning_key" in changed[0].reason
    assert vault.kv_get(path)["data"]["data"]["provisioning_key"] in keys  # type: ignore[index]


def test_key_digest_is_idempotent_hides_the_key_and_differs_per_process() -> None:
    value = "3|api.private.zscaler.com|secret"
    digest = KeyDigest.of(value)
    assert KeyDigest.of(digest) is digest
    assert KeyDigest.of(str(digest)) != digest
    assert "secret" not in digest
    assert len(digest) == 32
    code = f"from vault_zpa.model import KeyDigest; print(KeyDigest.of({value!r}))"
    elsewhere = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(elsewhere) == 32
    assert elsewhere != digest


def test_ordered_map_keeps_order_and_bounds_calls_in_flight() -> None:
    lock = threading.Lock()
    in_flight = peak = 0

    def work(n: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.001 * (n % 3))  # out-of-order completion
        with lock:
            in_flight -= 1
        return n * n

    with ThreadPoolExecutor(8) as pool:
        assert list(ordered_map(pool, work, range(200), window=5)) == [n * n for n in range(200)]
    assert 1 < peak <= 5


def test_leaving_ordered_map_early_submits_nothing_more() -> None:
    started: list[int] = []

    def record(n: int) -> int:
        started.append(n)
        return n

    with ThreadPoolExecutor(8) as pool:
        results = ordered_map(pool, record, range(1000), window=4)
        assert next(results) == 0
        results.close()
    assert len(started) <= 4  # Executor.map would have run all 1,000


def test_ordered_map_rejects_an_empty_window() -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="window"):
        list(ordered_map(pool, str, [1], window=0))
