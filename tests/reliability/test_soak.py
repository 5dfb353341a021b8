"""Soak: a daemon-style loop over many keys for many compressed cycles with random faults;
RSS, open file descriptors and threads stay flat."""

from __future__ import annotations

import os
import random
import resource
import threading

import pytest

from tests.conftest import Vault
from tests.reliability.conftest import Recorder
from vault_zpa import build
from vault_zpa.config import load
from vault_zpa.sync import SyncOptions, WarmState, run_once
from vault_zpa.testing.zpa_simulator import ZpaSimulator

KEYS = int(os.environ.get("VAULT_ZPA_SOAK_KEYS", "5000"))
CYCLES = int(os.environ.get("VAULT_ZPA_SOAK_CYCLES", "1000"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_soak(vault: Vault, recorder: Recorder) -> None:
    """CYCLES cycles over KEYS keys (warm runs, a full read-back every 50th, random ZPA faults
    and changes): memory, fds and threads do not grow after warm-up."""
    rng = random.Random(7)
    with ZpaSimulator(
        seed=60, connector_groups=KEYS // 2, service_edge_groups=KEYS - KEYS // 2, rate_limits=False
    ) as sim:
        settings = load(
            path=None,
            environ={
                **sim.env(),
                **vault.env,
                "VAULT_ZPA_ZPA_RETRY_BUDGET": "2s",
                "VAULT_ZPA_ZPA_TIMEOUT": "1s",
                # Compressed cycles: the simulator enforces no limits here, nor does the client.
                "VAULT_ZPA_ZPA_GET_LIMIT": "10000",
            },
        )
        store = build.kv_store(settings)
        zpa = build.zpa_client(settings.zpa())
        options = SyncOptions(
            association_types=settings.association_types, prefix="zpa", rules=dict(settings.rules)
        )
        warm = WarmState()
        samples = []
        groups = [(t, g) for t in sim.groups for g in sim.groups[t]]
        for cycle in range(CYCLES):
            if cycle % 50 == 0:
                warm.invalidate()
            fault = rng.random()
            if fault < 0.05:
                sim.set_faults(fail_next=2, error_status=503)
            elif fault < 0.08:
                sim.set_faults(drop_next=1)
            elif fault < 0.15:
                atype, gid = rng.choice(groups)
                sim.add_key(atype, gid, name=f"soak-{cycle}")
            run_once(source=zpa, store=store, options=options, warm=warm)
            sim.clear_faults()
            if cycle in (CYCLES // 4, CYCLES - 1):
                samples.append((rss_mb(), fds(), threading.active_count()))
        store.close()
        zpa.close()
    (rss_a, fds_a, thr_a), (rss_b, fds_b, thr_b) = samples
    flat = rss_b - rss_a < 30 and fds_b - fds_a <= 2 and thr_b <= thr_a
    recorder.trial(
        "soak",
        f"{KEYS} keys x {CYCLES} cycles, random faults",
        survived=flat,
        note=f"RSS {rss_a:.0f}->{rss_b:.0f} MB, fds {fds_a}->{fds_b}, threads {thr_a}->{thr_b}",
    )
    assert flat, samples
