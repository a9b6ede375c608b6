"""Client for NYC Open Data's collisions dataset (SODA 2.x, id h9gi-nx95): incremental fetches
from a date on, and the backfill's date windows.

Paging is ordered by (crash_date, collision_id): without an order Socrata pages overlap
and lose rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from visionzero.data.http import RetryPolicy, SourceUnavailable, get_json, retrying_session
from visionzero.data.schema import API_TO_CSV, CSV_COLUMNS
from visionzero.platform.settings import settings

log = logging.getLogger(__name__)


@dataclass
class FetchResult:
    rows: pd.DataFrame  # canonical CSV columns, every value a string ("" when the API left it out)
    malformed: list[dict] = field(default_factory=list)  # records that were not JSON objects
    pages: int = 0
    complete: bool = False  # True when paging ended on a short page: every matching row received


def records_to_rows(records: list[dict]) -> pd.DataFrame:
    """SODA records (strings, absent nulls) as rows in the CSV export's columns and formats,
    column by column rather than record by record (a backfill maps millions)."""
    api = pd.DataFrame(records, columns=list(API_TO_CSV), dtype=object)
    rows = pd.DataFrame(index=api.index)
    for api_name, csv_name in API_TO_CSV.items():
        values = api[api_name]
        present = values.notna()
        rows[csv_name] = values.where(present, "").astype(str).str.strip()
    iso = rows["CRASH DATE"]  # 2026-04-02T00:00:00.000 -> 04/02/2026
    is_iso = (iso.str.len() >= 10) & (iso.str[4:5] == "-")
    rows["CRASH DATE"] = iso.where(~is_iso, iso.str[5:7] + "/" + iso.str[8:10] + "/" + iso.str[0:4])
    located = (rows["LATITUDE"] != "") & (rows["LONGITUDE"] != "")
    rows["LOCATION"] = ("(" + rows["LATITUDE"] + ", " + rows["LONGITUDE"] + ")").where(located, "")
    return rows.reindex(columns=CSV_COLUMNS, fill_value="").astype(str)


def _floating(day: date) -> str:
    """A day as SODA's floating timestamp literal (crash_date has no time zone)."""
    return f"'{day.isoformat()}T00:00:00.000'"


class SocrataClient:
    def __init__(
        self,
        page_size: int,
        max_pages: int,
        url: str | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.url = url or settings().socrata_url
        self.page_size = page_size
        self.max_pages = max_pages
        self.policy = policy or RetryPolicy()
        self.session = retrying_session(self.policy)

    def _headers(self) -> dict[str, str]:
        token = settings().socrata_app_token
        return {"X-App-Token": token.get_secret_value()} if token else {}

    def fetch_since(self, since: date) -> FetchResult:
        """Every crash with crash_date >= since, page by page.

        Raises SourceUnavailable on failure.
        """
        result = self._fetch(f"crash_date >= {_floating(since)}")
        if not result.complete:
            log.warning(
                "stopped after max_pages=%d; the newest days stay incomplete", self.max_pages
            )
        log.info(
            "Socrata: %d rows in %d pages since %s (%d malformed records)",
            len(result.rows),
            result.pages,
            since,
            len(result.malformed),
        )
        return result

    def fetch_window(self, start: date, end: date) -> FetchResult:
        """Every crash with start <= crash_date < end (half-open, so consecutive windows neither
        overlap nor leave a gap), page by page. Raises SourceUnavailable on failure."""
        return self._fetch(f"crash_date >= {_floating(start)} AND crash_date < {_floating(end)}")

    def _fetch(self, where: str) -> FetchResult:
        frames: list[pd.DataFrame] = []
        malformed: list[dict] = []
        result = FetchResult(rows=pd.DataFrame(columns=CSV_COLUMNS))
        for page in range(self.max_pages):
            params = {
                "$where": where,
                "$order": "crash_date,collision_id",
                "$limit": self.page_size,
                "$offset": page * self.page_size,
            }
            body = get_json(self.session, self.url, params, self._headers(), self.policy)
            if not isinstance(body, list):
                raise SourceUnavailable(
                    f"{self.url} page {page} is not a JSON array: {str(body)[:200]}"
                )
            frames.append(records_to_rows([r for r in body if isinstance(r, dict)]))
            malformed += [
                {"page": page, "record": json.dumps(r)[:500]}
                for r in body
                if not isinstance(r, dict)
            ]
            result.pages = page + 1
            if len(body) < self.page_size:
                result.complete = True
                break
        result.rows = pd.concat(frames, ignore_index=True) if frames else result.rows
        result.malformed = malformed
        return result
