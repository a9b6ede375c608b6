"""Child shares: they sum to their parent, shrink to a uniform or neighbourhood split and follow
strong evidence."""

from __future__ import annotations

import h3
import numpy as np
import pytest

from visionzero.model.hierarchy import ChildShares, neighbourhood_counts

PARENTS = [h3.latlng_to_cell(40.7128, -74.0060, 7), h3.latlng_to_cell(40.6782, -73.9442, 7)]


def fit(
    cells: list[str],
    blocks: list[int],
    zone_strength: float = 5.0,
    block_strength: float = 20.0,
    neighbour_weight: float = 0.0,
) -> ChildShares:
    return ChildShares.fit(
        PARENTS,
        np.array(cells, dtype=object),
        np.array(blocks),
        np.ones(len(cells)),
        6,
        zone_strength,
        block_strength,
        neighbour_weight,
    )


def test_children_sum_to_one_per_parent_and_block() -> None:
    kids = h3.cell_to_children(PARENTS[0], 8)
    shares = fit([kids[0]] * 30 + [kids[3]] * 5, [1] * 30 + [4] * 5)
    assert shares.share.shape == (14, 6)
    for parent in range(2):
        mine = shares.parent_rows == parent
        np.testing.assert_allclose(shares.share[mine].sum(axis=0), 1.0)


def test_no_history_is_a_uniform_split() -> None:
    shares = fit([], [])
    np.testing.assert_allclose(shares.share, 1 / 7)


def test_strong_evidence_wins_and_weak_evidence_is_shrunk() -> None:
    kids = h3.cell_to_children(PARENTS[0], 8)
    many = fit([kids[2]] * 10_000, [0] * 10_000)
    row = many.zones.index(kids[2])
    assert many.share[row].min() > 0.99  # every block, via the all-day prior
    few = fit([kids[2]] * 2, [0] * 2)
    # all-day: (2 + 5/7) / (2 + 5) = 0.3878; block 0: (2 + 20 * 0.3878) / (2 + 20) = 0.4434
    assert few.share[row, 0] == pytest.approx((2 + 20 * (2 + 5 / 7) / 7) / 22)
    assert few.share[row, 3] == pytest.approx((2 + 5 / 7) / 7)


def test_crashes_outside_the_parents_do_not_count() -> None:
    far = h3.latlng_to_cell(40.85, -73.85, 8)
    assert h3.cell_to_parent(far, 7) not in PARENTS
    np.testing.assert_allclose(fit([far] * 50, [2] * 50).share, 1 / 7)


def test_json_round_trip() -> None:
    kids = h3.cell_to_children(PARENTS[1], 8)
    shares = fit([kids[5]] * 7, [5] * 7)
    again = ChildShares.from_json(shares.to_json())
    assert again.zones == shares.zones and again.resolution == 8
    np.testing.assert_array_equal(again.share, shares.share)
    np.testing.assert_array_equal(again.parent_rows, shares.parent_rows)


def test_a_quiet_child_beside_busy_cells_gets_more_than_one_beside_quiet_cells() -> None:
    centre = h3.cell_to_center_child(PARENTS[0], 8)
    rim = [k for k in h3.cell_to_children(PARENTS[0], 8) if k != centre]
    busy_child = rim[0]
    # a busy cell just across the parent's border: it touches busy_child but not quiet_child
    busy = next(n for n in h3.grid_disk(busy_child, 1) if h3.cell_to_parent(n, 7) != PARENTS[0])
    quiet_child = next(k for k in rim if h3.grid_distance(k, busy) > 1)
    crashes = [busy] * 40 + [centre] * 3  # neither child has a crash of its own
    shares = fit(crashes, [2] * 43, neighbour_weight=0.5)
    row = {zone: i for i, zone in enumerate(shares.zones)}
    for block in range(6):
        assert shares.share[row[busy_child], block] > shares.share[row[quiet_child], block]
    for parent in range(2):
        np.testing.assert_allclose(shares.share[shares.parent_rows == parent].sum(axis=0), 1.0)
    # without the neighbourhood, both crash-free children get the same share
    plain = fit(crashes, [2] * 43)
    assert plain.share[row[busy_child], 2] == pytest.approx(plain.share[row[quiet_child], 2])


def test_no_neighbour_crashes_keeps_the_uniform_split() -> None:
    np.testing.assert_allclose(fit([], [], neighbour_weight=1.0).share, 1 / 7)


def test_neighbourhood_counts_exclude_the_cell_itself() -> None:
    cell = h3.cell_to_center_child(PARENTS[0], 8)
    ring = [n for n in h3.grid_disk(cell, 1) if n != cell]
    counts = neighbourhood_counts(
        [cell, *ring], np.array([cell] * 4 + [ring[0]], dtype=object), np.ones(5)
    )
    assert counts[0] == 1.0  # only ring[0]'s crash
    assert counts[1] == 4.0  # ring[0] sees the centre's four, not its own
    assert counts[2:].min() >= 4.0  # every ring cell touches the centre
