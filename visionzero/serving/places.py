"""`/places`: find zones by the streets people name ("Broadway & W 42 St", "w 42 st and broadway",
"flatbush av"), typo-tolerant, ranked, in milliseconds.

Every intersection (and lone street) a zone's crash records name is searchable, not only the one
the zone is named after: Broadway & W 42 St has crash records in a zone named after Avenue of the
Americas & W 42 St. A query is split into streets at `&`, `and`, `at`, `/`; each street's words
are matched to the words of the known streets: numbers exactly (W 42 St is not W 43 St), words in
full, as a prefix ("flatb"), or with a typo (difflib, ratio >= 0.8). A zone matches when each
typed street matches one of its streets; zones rank by how well, then by how many records name
that intersection.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from visionzero.data.street_names import place_name, query_parts

TYPO_CUTOFF = 0.8  # difflib ratio above which a typed word counts as a known word
PREFIX_SCORE = 0.9  # a typed word that begins a known word ("flatb" -> FLATBUSH)
MIN_PREFIX = 3  # shorter typed words must match whole (or as a number)
MAX_STREETS_PER_QUERY = 2  # an intersection names two streets; more words than that are refused


@dataclass(frozen=True)
class Place:
    zone: str
    place: str  # the zone's own name
    matched: str  # the intersection or street that matched, spelled for people
    records: int  # crash records naming the matched intersection in this zone
    score: float  # 1.0: every typed word found as written


class PlaceIndex:
    """Street words -> streets -> zones, built once per worker from the model's street records
    (`street_records`: zone, street_1, street_2, borough, records) and the zones' names."""

    def __init__(self, records: pd.DataFrame, names: dict[str, str]) -> None:
        self.names = names
        self.rows = list(
            records[["zone", "street_1", "street_2", "borough", "records"]].itertuples(
                index=False, name=None
            )
        )
        self.rows_of_street: dict[str, list[int]] = defaultdict(list)
        for row, (_, street_1, street_2, _, _) in enumerate(self.rows):
            for street in (street_1, street_2):
                if street:
                    self.rows_of_street[street].append(row)
        self.streets_of_word: dict[str, set[str]] = defaultdict(set)
        for street in self.rows_of_street:
            for word in street.split():
                self.streets_of_word[word].add(street)
        self.words = sorted(self.streets_of_word)
        self.words_by_initial: dict[str, list[str]] = defaultdict(list)
        for word in self.words:
            self.words_by_initial[word[0]].append(word)

    def search(self, query: str, limit: int = 10) -> list[Place]:
        """The best `limit` zones for the streets in `query` (see the module's docstring)."""
        parts = query_parts(query)[:MAX_STREETS_PER_QUERY]
        if not parts:
            return []
        street_scores = [self._streets(part) for part in parts]
        found: dict[int, float] = {}
        for row in {r for scores in street_scores for s in scores for r in self.rows_of_street[s]}:
            score = self._row_score(row, street_scores)
            if score > 0:
                found[row] = score
        best_per_zone: dict[str, tuple[float, int, int]] = {}
        for row, score in found.items():
            zone, records = self.rows[row][0], self.rows[row][4]
            key = (score, records, -row)
            if zone not in best_per_zone or key > best_per_zone[zone]:
                best_per_zone[zone] = key
        ranked = sorted(best_per_zone.items(), key=lambda item: item[1], reverse=True)[:limit]
        return [self._place(-key[2], key[0]) for _, key in ranked]

    def _place(self, row: int, score: float) -> Place:
        zone, street_1, street_2, borough, records = self.rows[row]
        matched = place_name((street_1, street_2), borough)
        return Place(zone, self.names.get(zone, matched), matched, int(records), round(score, 3))

    def _row_score(self, row: int, street_scores: list[dict[str, float]]) -> float:
        """How well one zone-intersection row matches every typed street (0: it does not): each
        typed street must match a different street of the row."""
        streets = [s for s in self.rows[row][1:3] if s]
        if len(street_scores) > len(streets):
            return 0.0
        if len(street_scores) == 1:
            return max(street_scores[0].get(s, 0.0) for s in streets)
        first, second = street_scores
        a, b = streets
        return max(
            min(first.get(a, 0.0), second.get(b, 0.0)), min(first.get(b, 0.0), second.get(a, 0.0))
        )

    def _streets(self, part: str) -> dict[str, float]:
        """Known streets holding every word of a typed street, with a score: the mean of the
        words' match scores, less a little for each word the street has beyond the typed ones
        (BROADWAY before EAST BROADWAY)."""
        typed = part.split()
        candidates: dict[str, list[float]] | None = None
        for word in typed:
            scores: dict[str, float] = {}
            for known, score in self._words(word):
                for street in self.streets_of_word[known]:
                    scores[street] = max(scores.get(street, 0.0), score)
            if candidates is None:
                candidates = {street: [score] for street, score in scores.items()}
            else:
                candidates = {
                    street: [*kept, scores[street]]
                    for street, kept in candidates.items()
                    if street in scores
                }
        return {
            street: sum(kept) / len(kept) - 0.01 * max(0, len(street.split()) - len(typed))
            for street, kept in (candidates or {}).items()
        }

    def _words(self, word: str) -> Iterable[tuple[str, float]]:
        """Known words a typed word may mean, with how sure: 1 as written, PREFIX_SCORE as a
        prefix, the difflib ratio for a typo. Numbers only as written."""
        if word in self.streets_of_word:
            yield word, 1.0
        if word.isdigit():
            return
        initial = self.words_by_initial.get(word[0], [])
        if len(word) >= MIN_PREFIX:
            for known in initial:
                if known != word and known.startswith(word):
                    yield known, PREFIX_SCORE
        for known in difflib.get_close_matches(word, initial, n=5, cutoff=TYPO_CUTOFF):
            if known != word:
                yield known, difflib.SequenceMatcher(None, word, known).ratio() * PREFIX_SCORE
