"""`xrec report ab`: per-variant rates of an A/B test, from the service's event log.

The split assigns *persons* to variants (app/services/variants.py), so persons are the unit here too:

- only events that name a variant (`POST /v1/events` `variant`: the variant whose recommendation the event
  answers) count, each event id once (the log is at-least-once), within [since, until) by event time;
- a variant's **exposed persons** are those with at least one exposure event (`--exposure`, default
  `exposure`: the event a client sends when it shows the recommendations) in it; its **exposure share** is
  their share of all exposed persons (compare it with the configured share: a mismatch means the split or
  the logging is off);
- for each outcome event type (`--outcomes`, default `click,purchase`), the **rate** is the share of the
  variant's exposed persons with at least one such event in it;
- each share and rate comes with a 95% Wilson score interval, and each rate with its difference to the
  first variant's (normal approximation, unpooled standard error).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.services.event_log import LoggedEvent, read_events

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (0, 0 for n = 0)."""
    if n <= 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def difference(x1: int, n1: int, x0: int, n0: int, z: float = Z95) -> tuple[float, float, float]:
    """(p1 − p0, and its normal-approximation interval with unpooled standard error)."""
    if n1 <= 0 or n0 <= 0:
        return 0.0, 0.0, 0.0
    p1, p0 = x1 / n1, x0 / n0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    d = p1 - p0
    return d, d - z * se, d + z * se


@dataclass
class Rate:
    persons: int  # exposed persons with at least one such event
    events: int  # such events in the variant (exposed persons or not)
    rate: float
    low: float
    high: float
    diff: float = 0.0  # vs the first variant
    diff_low: float = 0.0
    diff_high: float = 0.0


@dataclass
class VariantStats:
    variant: str
    persons: int  # with any event naming this variant
    exposed: int
    exposures: int  # exposure events
    share: float
    share_low: float
    share_high: float
    outcomes: dict[str, Rate] = field(default_factory=dict)


@dataclass
class Report:
    exposure: str
    outcomes: list[str]
    events: int  # events counted (named a variant, in the time window, first delivery)
    duplicates: int
    variants: list[VariantStats]

    def to_dict(self) -> dict:
        return asdict(self)


def ab_report(events: Iterable[LoggedEvent], exposure: str = "exposure",
              outcomes: Sequence[str] = ("click", "purchase"), since: int | None = None,
              until: int | None = None) -> Report:
    seen: set[str] = set()
    duplicates = counted = 0
    persons: dict[str, set[str]] = {}
    by_type: dict[tuple[str, str], set[str]] = {}  # (variant, event type) → persons
    n_events: dict[tuple[str, str], int] = {}
    for e in events:
        if e.event_id in seen:
            duplicates += 1
            continue
        seen.add(e.event_id)
        if e.variant is None or (since is not None and e.ts < since) or (until is not None and e.ts >= until):
            continue
        counted += 1
        persons.setdefault(e.variant, set()).add(e.person)
        by_type.setdefault((e.variant, e.event), set()).add(e.person)
        n_events[(e.variant, e.event)] = n_events.get((e.variant, e.event), 0) + 1
    names = sorted(persons)
    exposed = {v: by_type.get((v, exposure), set()) for v in names}
    total = sum(len(s) for s in exposed.values())
    stats = []
    for v in names:
        n = len(exposed[v])
        lo, hi = wilson(n, total)
        s = VariantStats(v, len(persons[v]), n, n_events.get((v, exposure), 0), n / total if total else 0.0, lo, hi)
        for kind in outcomes:
            x = len(by_type.get((v, kind), set()) & exposed[v])
            lo, hi = wilson(x, n)
            s.outcomes[kind] = Rate(x, n_events.get((v, kind), 0), x / n if n else 0.0, lo, hi)
        stats.append(s)
    if stats:
        first = stats[0]
        for s in stats[1:]:
            for kind, r in s.outcomes.items():
                r.diff, r.diff_low, r.diff_high = difference(r.persons, s.exposed, first.outcomes[kind].persons,
                                                             first.exposed)
    return Report(exposure, list(outcomes), counted, duplicates, stats)


def ab_report_from_log(events_dir: Path, exposure: str = "exposure", outcomes: Sequence[str] = ("click", "purchase"),
                       since: int | None = None, until: int | None = None) -> Report:
    return ab_report(read_events(events_dir), exposure, outcomes, since, until)


def format_table(report: Report):  # -> rich.table.Table (rich is imported by the CLI only)
    from rich.table import Table

    first = report.variants[0].variant if report.variants else ""
    table = Table(title=f"A/B report: {report.events:,} events naming a variant ({report.duplicates:,} duplicate "
                        f"deliveries dropped); rates per exposed person ('{report.exposure}'), 95% Wilson intervals")
    table.add_column("variant")
    table.add_column("persons", justify="right")
    table.add_column("exposed", justify="right")
    table.add_column("exposure share [95% CI]", justify="right")
    table.add_column(f"{report.exposure} events", justify="right")
    for kind in report.outcomes:
        table.add_column(f"{kind} rate [95% CI]", justify="right")
        table.add_column(f"{kind} Δ vs {first} [95% CI]", justify="right")
    for s in report.variants:
        row = [s.variant, f"{s.persons:,}", f"{s.exposed:,}", f"{s.share:.2%} [{s.share_low:.2%}, {s.share_high:.2%}]",
               f"{s.exposures:,}"]
        for kind in report.outcomes:
            r = s.outcomes[kind]
            row.append(f"{r.persons:,} = {r.rate:.2%} [{r.low:.2%}, {r.high:.2%}]")
            row.append("—" if s.variant == first else f"{r.diff:+.2%} [{r.diff_low:+.2%}, {r.diff_high:+.2%}]")
        table.add_row(*row)
    return table
