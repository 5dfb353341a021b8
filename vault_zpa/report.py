"""Render a sync Report as a table for people or as versioned JSON for scripts.

The JSON schema (docs/report-schema.json, `schema_version` 1) is a contract: add fields freely,
never rename or remove them without bumping the version. Key values appear only with --reveal.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from vault_zpa.model import Action, ItemResult, Listing, Outcome, Report

SCHEMA_VERSION = 1


def to_json(report: Report, *, mount: str, reveal: bool = False) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "dry_run": report.dry_run,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "mount": mount,
        "ok": not report.failed,
        "summary": summary_counts(report),
        "listings": [
            {
                "association_type": listing.association_type.value,
                "complete": listing.complete,
                "keys": len(listing.keys),
                "error": listing.error,
                "groups": None if listing.groups is None else len(listing.groups),
                "groups_error": listing.groups_error,
            }
            for listing in report.listings
        ],
        "items": [_item(r, reveal, mount) for r in report.results],
        "errors": list(report.errors),
    }


def _item(result: ItemResult, reveal: bool, mount: str) -> dict[str, Any]:
    """`path` is relative to the mount (schema 1, kept); `kv_path` is what the text PATH column
    shows and what `vault kv get` takes."""
    item = result.item
    key = item.key
    out: dict[str, Any] = {
        "action": item.action.value,
        "outcome": result.outcome.value,
        "association_type": item.association_type.value,
        "path": item.path,
        "kv_path": f"{mount}/{item.path}",
        "group_id": item.group_id,
        "group_name": item.group_name,
        "key_id": key.id if key else None,
        "key_name": key.name if key else None,
        "usage_count": key.usage_count if key else None,
        "max_usage": key.max_usage if key else None,
        "reason": item.reason,
        "error": result.error,
        "version": result.version,
    }
    if reveal and key is not None:
        out["provisioning_key"] = key.key.reveal()
    return out


def not_found(groups: Iterable[str], listings: Iterable[Listing]) -> list[str]:
    """`--group` names no listing has a key for (a typo, most likely). Only said when every
    listing is complete: a group in a failed listing is not known to be missing."""
    listings = list(listings)
    if any(not listing.complete for listing in listings):
        return []
    names = {k.group_name for listing in listings for k in listing.keys}
    names |= {g.name for listing in listings for g in listing.groups or ()}
    return sorted(g for g in set(groups) if g not in names)


def for_kv_version(report: Report, kv_version: int) -> Report:
    """On KV v1, where --prune is refused, an orphan's hint must not say to use it."""
    if kv_version != 1:
        return report
    results = tuple(
        replace(
            r,
            item=replace(
                r.item,
                reason=r.item.reason.replace(
                    "use --prune to soft-delete",
                    "remove it by hand if unused (--prune needs a KV v2 mount)",
                ),
            ),
        )
        if r.item.action is Action.ORPHAN
        else r
        for r in report.results
    )
    return replace(report, results=results)


def summary_counts(report: Report) -> dict[str, int]:
    counts = Counter(r.item.action.value for r in report.results)
    out = {action.value: counts.get(action.value, 0) for action in Action}
    out["failed"] = sum(1 for r in report.results if r.outcome is Outcome.FAILED)
    return out


def summary_line(report: Report) -> str:
    """One true line: what was done (or, in a dry run, what would be), and what went wrong."""
    counts = summary_counts(report)
    parts = [f"{counts[a.value]} {a.value}" for a in Action if counts[a.value]]
    if counts["failed"]:
        parts.append(f"{counts['failed']} FAILED")
    head = "dry run" if report.dry_run else "sync"
    listings = report.listings
    if listings and all(not listing.complete for listing in listings):
        return f"{head}: nothing was listed: every ZPA listing failed ({len(listings)} error(s))"
    body = ", ".join(parts) if parts else "nothing to do"
    if report.dry_run:
        writes = sum(1 for r in report.results if r.outcome is Outcome.PLANNED)
        verb = f"{writes} would be written" if writes else "nothing would change"
    elif counts["failed"]:
        verb = "the rest done"
    else:
        verb = "done"
    tail = (
        f"; {len(report.errors)} listing error(s), those types not synced" if report.errors else ""
    )
    return f"{head}: {body} ({verb}){tail}"


def to_text(report: Report, *, mount: str, reveal: bool = False, verbose: bool = False) -> str:
    rows = [
        r
        for r in report.results
        if verbose or r.item.action is not Action.UNCHANGED or r.outcome is Outcome.FAILED
    ]
    lines = []
    if rows:
        header = ("ACTION", "TYPE", "GROUP", "KEY", "USAGE", "PATH", "REASON")
        table = [header]
        for r in rows:
            key = r.item.key
            reason = r.error if r.outcome is Outcome.FAILED else r.item.reason
            table.append(
                (
                    r.item.action.value + (" FAILED" if r.outcome is Outcome.FAILED else ""),
                    r.item.association_type.value,
                    _clip(r.item.group_name or "", 32),
                    _clip(key.name, 28) if key else "-",
                    f"{key.usage_count}/{key.max_usage}" if key else "-",
                    f"{mount}/{r.item.path}",
                    reason or "",
                )
            )
            if reveal and key is not None:
                table.append(("", "", "", "key:", "", key.key.reveal(), ""))
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            lines.append(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
            )
    for error in report.errors:
        lines.append(f"error: {error}")
    lines.append(summary_line(report))
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= width else printable[: width - 1] + "…"


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
