"""The reliability suite's recorder: every case reports (fault, trials, survived, keys lost,
leaks found); `make reliability` writes the table to docs/reliability.md."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    area: str
    fault: str
    trials: int = 0
    survived: int = 0
    keys_lost: int = 0
    leaks: int = 0
    notes: list[str] = field(default_factory=list)


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def trial(
        self,
        area: str,
        fault: str,
        *,
        survived: bool,
        keys_lost: int = 0,
        leaks: int = 0,
        note: str | None = None,
    ) -> None:
        row = self.rows.setdefault((area, fault), Row(area, fault))
        row.trials += 1
        row.survived += int(survived)
        row.keys_lost += keys_lost
        row.leaks += leaks
        if note and note not in row.notes:
            row.notes.append(note)

    def markdown(self) -> str:
        lines = [
            "# Reliability results",
            "",
            "Written by `make reliability` (`tests/reliability/`). Every trial checks the same",
            "invariants: no wrong key is ever written; nothing is pruned or deleted because of a",
            "failure; the failure is reported (exit code / readiness); after the fault clears the",
            "next run converges with no human action; and no canary secret appears in any output.",
            "",
            "| area | fault | trials | survived | keys lost | leaks found | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows.values():
            pct = 100 * row.survived / row.trials if row.trials else 0
            lines.append(
                f"| {row.area} | {row.fault} | {row.trials} | {pct:.0f} % | "
                f"{row.keys_lost} | {row.leaks} | {'; '.join(row.notes)} |"
            )
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    if os.environ.get("VAULT_ZPA_RELIABILITY_REPORT") == "1" and rec.rows:
        target = ROOT / "docs" / "reliability.md"
        target.write_text(merged(target.read_text() if target.exists() else "", rec))


def merged(existing: str, rec: Recorder) -> str:
    """This session's rows replace the table's rows of the same (area, fault); rows this
    session did not run are kept, so one file of trials can be rerun on its own."""
    fresh = rec.markdown().splitlines()
    header_end = next(i for i, line in enumerate(fresh) if line.startswith("|---"))
    ours = {tuple(c.strip() for c in line.split("|")[1:3]) for line in fresh[header_end + 1 :]}
    kept = [
        line
        for line in existing.splitlines()
        if line.startswith("| ")
        and not line.startswith("| area ")
        and tuple(c.strip() for c in line.split("|")[1:3]) not in ours
    ]
    body = fresh[header_end + 1 :]
    tail = [line for line in existing.splitlines() if line and not line.startswith("|")]
    notes = tail[tail.index(fresh[0]) + 1 :] if fresh[0] in tail else []
    intro = fresh[: header_end + 1]
    extra = [n for n in notes if n not in intro]
    return "\n".join([*intro, *kept, *body, *(["", *extra] if extra else [])]) + "\n"
