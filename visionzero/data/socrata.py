"""Incremental client for NYC Open Data's collisions dataset (SODA 2.x, id h9gi-nx95).

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
    complete: bool = (
        False  # True when paging ended on a short page (every row since `since` received)
    )


def api_record_to_csv_row(record: dict) -> dict[str, str]:
    """Map one SODA record (strings, absent nulls) to the CSV export's columns and formats."""
    row = {col: "" for col in CSV_COLUMNS}
    for api_name, csv_name in API_TO_CSV.items():
        value = record.get(api_name)
        if value is not None:
            row[csv_name] = str(value).strip()
    iso = row["CRASH DATE"]
    if len(iso) >= 10 and iso[4] == "-":  # 2026-04-02T00:00:00.000 -> 04/02/2026
        row["CRASH DATE"] = f"{iso[5:7]}/{iso[8:10]}/{iso[0:4]}"
    if row["LATITUDE"] and row["LONGITUDE"]:
        row["LOCATION"] = f"({row['LATITUDE']}, {row['LONGITUDE']})"
    return row


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
        where = f"crash_date >= '{since.isoformat()}T00:00:00.000'"
        rows: list[dict[str, str]] = []
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
            for record in body:
                if isinstance(record, dict):
                    rows.append(api_record_to_csv_row(record))
                else:
                    malformed.append({"page": page, "record": json.dumps(record)[:500]})
            result.pages = page + 1
            if len(body) < self.page_size:
                result.complete = True
                break
        else:
            log.warning(
                "stopped after max_pages=%d; the newest days stay incomplete", self.max_pages
            )
        result.rows = pd.DataFrame(rows, columns=CSV_COLUMNS).astype(str)
        result.malformed = malformed
        log.info(
            "Socrata: %d rows in %d pages since %s (%d malformed records)",
            len(rows),
            result.pages,
            since,
            len(malformed),
        )
        return result
