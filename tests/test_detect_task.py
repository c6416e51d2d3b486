"""DeepDiscDetectTask.run and its checks, in process (no Butler): bad input, empty patches, metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.footprints import spans_to_mask, unflatten_spans
from lsst.meas.extensions.deepdisc.core.model_package import BandMismatchError, ModelPackage
from lsst.meas.extensions.deepdisc.core.models import ModelSpec, build_model_from_spec
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MissingBandError, MultibandImage
from lsst.meas.extensions.deepdisc.core.scaling import ScalingSpec
from lsst.meas.extensions.deepdisc.tasks.detect import DeepDiscDetectConfig, DeepDiscDetectTask

BANDS = ("g", "r", "i")


def _random_package(name: str, min_bands: int | None = None, **spec: object) -> ModelPackage:
    """A compact model with seeded random weights (``spec``: `ModelSpec` fields besides the defaults)."""
    torch.manual_seed(0)
    spec = ModelSpec(
        **{
            "architecture": "compact-R18-FPN",
            "bands": BANDS,
            "overrides": {"TEST.DETECTIONS_PER_IMAGE": 100},
            **spec,
        }
    )
    model = build_model_from_spec(spec)
    return ModelPackage.from_model(model, spec, ScalingSpec("asinh_per_band"), name=name, min_bands=min_bands)


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    return _random_package("test-random")


def _image(size: int = 160, bands: tuple[str, ...] = BANDS, seed: int = 1) -> MultibandImage:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cube = rng.normal(0, 1, (len(bands), size, size)).astype(np.float32)
    for cx, cy in rng.uniform(10, size - 10, (15, 2)):
        cube += 50 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
    wcs = tan_wcs((56.0, -30.0), crpix=(1.0, 1.0))
    return MultibandImage(
        bands=bands,
        image=cube,
        variance=np.ones_like(cube),
        mask=np.zeros(cube.shape, np.int32),
        wcs=wcs,
        xy0=(4000, 8000),
    )


def _task(**overrides) -> DeepDiscDetectTask:
    config = DeepDiscDetectConfig()
    config.tileSize = 128
    config.tileOverlap = 32
    for key, value in overrides.items():
        setattr(config, key, value)
    return DeepDiscDetectTask(config=config)


def test_run_writes_a_complete_catalog(package: ModelPackage) -> None:
    image = _image()
    task = _task()
    result = task.run(image, package, tract=3, patch=7)
    catalog = result.catalog
    assert len(catalog) == len(result.detections) > 0
    assert len(set(catalog["id"])) == len(catalog)
    x0, y0 = image.xy0
    for row in catalog:
        mask = spans_to_mask(unflatten_spans(row["footprint"]), image.shape, image.xy0)  # raises if outside
        assert mask.sum() == row["footprint_area"] > 0
        assert x0 <= row["centroid_x"] < x0 + image.width and y0 <= row["centroid_y"] < y0 + image.height
    for column in (
        "coord_ra",
        "coord_dec",
        "score",
        "class_name",
        "prob_star",
        "prob_galaxy",
        "g_footprintFlux",
    ):
        assert column in catalog.colnames
        assert catalog[column].description
    assert task.metadata["n_sources"] == len(catalog)
    assert task.metadata["device"] == "cpu"
    assert catalog.meta["model"] == "test-random" or "test-random" in str(catalog.meta)


def test_reorders_bands_to_the_model(package: ModelPackage) -> None:
    image = _image()
    shuffled = image.select_bands(["i", "g", "r"])
    a = _task().run(image, package).catalog
    b = _task().run(shuffled, package).catalog
    np.testing.assert_array_equal(a["id"], b["id"])
    np.testing.assert_allclose(a["score"], b["score"])


def test_missing_band_is_named_before_any_work(package: ModelPackage) -> None:
    task = _task()
    with pytest.raises(BandMismatchError, match=r"missing \['i'\]"):
        task.select_bands(package, ["g", "r", "z"])
    with pytest.raises(BandMismatchError, match="i"):
        task.run(_image(bands=("g", "r", "z")), package)
    with pytest.raises(MissingBandError, match="differ from the bands the model"):
        _task(bands=["g", "r", "z"]).select_bands(package, ["g", "r", "z"])
    assert task.select_bands(package, ["i", "r", "g", "u"]) == list(BANDS)


def test_all_nodata_patch_gives_an_empty_catalog(package: ModelPackage, caplog) -> None:
    image = _image()
    image.image[:] = np.nan
    image.mask[:] = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    task = _task()
    with caplog.at_level("WARNING"):
        result = task.run(image, package)
    assert len(result.catalog) == 0
    assert "footprint" in result.catalog.colnames and "id" in result.catalog.colnames
    assert "empty catalog" in caplog.text
    assert task.metadata["n_sources"] == 0


def test_nan_and_nodata_pixels_are_flagged_not_fatal(package: ModelPackage) -> None:
    image = _image()
    image.image[:, :40, :] = np.nan
    image.mask[:, :40, :] |= 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    catalog = _task().run(image, package).catalog
    assert np.all(np.isfinite(catalog["score"]))
    y_local = np.asarray(catalog["centroid_y"]) - image.xy0[1]
    # Detections centred on invalid pixels are dropped; what touches them carries the flag.
    assert np.all(y_local >= 40 - 0.5)
    touching = np.asarray(catalog["nodata_fraction"]) > 0
    np.testing.assert_array_equal(np.asarray(catalog["flag_nodata"]), touching)


def test_config_validation() -> None:
    config = DeepDiscDetectConfig()
    config.tileOverlap = config.tileSize
    with pytest.raises(Exception, match="tileOverlap must be smaller"):
        config.validate()


def test_detections_below_the_snr_cut_are_dropped_and_the_catalog_rebuilt(package: ModelPackage) -> None:
    image = _image()
    everything = _task(minDetectionSnr=0.0).run(image, package, tract=3, patch=7).catalog
    snr = np.asarray(everything["detection_snr"], dtype=float)
    assert np.all(np.isfinite(snr)) and len(everything) > 2
    cut = float(np.median(snr))
    task = _task(minDetectionSnr=cut)
    kept = task.run(image, package, tract=3, patch=7).catalog
    assert len(kept) == int(np.sum(snr >= cut)) < len(everything)
    assert np.all(np.asarray(kept["detection_snr"]) >= cut)
    assert task.metadata["n_below_min_snr"] == len(everything) - len(kept)
    # Ids are consecutive again and parents point at rows that exist.
    assert len(set(kept["id"])) == len(kept)
    assert set(np.asarray(kept["parent"]).tolist()) - {0} <= set(np.asarray(kept["id"]).tolist())


@pytest.fixture(scope="module")
def subset_package() -> ModelPackage:
    return _random_package("subset", min_bands=2, bands=("u", *BANDS), band_availability=True)


def test_a_band_availability_model_runs_on_the_bands_present_and_records_them(
    subset_package: ModelPackage, caplog: pytest.LogCaptureFixture
) -> None:
    task = _task()
    with caplog.at_level("INFO"):
        result = task.run(_image(), subset_package)
    assert task.metadata.getArray("bands_used") == ["g", "r", "i"]
    assert result.catalog.meta["bands"] == ["g", "r", "i"]
    assert "on bands gri of its ugri (absent: u)" in caplog.text
    assert "u_footprintFlux" not in result.catalog.colnames
    two = _task().run(_image(bands=("g", "i")), subset_package)
    assert two.catalog.meta["bands"] == ["g", "i"]
    with pytest.raises(BandMismatchError, match="any 2 or more"):
        _task().run(_image(bands=("r",)), subset_package)
    # config.bands may choose a subset of such a model's bands.
    assert _task(bands=["g", "r"]).select_bands(subset_package, ["g", "r", "i", "z"]) == ["g", "r"]


def test_the_operating_point_follows_the_number_of_bands_present(subset_package: ModelPackage) -> None:
    import dataclasses

    package = dataclasses.replace(subset_package, score_threshold=0.6, band_count_thresholds={3: 0.3})
    task = _task()
    task.run(_image(), package)  # g r i: 3 of the model's 4 bands.
    assert task.metadata["score_threshold"] == pytest.approx(0.3)
    two = _task()
    two.run(_image(bands=("g", "i")), package)  # No threshold for 2 bands: the package's.
    assert two.metadata["score_threshold"] == pytest.approx(0.6)
    configured = _task(scoreThreshold=0.45)
    configured.run(_image(), package)  # The task's config wins.
    assert configured.metadata["score_threshold"] == pytest.approx(0.45)


@pytest.fixture(scope="module")
def artifact_package() -> ModelPackage:
    import dataclasses

    names = ("star", "galaxy", "artifact_ghost_bright", "artifact_ghost_faint", "artifact_rays")
    return dataclasses.replace(_random_package("test-artifacts", class_names=names), artifact_binning=4)


def test_the_binned_artifact_pass_adds_only_artifact_rows_on_whole_blocks(artifact_package) -> None:
    image = _image()
    # A random network at score threshold 0 reports its top detections: enough to see where they go.
    task = _task(scoreThreshold=0.0, minDetectionSnr=0.0, binnedArtifactMinArea=0)
    catalog = task.run(image, artifact_package).catalog
    coarse = catalog[np.asarray(catalog["tile_index"]) == -1]
    assert task.metadata["n_binned_artifacts"] > 0 and len(coarse) > 0
    assert all(name.startswith("artifact_") for name in coarse["class_name"])
    assert np.all(coarse["is_artifact"]) and not np.any(coarse["detect_isPrimary"])
    for row in coarse:
        spans = unflatten_spans(row["footprint"])
        # Whole 4x4 blocks of the binned grid, aligned with the patch origin.
        assert np.all((spans[:, 1] - image.xy0[0]) % 4 == 0)
        mask = spans_to_mask(spans, image.shape, image.xy0)
        assert mask.sum() % 4 == 0
    # binnedArtifactMinArea drops the small ones.
    limit = int(np.median(coarse["footprint_area"])) + 1
    bigger = _task(scoreThreshold=0.0, minDetectionSnr=0.0, binnedArtifactMinArea=limit).run(
        image, artifact_package
    )
    big_rows = bigger.catalog[np.asarray(bigger.catalog["tile_index"]) == -1]
    assert 0 < len(big_rows) < len(coarse) and np.all(big_rows["footprint_area"] >= limit)
    # Without the binned pass (config 0, or a package without artifact_binning) there are no such rows.
    for overrides, package in (
        ({"artifactBinning": 0}, artifact_package),
        ({}, package_without(artifact_package)),
    ):
        plain = _task(scoreThreshold=0.0, minDetectionSnr=0.0, **overrides)
        assert not np.any(np.asarray(plain.run(image, package).catalog["tile_index"]) == -1)
        assert "n_binned_artifacts" not in plain.metadata


def package_without(package: ModelPackage) -> ModelPackage:
    import dataclasses

    return dataclasses.replace(package, artifact_binning=None)


def test_a_binned_pass_is_skipped_with_a_warning_for_a_model_without_artifact_classes(
    package: ModelPackage, caplog: pytest.LogCaptureFixture
) -> None:
    task = _task(artifactBinning=4)
    with caplog.at_level("WARNING"):
        task.run(_image(), package)
    assert "artifactBinning=4 ignored" in caplog.text
    assert "n_binned_artifacts" not in task.metadata


def _reliability_package(package: ModelPackage, network_threshold: float) -> ModelPackage:
    """``package`` with a seeded random reliability classifier on its bands (threshold 0.5)."""
    import dataclasses

    from lsst.meas.extensions.deepdisc.core.star_galaxy import (
        ReliabilityClassifier,
        reliability_feature_names,
    )

    rng = np.random.default_rng(3)
    n = len(reliability_feature_names(BANDS))
    classifier = ReliabilityClassifier(
        bands=BANDS,
        mean=np.zeros(n),
        scale=np.ones(n),
        networks=[([rng.normal(size=(n, 1))], [np.zeros(1)])],
        threshold=0.5,
        network_threshold=network_threshold,
    )
    return dataclasses.replace(package, reliability=(classifier,), score_threshold=0.3)


def _with_psf(image: MultibandImage) -> MultibandImage:
    image.metadata = {"psf_fwhm_arcsec": dict.fromkeys(image.bands, 0.8)}
    return image


def test_a_reliability_classifier_judges_candidates_from_its_network_threshold(package, caplog) -> None:
    from lsst.meas.extensions.deepdisc.core.star_galaxy import judge_reliability

    judged_package = _reliability_package(package, network_threshold=0.05)
    (classifier,) = judged_package.reliability
    candidates = _task(minDetectionSnr=0.0, doReliability=False, scoreThreshold=0.05)
    everything = candidates.run(_with_psf(_image()), judged_package).catalog
    assert np.isnan(everything["reliability"]).all() and len(everything) > 5
    expected = judge_reliability(everything, classifier)
    assert 0 < expected.dropped < expected.judged  # the random classifier keeps some, drops some
    task = _task(minDetectionSnr=0.0)
    kept = task.run(_with_psf(_image()), judged_package).catalog
    assert task.metadata["score_threshold"] == pytest.approx(0.05)  # the classifier's candidates
    assert task.metadata["reliability_applied"] and task.metadata["n_unreliable"] == expected.dropped
    sources = ~np.asarray(kept["is_artifact"])
    assert sources.sum() == int((expected.keep & np.isfinite(expected.reliability)).sum())
    assert (np.asarray(kept["reliability"])[sources] >= 0.5).all()
    # Rebuilt from the kept detections: consecutive ids, parents that exist.
    assert np.array_equal(np.sort(np.asarray(kept["id"]) & 0xFFF), np.arange(1, len(kept) + 1))
    assert set(np.asarray(kept["parent"]).tolist()) - {0} <= set(np.asarray(kept["id"]).tolist())
    # Without PSF sizes there is no PSF photometry: the package's score threshold, with a warning.
    fallback = _task(minDetectionSnr=0.0)
    with caplog.at_level("WARNING"):
        plain = fallback.run(_image(), judged_package).catalog
    assert "Reliability classifier skipped" in caplog.text and not fallback.metadata["reliability_applied"]
    assert np.isnan(plain["reliability"]).all() and (np.asarray(plain["score"]) >= 0.3).all()
    off = _task(minDetectionSnr=0.0, doReliability=False)
    off.run(_with_psf(_image()), judged_package)
    assert off.metadata["score_threshold"] == pytest.approx(0.3)


def test_artifact_candidates_keep_the_operating_threshold(artifact_package: ModelPackage) -> None:
    import dataclasses

    package = _reliability_package(dataclasses.replace(artifact_package, artifact_binning=None), 0.05)
    candidates = _task(minDetectionSnr=0.0, doReliability=False, scoreThreshold=0.05)
    detections = candidates.run(_with_psf(_image()), package).detections
    scores = np.asarray(detections.scores)
    # The random network calls everything a star: make every other candidate a ghost.
    ghost = np.arange(len(detections)) % 2 == 0
    detections = dataclasses.replace(detections, class_ids=np.where(ghost, 2, detections.class_ids))
    floor = float(np.median(scores))
    kept = _task(scoreThreshold=None)._drop_faint_artifacts(
        detections, dataclasses.replace(package, score_threshold=floor), len(BANDS)
    )
    # Sources all stay (the classifier judges them); ghosts only from the operating threshold up.
    expected = ~ghost | (scores >= floor)
    assert len(kept) == int(expected.sum()) < len(detections)
    assert np.array_equal(np.asarray(kept.scores), scores[expected])
    assert _task(scoreThreshold=0.0)._drop_faint_artifacts(detections, package, len(BANDS)) is detections
