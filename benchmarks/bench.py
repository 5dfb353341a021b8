"""vault-zpa against the floor (raw hvac) and the naive way (one ZPA GET per key), in one run.

    python -m benchmarks.bench [--sizes 100,1000,5000,20000] [--repeat 3] [--out DIR]
    python -m benchmarks.bench --smoke          # tiny, for the test suite (harness cannot rot)

Starts a real OpenBao dev server and the ZPA simulator, seeds N keys across both association
types, and measures, each repeated and reported as median and spread (min..max):
  floor write / floor read  raw hvac writes/reads of the same N secrets, same concurrency
  naive                     one ZPA GET per key by id, then one raw write per key
  initial                   vault-zpa sync into an empty mount
  cold                      one-shot sync, nothing changed
  warm                      a daemon's second run, nothing changed
  changed_1pct              one-shot sync after 1 % of the groups got a new key
plus a rate-limited run (documented 20 GET / 10 writes per 10 s) counting 429s.
Writes benchmarks/results/latest.md and latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import hvac

from vault_zpa.model import AssociationType
from vault_zpa.reconcile import secret_data
from vault_zpa.testing.openbao import OpenBaoDevServer
from vault_zpa.testing.zpa_simulator import ZpaSimulator
from vault_zpa.zpa.client import parse_key

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 16
METADATA = {
    "managed_by": "vault-zpa",
    "usage_count": "0",
    "enabled": "true",
    "zpa_modified_time": "1767225600",
    "key_state": "ok",
    "lease_expires_at": "2026-01-31T00:00:00Z",
    "last_synced_at": "2026-11-27T00:00:00Z",
}


def child(scenario: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", scenario],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{scenario} failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class Raw:
    """The floor: raw hvac on a pool of CONCURRENCY threads, one client per thread."""

    def __init__(self, bao: OpenBaoDevServer, mount: str) -> None:
        self.bao, self.mount = bao, mount
        self.local = threading.local()
        self.requests = 0
        self.lock = threading.Lock()

    def client(self) -> hvac.Client:
        if not hasattr(self.local, "c"):
            self.local.c = hvac.Client(url=self.bao.addr, token=self.bao.root_token)
        return self.local.c  # type: ignore[no-any-return]

    def write(self, item: tuple[str, dict[str, str]]) -> None:
        path, data = item
        self.client().secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point=self.mount
        )
        with self.lock:
            self.requests += 1

    def write_with_metadata(self, item: tuple[str, dict[str, str]]) -> None:
        """The same end state vault-zpa creates: the data and its custom_metadata."""
        path, data = item
        client = self.client()
        client.secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, cas=0, mount_point=self.mount
        )
        client.secrets.kv.v2.update_metadata(
            path=path,
            mount_point=self.mount,
            max_versions=5,
            delete_version_after="0s",
            custom_metadata=METADATA,
        )
        with self.lock:
            self.requests += 2

    def read(self, path: str) -> None:
        self.client().secrets.kv.v2.read_secret_version(
            path=path, mount_point=self.mount, raise_on_deleted_version=False
        )
        with self.lock:
            self.requests += 1


def naive_run(zpa_http: httpx.Client, prefix: str, token: str, raw: Raw, keys: list[Any]) -> None:
    """Terraform-style: one GET per key by id, then one write per key."""

    def one(k: Any) -> None:
        zpa_http.get(
            f"{prefix}/associationType/{k.association_type.value}/provisioningKey/{k.id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        raw.write((f"zpa/{k.association_type.value}/{k.group_name}", secret_data(k)))

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, keys))


def timed(fn: Callable[..., None], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def run_all(pool: ThreadPoolExecutor, fn: Callable[[Any], None], items: list[Any]) -> None:
    list(pool.map(fn, items))


def new_mount(bao: OpenBaoDevServer) -> str:
    mount = f"bench-{uuid.uuid4().hex[:8]}"
    httpx.post(
        f"{bao.addr}/v1/sys/mounts/{mount}",
        headers={"X-Vault-Token": bao.root_token},
        json={"type": "kv", "options": {"version": "2"}},
    ).raise_for_status()
    return mount


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(n: int, repeat: int, bao: OpenBaoDevServer) -> dict[str, Any]:
    per_type = n // 2
    with ZpaSimulator(
        seed=n, connector_groups=per_type, service_edge_groups=n - per_type, rate_limits=False
    ) as sim:
        keys = [
            parse_key(
                dict(
                    k,
                    zcomponentName=sim.groups[t][k["zcomponentId"]]["name"],
                    enrollmentCertName="x",
                ),
                AssociationType(t),
            )
            for t in sim.keys
            for k in sim.keys[t].values()
        ]
        docs = [(f"zpa/{k.association_type.value}/{k.group_name}", secret_data(k)) for k in keys]
        results: dict[str, Any] = {"n": n}
        floor_wm: list[float] = []
        floor_w, floor_r, naive, runs = (
            [],
            [],
            [],
            {s: [] for s in ("initial", "cold", "warm", "changed_1pct")},
        )
        for _ in range(repeat):
            raw = Raw(bao, new_mount(bao))
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                floor_w.append(timed(run_all, pool, raw.write, docs))
                floor_r.append(timed(run_all, pool, raw.read, [d[0] for d in docs]))
                meta_raw = Raw(bao, new_mount(bao))
                floor_wm.append(timed(run_all, pool, meta_raw.write_with_metadata, docs))
            naive_raw = Raw(bao, new_mount(bao))
            zpa_http = httpx.Client(base_url=sim.url)
            token = zpa_http.post(
                "/signin", data={"client_id": sim.client_id, "client_secret": sim.client_secret}
            ).json()["access_token"]
            prefix = f"/mgmtconfig/v1/admin/customers/{sim.customer_id}"

            naive.append(timed(naive_run, zpa_http, prefix, token, naive_raw, keys))
            zpa_http.close()
            mount = new_mount(bao)
            env = {
                **os.environ,
                **bao.env(),
                **sim.env(),
                "VAULT_ZPA_MOUNT": mount,
                "VAULT_ZPA_CONCURRENCY": str(CONCURRENCY),
            }
            for scenario in ("initial", "cold", "warm"):
                runs[scenario].append(child("cold" if scenario == "initial" else scenario, env))
            changed = max(1, n // 100)
            groups = [(t, gid) for t in sim.groups for gid in sim.groups[t]][:changed]
            for atype, gid in groups:
                sim.add_key(atype, gid, name=f"changed-{uuid.uuid4().hex[:6]}")
            runs["changed_1pct"].append(child("cold", env))
        results["floor_write"] = summarize(floor_w)
        results["floor_read"] = summarize(floor_r)
        results["floor_write_meta"] = summarize(floor_wm)
        results["naive"] = summarize(naive)
        results["naive_requests"] = {"zpa": n, "vault": n, "documented_limit_seconds": n / 20 * 10}
        for scenario, samples in runs.items():
            results[scenario] = {
                **summarize([s["seconds"] for s in samples]),
                **{
                    k: samples[-1][k]
                    for k in (
                        "vault_requests",
                        "vault_writes",
                        "zpa_requests",
                        "zpa_list_requests",
                        "failed",
                        "items",
                        "zpa_limiter_wait",
                    )
                },
                "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
            }
        return results


def rate_limited(n: int, bao: OpenBaoDevServer) -> dict[str, Any]:
    """The documented limits on in the simulator: total time and 429s received."""
    with ZpaSimulator(
        seed=7, connector_groups=n // 2, service_edge_groups=n - n // 2, rate_limits=True
    ) as sim:
        env = {**os.environ, **bao.env(), **sim.env(), "VAULT_ZPA_MOUNT": new_mount(bao)}
        first = child("cold", env)
        second = child("cold", env)
        return {
            "n": n,
            "seconds_initial": first["seconds"],
            "seconds_cold": second["seconds"],
            "zpa_429": first["zpa_429"] + second["zpa_429"],
            "server_429": sim.stats.rate_limited,
            "zpa_requests": first["zpa_requests"] + second["zpa_requests"],
        }


def table(rows: list[dict[str, Any]], limited: dict[str, Any]) -> str:
    def cell(r: dict[str, Any], key: str, floor: str | None) -> str:
        m = r[key]
        ratio = f" ({m['median'] / r[floor]['median']:.2f}x)" if floor else ""
        return f"{m['median']:.2f}s [{m['min']:.2f}-{m['max']:.2f}]{ratio}"

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, OpenBao dev server (in-memory), simulator on loopback; "
        f"concurrency {CONCURRENCY}. Times: median [min-max]; ratio to the floor in brackets "
        "(naive: to data writes; initial: to data + metadata writes, the same end state; "
        "cold and 1 %: to reads).",
        "",
        "| N | floor write (data) | floor write (data + metadata) | floor read | naive "
        "(per-key GET + write) | initial sync | cold no-change | warm no-change | 1 % changed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {cell(r, 'floor_write', None)} | {cell(r, 'floor_write_meta', None)} | "
            f"{cell(r, 'floor_read', None)} | "
            f"{cell(r, 'naive', 'floor_write')} | {cell(r, 'initial', 'floor_write_meta')} | "
            f"{cell(r, 'cold', 'floor_read')} | {cell(r, 'warm', None)} | "
            f"{cell(r, 'changed_1pct', 'floor_read')} |"
        )
    lines += [
        "",
        "| N | scenario | Vault requests | Vault writes | ZPA requests (list GETs) | "
        "waiting on ZPA's limit | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | naive | {r['naive_requests']['vault']} | "
            f"{r['naive_requests']['vault']} | {r['naive_requests']['zpa']} (0); "
            f"≥ {r['naive_requests']['documented_limit_seconds']:.0f}s under "
            "ZPA's 20 GET/10 s | - | - |"
        )
        for s in ("initial", "cold", "warm", "changed_1pct"):
            m = r[s]
            lines.append(
                f"| {r['n']} | {s} | {m['vault_requests']} | {m['vault_writes']} | "
                f"{m['zpa_requests']} ({m['zpa_list_requests']}) | "
                f"{m['zpa_limiter_wait']:.1f}s | {m['peak_rss_mb']:.0f} MB |"
            )
    lines += [
        "",
        f"Documented rate limits on (N={limited['n']}): initial sync "
        f"{limited['seconds_initial']:.1f}s, cold sync {limited['seconds_cold']:.1f}s, "
        f"{limited['zpa_requests']} ZPA requests, 429s received: {limited['zpa_429']} "
        f"(simulator sent {limited['server_429']}).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,5000,20000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limited", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    sizes = [20] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.smoke else args.repeat
    with OpenBaoDevServer() as bao:
        rows = []
        for n in sizes:
            print(f"measuring N={n} ...", file=sys.stderr, flush=True)
            rows.append(measure(n, repeat if n <= 5000 else max(1, repeat - 1), bao))
        limited = rate_limited(20 if args.smoke else args.limited, bao)
    text = table(rows, limited)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "smoke" if args.smoke else "latest"
    (out / f"{name}.md").write_text(text + "\n")
    (out / f"{name}.json").write_text(json.dumps({"rows": rows, "rate_limited": limited}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
