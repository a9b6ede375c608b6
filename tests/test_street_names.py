"""Zone names from crash records and the street search behind /places: spellings the records
mix count as one, names are stable, the search finds an intersection typed either way round."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tests.conftest import ROOT
from visionzero.data.street_names import (
    display,
    name_zones,
    normalise,
    query_parts,
    street_records,
)
from visionzero.serving.places import PlaceIndex


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("W 42 ST", "WEST 42 STREET"),
        ("west 42nd street", "WEST 42 STREET"),
        ("WEST 42 STREET", "WEST 42 STREET"),
        ("8 AVE", "8 AVENUE"),
        ("Eighth Av", "EIGHTH AVENUE"),
        ("AVENUE N", "AVENUE N"),  # a letter avenue keeps its letter
        ("ST MARKS PL", "SAINT MARKS PLACE"),  # ST in front is Saint
        ("B'WAY", "BWAY"),
        ("  Grand   Concourse ", "GRAND CONCOURSE"),
        (None, ""),
        (float("nan"), ""),
    ],
)
def test_spellings_of_one_street_normalise_alike(written: object, canonical: str) -> None:
    assert normalise(written) == canonical


def test_display_is_short_and_readable() -> None:
    assert display("WEST 42 STREET") == "W 42 St"
    assert display("AVENUE H") == "Avenue H"
    assert display("SOUTH ROAD") == "South Rd"
    assert display("AVENUE OF THE AMERICAS") == "Avenue of the Americas"
    assert display("FDR DRIVE") == "FDR Dr"


def test_a_typed_intersection_splits_into_its_streets() -> None:
    assert query_parts("Broadway & W 42 St") == ["BROADWAY", "WEST 42 STREET"]
    assert query_parts("w 42nd st and broadway") == ["WEST 42 STREET", "BROADWAY"]
    assert query_parts("Atlantic Ave at Flatbush / ") == ["ATLANTIC AVENUE", "FLATBUSH"]
    assert query_parts(" & ") == []


def records() -> pd.DataFrame:
    """Hand-built crash records of three zones: mixed spellings, streets in either order, a
    record with no cross street, a missing borough."""
    rows = [
        ("a", "W 42 ST", "8 AVE", "MANHATTAN"),
        ("a", "8 AVENUE", "WEST 42 STREET", "MANHATTAN"),
        ("a", "EIGHTH AVENUE", None, None),
        ("a", "BROADWAY", "W 42 ST", "MANHATTAN"),
        ("b", "FLATBUSH AVE", None, "BROOKLYN"),
        ("b", "FLATBUSH AVENUE", "", "BROOKLYN"),
        ("b", "ATLANTIC AVE", None, "BROOKLYN"),
        ("c", None, "W 43 ST", "MANHATTAN"),  # no ON STREET: not a name
        ("d", "W 43 ST", "BROADWAY", "MANHATTAN"),
    ]
    zone, on, cross, borough = zip(*rows, strict=True)
    return street_records(pd.Series(zone), pd.Series(on), pd.Series(cross), pd.Series(borough))


def test_a_zone_is_named_by_its_most_frequent_intersection_in_either_order() -> None:
    named = dict(name_zones(records())[["zone", "place"]].to_numpy())
    # W 42 St x 8 Ave twice (in both orders) beats Broadway x W 42 St once and 8 Ave alone.
    assert named["a"] == "8 Ave & W 42 St, Manhattan"
    # No cross street anywhere in b: its most frequent street, spelled two ways, counted once.
    assert named["b"] == "Flatbush Ave, Brooklyn"
    assert "c" not in named  # no record names its street


def test_names_do_not_depend_on_row_order() -> None:
    shuffled = records().sample(frac=1, random_state=3)
    assert name_zones(shuffled).sort_values("zone").to_dict("records") == (
        name_zones(records()).sort_values("zone").to_dict("records")
    )


def index() -> PlaceIndex:
    table = records()
    return PlaceIndex(table, dict(name_zones(table)[["zone", "place"]].to_numpy()))


def test_an_intersection_is_found_typed_either_way_round() -> None:
    one, other = index().search("Broadway & W 42 St"), index().search("W 42 ST & BROADWAY")
    assert [p.zone for p in one] == [p.zone for p in other] == ["a"]
    # Found by an intersection that is not the zone's name: the answer says both.
    assert one[0].place == "8 Ave & W 42 St, Manhattan"
    assert one[0].matched == "Broadway & W 42 St, Manhattan"


def test_numbers_match_exactly_words_forgive_a_typo_or_a_prefix() -> None:
    places = index()
    assert [p.zone for p in places.search("broadway & w 43")] == ["d"]  # not zone a's 42
    assert [p.zone for p in places.search("Flatbsh Avenue")] == ["b"]  # a typo
    assert [p.zone for p in places.search("flatb")] == ["b"]  # a prefix
    assert places.search("flatbsh")[0].score < places.search("flatbush")[0].score
    assert places.search("Nowhere Street & Elsewhere Road") == []
    assert places.search("") == []


@pytest.mark.slow  # reads the bundled snapshot's 351,052 rows
def test_the_snapshot_names_times_square_and_finds_it_fast() -> None:
    import h3

    columns = ["LATITUDE", "LONGITUDE", "ON STREET NAME", "CROSS STREET NAME", "BOROUGH"]
    raw = pd.read_csv(ROOT / "snapshot" / "nyc_collisions.csv.gz", usecols=columns, dtype=str)
    raw = raw.dropna(subset=["LATITUDE", "LONGITUDE"])
    lat, lon = raw["LATITUDE"].astype(float), raw["LONGITUDE"].astype(float)
    raw = raw[lat.between(40.45, 40.95) & lon.between(-74.3, -73.65)]
    zones = pd.Series(
        [h3.latlng_to_cell(float(a), float(b), 9) for a, b in raw[columns[:2]].to_numpy()]
    )
    table = street_records(
        zones,
        raw[columns[2]].reset_index(drop=True),
        raw[columns[3]].reset_index(drop=True),
        raw[columns[4]].reset_index(drop=True),
    )
    places = PlaceIndex(table, dict(name_zones(table)[["zone", "place"]].to_numpy()))
    started = time.perf_counter()
    found = places.search("Broadway & W 42 St")
    elapsed_ms = 1000 * (time.perf_counter() - started)
    assert found and found[0].matched == "Broadway & W 42 St, Manhattan"
    assert [p.zone for p in found] == [p.zone for p in places.search("W 42 ST & BROADWAY")]
    assert elapsed_ms <= 50
