"""Street names as people write them and as the crash records spell them, made comparable.

The records spell one street many ways ("W 42 ST", "WEST 42 STREET", "west 42nd street"); a zone's
name is its most frequent intersection, so the spellings must count as one before counting, and
a search for "Broadway & W 42 St" must meet "WEST 42 STREET" and "BROADWAY". `normalise` gives the
one canonical spelling (upper case, words in full: "WEST 42 STREET"), `display` the short one
people read on a map ("W 42 St").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

# Street-type words: abbreviation -> the records' full spelling (the most common one in the data).
SUFFIXES = {
    "ST": "STREET",
    "STR": "STREET",
    "AVE": "AVENUE",
    "AV": "AVENUE",
    "AVNUE": "AVENUE",
    "BLVD": "BOULEVARD",
    "BLV": "BOULEVARD",
    "RD": "ROAD",
    "PL": "PLACE",
    "DR": "DRIVE",
    "PKWY": "PARKWAY",
    "PKY": "PARKWAY",
    "EXPY": "EXPRESSWAY",
    "EXWY": "EXPRESSWAY",
    "HWY": "HIGHWAY",
    "LN": "LANE",
    "CT": "COURT",
    "TER": "TERRACE",
    "TERR": "TERRACE",
    "SQ": "SQUARE",
    "BR": "BRIDGE",
    "BRG": "BRIDGE",
    "TPKE": "TURNPIKE",
    "PLZ": "PLAZA",
    "CIR": "CIRCLE",
    "CRES": "CRESCENT",
}
DIRECTIONS = {"W": "WEST", "E": "EAST", "N": "NORTH", "S": "SOUTH"}
# The short forms shown on the map: full word -> abbreviation, title-cased.
SHORT = {
    "STREET": "St",
    "AVENUE": "Ave",
    "BOULEVARD": "Blvd",
    "ROAD": "Rd",
    "PLACE": "Pl",
    "DRIVE": "Dr",
    "PARKWAY": "Pkwy",
    "EXPRESSWAY": "Expy",
    "HIGHWAY": "Hwy",
    "LANE": "Ln",
    "COURT": "Ct",
    "TERRACE": "Ter",
    "SQUARE": "Sq",
    "TURNPIKE": "Tpke",
    "WEST": "W",
    "EAST": "E",
    "NORTH": "N",
    "SOUTH": "S",
    "SAINT": "St",
}
DIRECTION_WORDS = set(DIRECTIONS.values())
STREET_TYPES = set(SUFFIXES.values())
LOWER_WORDS = {"OF", "THE", "AND", "DE", "LA"}
ACRONYMS = {"FDR", "JFK", "BQE", "MLK", "CPW"}  # shown as written
ORDINAL = re.compile(r"^(\d+)(ST|ND|RD|TH)$")
NOT_A_WORD = re.compile(r"[^A-Z0-9 ]+")
# An intersection typed by a person: "Broadway & W 42 St", "broadway and w 42", "B'way / 42nd".
JOINERS = re.compile(r"\s*(?:&|/|@|\bAND\b|\bAT\b)\s*", re.IGNORECASE)
BOROUGHS = ("MANHATTAN", "BROOKLYN", "QUEENS", "BRONX", "STATEN ISLAND")


def normalise(raw: str | None) -> str:
    """The canonical spelling: upper case, no punctuation, ordinals as numbers ("42ND" -> "42"),
    abbreviations in full. "ST" is SAINT in front ("ST MARKS PLACE") and STREET elsewhere; a
    direction letter is spelled out only in front of more words ("AVENUE N" keeps its N)."""
    if raw is None or (isinstance(raw, float) and pd.isna(raw)):
        return ""
    words = NOT_A_WORD.sub(" ", str(raw).upper().replace("'", "")).split()
    out: list[str] = []
    for position, word in enumerate(words):
        ordinal = ORDINAL.match(word)
        if ordinal:
            word = ordinal.group(1)
        elif position == 0 and len(words) > 1 and word in DIRECTIONS:
            word = DIRECTIONS[word]
        elif position == 0 and len(words) > 1 and word == "ST":
            word = "SAINT"
        elif position > 0 and word in SUFFIXES:
            word = SUFFIXES[word]
        out.append(word)
    return " ".join(out)


def display(street: str) -> str:
    """The short spelling of a normalised street: "WEST 42 STREET" -> "W 42 St", "AVENUE H" ->
    "Avenue H", "SOUTH ROAD" -> "South Rd", "AVENUE OF THE AMERICAS" stays readable."""
    words = street.split()
    shown = []
    for position, word in enumerate(words):
        if position == 0 and word in DIRECTION_WORDS:
            named = len(words) > 2 or (len(words) == 2 and words[1] not in STREET_TYPES)
            shown.append(SHORT[word] if named else word.title())
        elif position == 0 and word == "SAINT":
            shown.append("St")
        elif position > 0 and word in STREET_TYPES:
            shown.append(SHORT.get(word, word.title()))
        elif word in ACRONYMS:
            shown.append(word)
        elif position > 0 and word in LOWER_WORDS:
            shown.append(word.lower())
        else:
            shown.append(word.title())
    return " ".join(shown)


def query_parts(query: str) -> list[str]:
    """The streets a person typed, normalised: "Broadway & W 42 St" -> ["BROADWAY", "WEST 42
    STREET"]; empty parts dropped."""
    return [part for part in (normalise(piece) for piece in JOINERS.split(query)) if part]


def place_name(streets: Iterable[str], borough: str | None) -> str:
    """ "W 42 St & 8 Ave, Manhattan": the streets' short spellings, then the borough."""
    name = " & ".join(display(street) for street in streets if street)
    if borough and str(borough).strip():
        return f"{name}, {str(borough).strip().title()}" if name else str(borough).strip().title()
    return name


def street_records(
    zones: pd.Series, on_street: pd.Series, cross_street: pd.Series, borough: pd.Series
) -> pd.DataFrame:
    """How often each zone's records name each intersection (the two streets in either order
    count as one; street_2 is "" for a street alone), with the zone's most frequent borough.
    One row per zone and intersection: zone, street_1, street_2, borough, records."""
    frame = pd.DataFrame(
        {
            "zone": zones.to_numpy(),
            "on": [normalise(value) for value in on_street],
            "cross": [normalise(value) for value in cross_street],
            "borough": borough.astype("string").fillna("").str.strip().str.upper().to_numpy(),
        }
    )
    frame = frame[frame["on"] != ""]
    ordered = [
        sorted((a, b)) if b and b != a else [a, ""] for a, b in frame[["on", "cross"]].to_numpy()
    ]
    frame["street_1"] = [a for a, _ in ordered]
    frame["street_2"] = [b for _, b in ordered]
    boroughs = (
        frame[frame["borough"].isin(BOROUGHS)]
        .groupby(["zone", "borough"], sort=False)
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["zone", "n", "borough"], ascending=[True, False, True], kind="stable")
        .drop_duplicates("zone")
        .set_index("zone")["borough"]
    )
    counted = frame.groupby(["zone", "street_1", "street_2"], sort=False).size().rename("records")
    counted = counted.reset_index()
    counted["borough"] = counted["zone"].map(boroughs).fillna("")
    return counted[["zone", "street_1", "street_2", "borough", "records"]]


def name_zones(records: pd.DataFrame) -> pd.DataFrame:
    """Each zone's name: its most frequent intersection, or, where no record has a cross street,
    its most frequent street; then its borough ("W 42 St & 8 Ave, Manhattan"). Ties go to the
    alphabetically first, so the same records always give the same name. `records` is
    `street_records`' table; one row per zone: zone, place, records."""
    crossing = records["street_2"] != ""
    best = (
        records.assign(crossing=crossing)
        .sort_values(
            ["zone", "crossing", "records", "street_1", "street_2"],
            ascending=[True, False, False, True, True],
            kind="stable",
        )
        .drop_duplicates("zone")
    )
    best["place"] = [
        place_name((a, b), borough)
        for a, b, borough in best[["street_1", "street_2", "borough"]].to_numpy()
    ]
    return best[["zone", "place", "records"]].reset_index(drop=True)
