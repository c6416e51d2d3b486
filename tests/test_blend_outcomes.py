"""Friends-of-friends blend outcomes on a scene with one group of every kind."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lsst.meas.extensions.deepdisc.core.blend_outcomes import OUTCOMES, TRUTH_OUTCOMES, classify_blends
from lsst.meas.extensions.deepdisc.core.matching import SourceArrays

# Groups 100 px apart; inside a group, members 1.5-3 px apart (linking length 5 px).
TRUTH_XY = [
    (0, 0),  # 0 isolated match
    (100, 0),  # 1, 2 resolved blend
    (103, 0),
    (200, 0),  # 3, 4 unrecognized blend
    (203, 0),
    (300, 0),  # 5 shredded
    (400, 0),  # 6 missed
    (600, 0),  # 7, 8, 9 complex: 3 truth, 2 detections
    (603, 0),
    (606, 0),
]
DET_XY = [
    (0.5, 0),  # isolated
    (100.2, 0),  # resolved
    (102.8, 0),
    (201.5, 0),  # unrecognized
    (298.5, 0),  # shredded
    (301.5, 0),
    (500, 0),  # spurious
    (601, 0),  # complex
    (605, 0),
]
EXPECTED_TRUTH_OUTCOME = [
    "isolated_match",
    "resolved_blend",
    "resolved_blend",
    "unrecognized_blend",
    "unrecognized_blend",
    "shredded",
    "missed",
    "complex",
    "complex",
    "complex",
]


def sources(xy: list[tuple[float, float]], mag: list[float] | None = None) -> SourceArrays:
    array = np.asarray(xy, dtype=float).reshape(-1, 2)
    return SourceArrays(x=array[:, 0], y=array[:, 1], mag=mag)


def test_every_outcome_once() -> None:
    outcomes = classify_blends(sources(TRUTH_XY), sources(DET_XY))
    assert outcomes.counts() == {name: 1 for name in OUTCOMES}
    np.testing.assert_array_equal(outcomes.truth["outcome"], EXPECTED_TRUTH_OUTCOME)
    np.testing.assert_array_equal(
        outcomes.detections["outcome"],
        [
            "isolated_match",
            "resolved_blend",
            "resolved_blend",
            "unrecognized_blend",
            "shredded",
            "shredded",
            "spurious",
            "complex",
            "complex",
        ],
    )
    # Matching inside groups: the unrecognized detection (201.5) is 1.5 px from both truths: the tie goes
    # to one of them; the shredded truth takes one of its two detections.
    truth = outcomes.truth
    np.testing.assert_array_equal(truth["det_index"][:3], [0, 1, 2])
    assert truth["matched"][3] != truth["matched"][4]
    assert truth["matched"][5] and not truth["matched"][6]
    assert np.sum(truth["matched"][7:]) == 2
    np.testing.assert_allclose(truth["distance"][:3], [0.5, 0.2, 0.2])
    assert outcomes.truth_counts()["complex"] == 3
    groups = outcomes.groups
    resolved = groups[groups["outcome"] == "resolved_blend"][0]
    assert (resolved["n_truth"], resolved["n_det"], resolved["n_matched"]) == (2, 2, 2)
    det = outcomes.detections
    assert det["truth_index"][0] == 0 and det["truth_index"][6] == -1


def test_linking_length_is_configurable() -> None:
    # With 2 px the 3 px pairs no longer link: the resolved blend becomes two isolated matches.
    outcomes = classify_blends(sources(TRUTH_XY[1:3]), sources(DET_XY[1:3]), linking_length=2.0)
    assert outcomes.counts()["isolated_match"] == 2
    assert outcomes.counts()["resolved_blend"] == 0
    # With 10 px it stays one resolved blend.
    assert (
        classify_blends(sources(TRUTH_XY[1:3]), sources(DET_XY[1:3]), linking_length=10.0).counts()[
            "resolved_blend"
        ]
        == 1
    )


def test_same_counts_but_unmatched_is_complex() -> None:
    # Two truths and two detections linked in one chain, but one detection is too far from any truth for
    # the 2 px match radius: N = M = 2 with one match -> complex.
    truth = sources([(0, 0), (4, 0)])
    detections = sources([(0.5, 0), (8, 0)])
    outcomes = classify_blends(truth, detections, match_radius=2.0)
    assert outcomes.groups["outcome"][0] == "complex"
    assert outcomes.groups["n_matched"][0] == 1
    # Single truth and detection farther apart than the match radius.
    lone = classify_blends(sources([(0, 0)]), sources([(3, 0)]), match_radius=2.0)
    assert lone.counts()["complex"] == 1 and lone.counts()["isolated_match"] == 0


def test_fractions_vs_magnitude() -> None:
    mags = [20.0, 20.5, 21.0, 23.0, 23.5, 21.5, 24.0, 22.5, 23.2, 23.8]
    outcomes = classify_blends(sources(TRUTH_XY, mag=mags), sources(DET_XY))
    table = outcomes.fractions_vs_mag([20.0, 22.0, 24.0, 26.0])
    # Bin [20, 22): truths 0, 1, 2, 5 -> isolated, resolved x2, shredded.
    # Bin [22, 24): truths 3, 4, 7, 8, 9 -> unrecognized x2, complex x3.  Bin [24, 26): truth 6, missed.
    np.testing.assert_array_equal(table["n_truth"], [4, 5, 1])
    np.testing.assert_allclose(table["frac_isolated_match"], [0.25, 0.0, 0.0])
    np.testing.assert_allclose(table["frac_resolved_blend"], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(table["frac_shredded"], [0.25, 0.0, 0.0])
    np.testing.assert_allclose(table["frac_unrecognized_blend"], [0.0, 0.4, 0.0])
    np.testing.assert_allclose(table["frac_complex"], [0.0, 0.6, 0.0])
    np.testing.assert_allclose(table["frac_missed"], [0.0, 0.0, 1.0])
    total = np.sum([table[f"frac_{name}"] for name in TRUTH_OUTCOMES], axis=0)
    np.testing.assert_allclose(total, 1.0)
    np.testing.assert_allclose(table["frac_matched"], [1.0, 3 / 5, 0.0])


def test_fractions_need_magnitudes_and_empty_inputs_work() -> None:
    outcomes = classify_blends(sources(TRUTH_XY), sources([]))
    # Six truth groups ({0}, {1, 2}, {3, 4}, {5}, {6}, {7, 8, 9}), all missed.
    assert outcomes.counts()["missed"] == 6
    assert outcomes.truth_counts()["missed"] == 10
    with pytest.raises(ValueError, match="no truth magnitudes"):
        outcomes.fractions_vs_mag([20.0, 21.0])
    spurious = classify_blends(sources([]), sources(DET_XY))
    assert len(spurious.truth) == 0 and set(spurious.detections["outcome"]) == {"spurious"}
    with pytest.raises(ValueError, match="linking_length"):
        classify_blends(sources(TRUTH_XY), sources(DET_XY), linking_length=0.0)


def test_many_sources_are_fast() -> None:
    rng = np.random.default_rng(4)
    truth = SourceArrays(x=rng.uniform(0, 4000, 20_000), y=rng.uniform(0, 4000, 20_000))
    keep = rng.random(20_000) < 0.9
    detections = SourceArrays(x=truth.x[keep] + rng.normal(0, 0.5, keep.sum()), y=truth.y[keep])
    start = time.perf_counter()
    outcomes = classify_blends(truth, detections)
    assert time.perf_counter() - start < 5.0
    counts = outcomes.truth_counts()
    assert sum(counts.values()) == 20_000
    assert counts["missed"] > 1000 and counts["isolated_match"] > 10_000
