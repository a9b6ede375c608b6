"""Which API days are complete: only on evidence, never because the API said nothing.

The rule (README, "Loading"): an API day is complete when
1. every page of a fetch that started on or before it was received (paging ended on a short page),
2. it is `settle_days` old, so late reports have arrived,
3. validated API rows were received for it (an empty day is flagged `empty`), and
4. their count is plausible: within `day_count_range` times the median of the last
   `reference_days` complete days of the same weekday (else `implausible`). A day with fewer such
   days before it (the start of a backfilled history) is compared with the first
   `reference_days` complete days of its weekday after it; with neither, it is `no_reference`.
Flagged days are never complete. Every day that ever met 1 and 2 is judged again on each build, so
new evidence (a re-fetch) or a changed rule applies to it, and a day an older rule let in is
judged by this one.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from statistics import median

import pandas as pd

WEEKDAYS = ["Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays"]
FLAG_COLUMNS = ["date", "reason", "crashes", "expected_low", "expected_high"]


def covered_days(since: date, fetched_at: date, settle_days: int) -> pd.DatetimeIndex:
    """Days a fetch that received every page since `since` covers once they have settled."""
    last = fetched_at - timedelta(days=settle_days)
    return pd.date_range(since, last, freq="D") if last >= since else pd.DatetimeIndex([])


def judge_days(
    candidates: pd.DatetimeIndex,
    api_counts: pd.Series,
    reference: pd.Series,
    reference_days: int,
    day_count_range: tuple[float, float],
) -> tuple[pd.DatetimeIndex, pd.DataFrame]:
    """(complete days, flagged days with reason and expected range) among the candidates.

    api_counts: validated API rows per date. reference: crashes per snapshot complete day.
    Days are judged in date order against the complete days before them; a day found complete
    joins the reference of later days. Days left without enough reference are then judged in
    reverse date order against the complete days after them, so a backfilled history is judged
    back to its first day instead of waiting for a reference that never comes.
    """
    reference = reference[~reference.index.duplicated()]
    counts = {day: int(api_counts.get(day, 0)) for day in candidates.difference(reference.index)}
    known = {day: int(crashes) for day, crashes in reference.items()}
    forward, flags = _judge_in_order(counts, known, reference_days, day_count_range, False)
    waiting = {flag[0]: counts[flag[0]] for flag in flags if flag[1] == "no_reference"}
    known |= {day: counts[day] for day in forward}
    backward, late_flags = _judge_in_order(waiting, known, reference_days, day_count_range, True)
    flags = [flag for flag in flags if flag[0] not in waiting] + late_flags
    complete = pd.DatetimeIndex(sorted(forward + backward))
    return complete, pd.DataFrame(sorted(flags), columns=FLAG_COLUMNS)


def _judge_in_order(
    counts: dict[pd.Timestamp, int],
    known: dict[pd.Timestamp, int],
    reference_days: int,
    day_count_range: tuple[float, float],
    backwards: bool,
) -> tuple[list[pd.Timestamp], list[tuple]]:
    """One pass over the candidate days (crash counts) and the complete days known so far (crash
    counts), in date order or reversed: (days found complete, flags)."""
    history: dict[int, list[int]] = defaultdict(list)
    events = sorted(
        [(day, "reference") for day in known] + [(day, "candidate") for day in counts],
        reverse=backwards,
    )
    complete, flags = [], []
    for day, kind in events:
        past = history[day.weekday()]
        if kind == "reference":
            past.append(known[day])
            continue
        crashes = counts[day]
        window = past[-reference_days:]
        mid = median(window) if len(window) == reference_days else None
        low, high = (day_count_range[0] * mid, day_count_range[1] * mid) if mid else (None, None)
        if crashes == 0:
            reason = "empty"
        elif mid is None:
            reason = "no_reference"
        elif not low <= crashes <= high:
            reason = "implausible"
        else:
            complete.append(day)
            past.append(crashes)
            continue
        flags.append((day, reason, crashes, low, high))
    return complete, flags


def describe(flag: pd.Series, reference_days: int) -> str:
    """One flagged day for people: `2025-04-05 implausible: 3 crashes, expected 84-368 (...)`;
    the nearest complete days are the ones before it, or after it at the start of the history."""
    day = pd.Timestamp(flag["date"])
    line = f"{day.date()} {flag['reason']}: {int(flag['crashes'])} crashes"
    if pd.notna(flag["expected_low"]):
        line += (
            f", expected {flag['expected_low']:.0f}-{flag['expected_high']:.0f}"
            f" ({reference_days} nearest complete {WEEKDAYS[day.weekday()]})"
        )
    return line
