"""The reliability classifier: features, fit, threshold choice, the catalog step, the package field."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.deepdisc.core.morphology import match_labels
from lsst.meas.extensions.deepdisc.core.star_galaxy import (
    RELIABILITY_EXTRA_FEATURES,
    ReliabilityClassifier,
    ReliabilityError,
    StarGalaxyClassifier,
    fit_reliability,
    judge_reliability,
    purity_threshold,
    reliability_feature_names,
    reliability_features,
)

BANDS = ("g", "r")


def _columns(rng: np.random.Generator, n: int, real_fraction: float = 0.6) -> tuple[dict, np.ndarray]:
    """Candidate detections: real sources have a significant PSF flux in both bands, noise peaks do not."""
    is_real = rng.random(n) < real_fraction
    snr = np.where(is_real, 10 ** rng.uniform(0.8, 2.5, n), rng.uniform(0.0, 4.0, n))
    columns: dict[str, np.ndarray] = {}
    for band in BANDS:
        columns[f"{band}_psfFlux"] = 10.0 * (snr + rng.normal(0, 1, n))
        columns[f"{band}_psfFluxErr"] = np.full(n, 10.0)
        columns[f"{band}_psfExcess"] = 2.0 * snr + rng.normal(0, 10, n)
        columns[f"{band}_psfExcessErr"] = np.full(n, 10.0)
    columns["prob_star"] = np.full(n, 0.2)
    columns["prob_galaxy"] = np.full(n, 0.8)
    columns["flag_saturated"] = np.zeros(n, dtype=bool)
    columns["centroid_x"] = rng.uniform(0, 1000, n)
    columns["centroid_y"] = rng.uniform(0, 1000, n)
    columns["footprint_area"] = rng.integers(20, 200, n)
    # The network's score alone separates them poorly.
    columns["score"] = np.clip(np.where(is_real, 0.5, 0.35) + rng.normal(0, 0.15, n), 0.2, 0.999)
    columns["detection_snr"] = np.maximum(snr + rng.normal(0, 1, n), 5.0)
    columns["nodata_fraction"] = np.zeros(n)
    return columns, is_real


def _fitted(rng: np.random.Generator, n: int = 600) -> tuple[ReliabilityClassifier, dict, np.ndarray]:
    columns, is_real = _columns(rng, n)
    features = reliability_features(columns, BANDS)
    classifier = fit_reliability(features, is_real, BANDS, 0.2, hidden=(8,), epochs=300, ensemble=2)
    return classifier, columns, is_real


def test_features_extend_the_star_galaxy_ones_and_need_their_columns() -> None:
    columns, _ = _columns(np.random.default_rng(0), 40)
    features = reliability_features(columns, BANDS)
    names = reliability_feature_names(BANDS)
    assert features.shape == (40, len(names))
    assert names[-len(RELIABILITY_EXTRA_FEATURES) :] == RELIABILITY_EXTRA_FEATURES
    score = np.clip(columns["score"], 1e-4, 1 - 1e-4)
    assert features[:, names.index("score_logit")] == pytest.approx(np.log(score / (1 - score)))
    del columns["detection_snr"]
    with pytest.raises(ReliabilityError, match="detection_snr"):
        reliability_features(columns, BANDS)
    columns, _ = _columns(np.random.default_rng(0), 40)
    del columns["r_psfFlux"]
    with pytest.raises(ReliabilityError, match="r_psfFlux"):
        reliability_features(columns, BANDS)


def test_a_fitted_classifier_beats_the_score_and_survives_its_plain_data_form() -> None:
    rng = np.random.default_rng(1)
    classifier, _, _ = _fitted(rng)
    columns, is_real = _columns(rng, 600)
    features = reliability_features(columns, BANDS)
    probability = classifier.predict(features)
    # At the same number of detections kept, the classifier keeps purer ones than the network's score.
    n = int(is_real.sum())
    by_reliability = is_real[np.argsort(-probability)[:n]].mean()
    by_score = is_real[np.argsort(-columns["score"])[:n]].mean()
    assert by_reliability > 0.95 > by_score
    copy = ReliabilityClassifier.from_dict(classifier.to_dict())
    assert np.array_equal(copy.predict(features), probability)
    assert copy.network_threshold == 0.2 and copy.feature_names == reliability_feature_names(BANDS)


def test_malformed_classifiers_are_refused_with_the_reason() -> None:
    classifier, _, _ = _fitted(np.random.default_rng(2), 200)
    good = classifier.to_dict()
    cases = [
        ({"format": "deepdisc-star-galaxy-classifier"}, "not a reliability classifier"),
        ({"network_threshold": 1.5}, "network_threshold must be in"),
        ({"features": ["a"]}, "features"),
        ({"threshold": 0.0}, "reliability threshold must be in"),
    ]
    for change, message in cases:
        with pytest.raises(ReliabilityError, match=message):
            ReliabilityClassifier.from_dict({**good, **change})
    with pytest.raises(ReliabilityError, match="no network_threshold"):
        ReliabilityClassifier.from_dict({k: v for k, v in good.items() if k != "network_threshold"})
    # A star-galaxy classifier is not a reliability classifier, and the other way round.
    with pytest.raises(ValueError, match="not a star-galaxy classifier"):
        StarGalaxyClassifier.from_dict(good)
    with pytest.raises(ReliabilityError, match="both outcomes"):
        fit_reliability(np.zeros((3, len(reliability_feature_names(BANDS)))), np.ones(3, bool), BANDS, 0.2)


def test_the_threshold_is_the_lowest_that_reaches_the_purity() -> None:
    probability = np.array([0.95, 0.9, 0.85, 0.6, 0.55, 0.3, 0.1])
    is_real = np.array([True, True, True, False, True, False, False])
    threshold, purity, kept = purity_threshold(probability, is_real, 0.99)
    assert threshold == pytest.approx(0.625) and purity == 1.0 and kept == pytest.approx(0.75)
    threshold, purity, kept = purity_threshold(probability, is_real, 0.75)
    assert threshold == pytest.approx(0.325) and purity == pytest.approx(0.8) and kept == 1.0
    # Unreachable: the purest threshold.
    threshold, purity, _ = purity_threshold(np.array([0.9, 0.8, 0.7]), np.array([False, True, False]), 0.99)
    assert threshold == pytest.approx(0.725) and purity == 0.5
    with pytest.raises(ReliabilityError, match="needs real detections"):
        purity_threshold(probability, np.zeros(7, bool), 0.9)


def test_the_catalog_step_judges_sources_only_and_keeps_the_catalog() -> None:
    rng = np.random.default_rng(3)
    classifier, _, _ = _fitted(rng)
    columns, is_real = _columns(rng, 300)
    catalog = Table(columns)
    catalog["class_name"] = np.where(np.arange(300) < 10, "artifact_rays", "galaxy")
    before = catalog.copy()
    result = judge_reliability(catalog, classifier)
    artifact = np.arange(300) < 10
    assert np.isnan(result.reliability[artifact]).all() and result.keep[artifact].all()
    judged = result.reliability[~artifact]
    assert np.array_equal(result.keep[~artifact], judged >= classifier.threshold)
    assert result.judged == 290 and result.dropped == int((judged < classifier.threshold).sum())
    assert is_real[result.keep & ~artifact].mean() > 0.95
    assert all(np.array_equal(before[c], catalog[c]) for c in catalog.colnames)
    strict = judge_reliability(catalog, classifier, threshold=0.99)
    assert strict.threshold == 0.99 and strict.dropped >= result.dropped
    catalog["r_psfFlux"] = np.nan  # r not measured (no PSF FWHM): the classifier needs both bands
    with pytest.raises(ReliabilityError, match=r"needs PSF photometry in 2 of its bands"):
        judge_reliability(catalog, classifier)


def test_the_higher_priority_detection_of_an_object_gets_its_label() -> None:
    arcsec = 1.0 / 3600.0
    label_ra, label_dec = np.array([10.0]), np.array([0.0])
    detection_ra = np.array([10.0 + 0.1 * arcsec, 10.0 + 0.3 * arcsec])
    detection_dec = np.zeros(2)
    nearest = match_labels(detection_ra, detection_dec, label_ra, label_dec, 0.6)
    assert nearest.detection.tolist() == [0]
    by_score = match_labels(
        detection_ra, detection_dec, label_ra, label_dec, 0.6, priority=np.array([0.3, 0.9])
    )
    assert by_score.detection.tolist() == [1] and by_score.label.tolist() == [0]
