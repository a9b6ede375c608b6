"""Month-partitioned Parquet storage of the dataset.

`crashes/YYYY-MM.parquet` holds the typed rows of one calendar month, `api_rows/YYYY-MM.parquet`
the raw API rows of that month as received (strings; `undated.parquet` the ones whose date does not
parse). A daily update rewrites the two or three months it touches and links the others unchanged,
so it costs the same at 2.5 million rows as at 350 thousand, and DVC hashes, stores and pushes
only the rewritten files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from visionzero.data.schema import COUNT_FIELDS, CSV_COLUMNS
from visionzero.data.validation import validate

CRASHES = "crashes"
API_ROWS = "api_rows"
UNDATED = "undated"  # raw rows whose date does not parse: all quarantined, kept as received

TYPED_SCHEMA = pa.schema(
    [
        ("collision_id", pa.int64()),
        ("crash_date", pa.timestamp("ns")),
        ("crash_minute", pa.int16()),
        ("borough", pa.string()),
        ("latitude", pa.float64()),
        ("longitude", pa.float64()),
        ("geocoded", pa.bool_()),
        *[(name, pa.int16()) for name in COUNT_FIELDS.values()],
        ("factor_1", pa.string()),
        ("source", pa.string()),
    ]
)
RAW_SCHEMA = pa.schema([(name, pa.string()) for name in CSV_COLUMNS])
SCHEMAS = {CRASHES: TYPED_SCHEMA, API_ROWS: RAW_SCHEMA}


def month_keys(days: np.ndarray | pd.Series) -> np.ndarray:
    """`YYYY-MM` of each day, UNDATED where there is none."""
    months = np.asarray(days, dtype="datetime64[ns]").astype("datetime64[M]")
    return np.where(np.isnat(months), UNDATED, np.datetime_as_string(months, unit="M"))


def partition_file(data_dir: Path, kind: str, key: str) -> Path:
    return data_dir / kind / f"{key}.parquet"


def partition_keys(data_dir: Path, kind: str) -> list[str]:
    """The months held, in date order (UNDATED last)."""
    folder = data_dir / kind
    keys = sorted(p.stem for p in folder.glob("*.parquet")) if folder.is_dir() else []
    return sorted(keys, key=lambda key: key == UNDATED)


def write_partition(path: Path, kind: str, frame: pd.DataFrame) -> None:
    """One partition, in its kind's fixed schema: every month reads back with the same types."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=SCHEMAS[kind], preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def read_partitions(
    data_dir: Path, kind: str, keys: list[str] | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """The given months (default: all) as one frame, in month order, typed as written."""
    keys = partition_keys(data_dir, kind) if keys is None else keys
    tables = [pq.read_table(partition_file(data_dir, kind, key), columns=columns) for key in keys]
    if not tables:
        return _empty(kind, columns or SCHEMAS[kind].names)
    return pa.concat_tables(tables).to_pandas()


def _empty(kind: str, columns: list[str]) -> pd.DataFrame:
    """No month held: an empty frame with the columns and dtypes a written month reads back with."""
    if kind == API_ROWS:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
    return validate(pd.DataFrame(columns=CSV_COLUMNS), "")[0][columns]
