"""One measured vault-zpa scenario in a fresh process, so its peak RSS is its own.

Usage: python -m benchmarks.child SCENARIO   (settings from the environment, as the CLI reads)
Prints one JSON line: seconds, vault and ZPA request counts, writes, peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from vault_zpa import build
from vault_zpa.config import load
from vault_zpa.model import Outcome
from vault_zpa.sync import SyncOptions, WarmState, run_once


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries the parent's high-water mark
    across fork/vfork + exec into it, so a child of the benchmark (which holds the simulator's
    20,000 keys) reported the parent's peak (166 MB) instead of its own."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(scenario: str) -> None:
    settings = load(path=None, environ=os.environ)
    store = build.kv_store(settings)
    zpa = build.zpa_client(settings.zpa())
    options = SyncOptions(
        association_types=settings.association_types,
        prefix=settings.vault.prefix,
        rules=dict(settings.rules),
    )
    warm = WarmState() if scenario == "warm" else None
    if warm is not None:
        run_once(source=zpa, store=store, options=options, warm=warm)  # the daemon's first run
        # The daemon's next run comes an interval (minutes) later: by then ZPA's rate window
        # of the first run's listing is over.
        time.sleep(settings.zpa().rate_window + 0.5)
    store.conn.requests.clear()
    zpa.stats.requests.clear()
    zpa.stats.limiter_wait = 0.0
    started = time.perf_counter()
    report = run_once(source=zpa, store=store, options=options, warm=warm)
    seconds = time.perf_counter() - started
    writes = sum(
        n for (kind, _), n in store.conn.requests.items() if kind in ("write", "metadata", "delete")
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "vault_requests": store.conn.total_requests(),
                "vault_writes": writes,
                "zpa_requests": zpa.stats.total(),
                "zpa_list_requests": sum(
                    n
                    for (m, e, _), n in zpa.stats.requests.items()
                    if m == "GET" and e == "provisioningKey"
                ),
                "zpa_429": zpa.stats.rate_limited,
                "items": len(report.results),
                "failed": sum(1 for r in report.results if r.outcome is Outcome.FAILED),
                "zpa_limiter_wait": zpa.stats.limiter_wait,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )
    store.close()
    zpa.close()


if __name__ == "__main__":
    main(sys.argv[1])
