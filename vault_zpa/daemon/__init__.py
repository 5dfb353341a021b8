"""`vault-zpa daemon`, in small parts with one job each.

    schedule.py  when runs happen: interval or 5-field crontab (UTC), with jitter; validated
    runner.py    runs never overlap; triggers during a run queue one follow-up (full wins)
    requests.py  remote rotation requests: ids, queued -> running -> done | failed, results
    engine.py    one replica's work: the leader lease, syncs with warm state and read-back,
                 fail-over, rotations and requests, and what readiness and metrics report
    health.py    is Vault reachable, unsealed, and our token alive (for /readyz)
    http.py      the listener: /healthz, /readyz, /metrics, /v1/sync, /v1/rotate, /v1/requests
    metrics.py   the Prometheus collector (no secret is ever a label or a value)
    app.py       wires them to a real process: apscheduler jobs, signals, start-up errors
    client.py    `vault-zpa rotate --daemon URL`: send a request, wait for its outcome

The engine depends only on the ports the sync engine uses (a key source, a KV store, a lease),
so it runs in-process against the in-memory store and a fake clock in the unit tests.
This package's import is light (config.py validates cron expressions through schedule.py).
"""
