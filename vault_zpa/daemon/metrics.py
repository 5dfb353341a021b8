"""The Prometheus series, built from the engine's state at scrape time. No secret is ever a
label or a value: labels are association types, group names, actions and outcomes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vault_zpa.daemon.engine import Engine
from vault_zpa.model import Action, Outcome
from vault_zpa.zpa.client import ZpaStats


class EngineCollector(Collector):
    def __init__(
        self,
        engine: Engine,
        *,
        zpa_stats: Callable[[], ZpaStats],
        vault_requests: Callable[[], Mapping[tuple[str, str], int]],
        token_ttl: Callable[[], float | None],
    ) -> None:
        self.engine = engine
        self._zpa_stats, self._vault_requests, self._token_ttl = (
            zpa_stats,
            vault_requests,
            token_ttl,
        )

    def collect(self) -> Iterator[Metric]:
        engine, state = self.engine, self.engine.state
        syncs = CounterMetricFamily("vault_zpa_syncs", "Sync runs by result", labels=["result"])
        for result in ("success", "partial", "error"):
            syncs.add_metric([result], state.syncs[result])
        yield syncs
        # The last run's result as a gauge: an alert on "the last run failed" resolves with the
        # next good run, which a window over the counters above cannot say as plainly.
        last_result = GaugeMetricFamily(
            "vault_zpa_last_sync_result",
            "1 for the result of this replica's last sync run, 0 for the others",
            labels=["result"],
        )
        for result in ("success", "partial", "error"):
            last_result.add_metric([result], 1 if state.last_result == result else 0)
        yield last_result
        items = CounterMetricFamily(
            "vault_zpa_items", "Planned items by action and outcome", labels=["action", "outcome"]
        )
        for (action, outcome), n in sorted(dict(state.items).items()):
            items.add_metric([action, outcome], n)
        yield items
        stats = self._zpa_stats()
        zreq = CounterMetricFamily(
            "vault_zpa_zpa_requests", "ZPA API requests", labels=["method", "endpoint", "status"]
        )
        for (method, endpoint, status), n in sorted(dict(stats.requests).items()):
            zreq.add_metric([method, endpoint, status], n)
        yield zreq
        yield CounterMetricFamily(
            "vault_zpa_zpa_rate_limited", "429 answers from ZPA", value=stats.rate_limited
        )
        yield CounterMetricFamily(
            "vault_zpa_zpa_retries", "Retried ZPA requests", value=stats.retries
        )
        yield CounterMetricFamily(
            "vault_zpa_zpa_rate_limit_wait_seconds",
            "Seconds spent waiting on the client-side ZPA rate limiter",
            value=stats.limiter_wait,
        )
        vreq = CounterMetricFamily(
            "vault_zpa_vault_requests", "Vault requests", labels=["kind", "outcome"]
        )
        for (kind, outcome), n in sorted(self._vault_requests().items()):
            vreq.add_metric([kind, outcome], n)
        yield vreq
        yield from self._keys()
        ttl = self._token_ttl()
        token = GaugeMetricFamily(
            "vault_zpa_vault_token_ttl_seconds",
            "Seconds left on the daemon's Vault token (absent: no expiry)",
        )
        if ttl is not None:
            token.add_metric([], ttl)
        yield token
        yield GaugeMetricFamily(
            "vault_zpa_leader",
            "1 while this replica holds the leader lease",
            value=1 if engine.fence() is not None else 0,
        )
        rot = CounterMetricFamily(
            "vault_zpa_rotations", "Rotation steps by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(dict(state.rotations).items()):
            rot.add_metric([outcome], n)
        yield rot
        yield GaugeMetricFamily(
            "vault_zpa_rotation_needs_human",
            "Secrets whose rotation gave up and waits for a person",
            value=sum(1 for j in dict(engine.warm.journals).values() if j.needs_human),
        )
        requests = GaugeMetricFamily(
            "vault_zpa_rotation_requests",
            "Remote rotation requests held, by state",
            labels=["state"],
        )
        counts = engine.requests.counts()
        for request_state in ("queued", "running", "done", "failed"):
            requests.add_metric([request_state], counts.get(request_state, 0))
        yield requests
        last = GaugeMetricFamily(
            "vault_zpa_last_success_timestamp_seconds",
            "Unix time of the last fully successful sync",
        )
        if state.last_success is not None:
            last.add_metric([], state.last_success)
        yield last

    def _keys(self) -> Iterator[Metric]:
        report = self.engine.state.last_report
        keys = GaugeMetricFamily(
            "vault_zpa_keys",
            "Groups by association type and state (last run)",
            labels=["association_type", "state"],
        )
        usage = GaugeMetricFamily(
            "vault_zpa_key_usage_ratio",
            "usage_count / max_usage of the key each group holds (exhaustion early warning)",
            labels=["association_type", "group"],
        )
        if report is not None:
            counts: Counter[tuple[str, str]] = Counter()
            for r in report.results:
                counts[(r.item.association_type.value, _key_state(r.item.action, r.outcome))] += 1
                key = r.item.key
                if key is not None and key.max_usage:
                    usage.add_metric(
                        [key.association_type.value, r.item.group_name or ""],
                        key.usage_count / key.max_usage,
                    )
            for (atype, key_state), n in sorted(counts.items()):
                keys.add_metric([atype, key_state], n)
        yield keys
        yield usage


def _key_state(action: Action, outcome: Outcome) -> str:
    if outcome is Outcome.FAILED:
        return "failed"
    return {
        Action.CONFLICT: "conflict",
        Action.SKIPPED: "no-eligible-key",
        Action.NO_KEY: "no-key",
        Action.PROVISION: "provisioned",
        Action.ORPHAN: "orphan",
        Action.PRUNE: "pruned",
    }.get(action, "ok")
