"""Peak splitting: a footprint over two distinct bright peaks becomes two detections; one peak stays whole."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans, spans_area, spans_intersection_area
from lsst.meas.extensions.deepdisc.core.inference import Detections
from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage
from lsst.meas.extensions.deepdisc.core.peak_split import PeakSplitConfig, significance_map, split_at_peaks

XY0 = (100, 200)
SHAPE = (60, 80)
SIGMA = 1.5
NOT_ARTIFACT = np.array([False, False, True])  # star, galaxy, artifact


def _blob(cx: float, cy: float, flux: float, width: float) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return flux * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2)) / (2 * np.pi * width**2)


def _image(*blobs: np.ndarray, seed: int = 0) -> MultibandImage:
    rng = np.random.default_rng(seed)
    light = sum(blobs)
    image = np.stack([light + rng.normal(0, 1.0, SHAPE) for _ in range(3)]).astype(np.float32)
    return MultibandImage(
        ("g", "r", "i"), image, np.ones_like(image), np.zeros(image.shape, np.int32), xy0=XY0
    )


def _detections(masks: list[np.ndarray], class_ids: list[int]) -> Detections:
    n = len(masks)
    return Detections(
        boxes=np.tile([0.0, 0.0, 10.0, 10.0], (n, 1)),
        scores=np.linspace(0.9, 0.6, n),
        class_ids=class_ids,
        class_probs=np.eye(3)[class_ids],
        footprints=[mask_to_spans(m, XY0) for m in masks],
        tile_index=np.arange(n),
        merged_duplicate=np.ones(n, dtype=bool),
    )


def _disc(cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def test_two_distinct_peaks_under_one_footprint_become_two_detections() -> None:
    pair = _disc(30, 30, 9) | _disc(42, 31, 8)
    single = _disc(65, 45, 6)
    image = _image(_blob(30, 30, 4000, 2.0), _blob(42, 31, 2500, 2.0), _blob(65, 45, 3000, 2.0))
    detections = _detections([single, pair], [0, 1])
    split, n_split = split_at_peaks(detections, image, NOT_ARTIFACT, sigma=SIGMA)
    assert n_split == 1 and len(split) == 3
    # The unsplit row is unchanged and first; the children take the parent's place, score and class id.
    assert np.array_equal(split.footprints[0], detections.footprints[0])
    assert split.scores.tolist() == pytest.approx([0.9, 0.6, 0.6])
    assert split.class_ids.tolist() == [0, 1, 1] and split.tile_index.tolist() == [0, 1, 1]
    assert split.merged_duplicate.tolist() == [True, False, False]
    # The network classified the blend: its children are undecided between the source classes.
    np.testing.assert_allclose(split.class_probs, [[1, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0]])
    first, second = split.footprints[1], split.footprints[2]
    assert spans_intersection_area(first, second) == 0
    assert spans_area(first) + spans_area(second) == spans_area(detections.footprints[1])
    # Each child holds its own peak, the brighter first, and its box bounds its pixels.
    centres = [(XY0[0] + 30, XY0[1] + 30), (XY0[0] + 42, XY0[1] + 31)]
    for child, box, (x, y) in zip((first, second), split.boxes[1:], centres):
        assert np.any((child[:, 0] == y) & (child[:, 1] <= x) & (child[:, 2] >= x))
        assert box[0] == child[:, 1].min() and box[2] == child[:, 2].max() + 1
        assert box[1] == child[:, 0].min() and box[3] == child[:, 0].max() + 1


@pytest.mark.parametrize(
    "case",
    ["one peak", "faint pair", "shoulder", "artifact", "too close", "saturated core"],
)
def test_footprints_without_two_distinct_bright_peaks_stay_whole(case: str) -> None:
    footprint = _disc(30, 30, 9) | _disc(42, 31, 8)
    class_id = 1
    if case == "one peak":
        blobs = [_blob(35, 30, 6000, 3.0)]
    elif case == "faint pair":  # Two peaks, each below the significance asked for.
        blobs = [_blob(30, 30, 60, 2.0), _blob(42, 31, 50, 2.0)]
    elif case == "shoulder":  # A faint companion on the flank of a bright profile: no dip between them.
        blobs = [_blob(32, 30, 8000, 3.5), _blob(39, 31, 400, 1.5)]
    elif case == "artifact":
        blobs, class_id = [_blob(30, 30, 4000, 2.0), _blob(42, 31, 2500, 2.0)], 2
    elif case == "too close":  # Two peaks 2 sigma apart.
        blobs = [_blob(34, 30, 4000, 1.2), _blob(37, 30, 4000, 1.2)]
    else:  # Two distinct peaks, but one core saturated in one band.
        blobs = [_blob(30, 30, 4000, 2.0), _blob(42, 31, 2500, 2.0)]
    image = _image(*blobs)
    if case == "saturated core":
        image.mask[1, 29:32, 29:32] |= image.plane_bits(["SAT"])
    detections = _detections([footprint], [class_id])
    split, n_split = split_at_peaks(detections, image, NOT_ARTIFACT, sigma=SIGMA)
    assert n_split == 0 and split is detections


def test_significance_is_the_weighted_band_sum_over_its_noise_in_any_block_size(monkeypatch) -> None:
    from scipy import ndimage

    from lsst.meas.extensions.deepdisc.core import peak_split

    rng = np.random.default_rng(4)
    image = _image(_blob(30, 20, 800.0, 2.0))
    image.variance = rng.uniform(0.5, 2.0, image.image.shape).astype(np.float32)
    image.image[0, 3, 4] = np.nan  # no value in one band
    image.variance[1, 5, 6] = 0.0  # no usable variance in one band
    image.mask[2, 7, 8] = image.plane_bits(["SAT"])  # saturated in one band
    whole, unusable = significance_map(image, SIGMA)
    monkeypatch.setattr(peak_split, "_BLOCK_PIXELS", 3 * SHAPE[1] + 5)  # blocks of 3 rows, the last short
    blocked, blocked_unusable = significance_map(image, SIGMA)
    np.testing.assert_array_equal(blocked, whole)
    np.testing.assert_array_equal(blocked_unusable, unusable)
    assert set(zip(*np.nonzero(unusable))) == {(3, 4), (5, 6), (7, 8)}
    # The definition, in float64: inverse-variance weighted sum over sqrt(sum of weights), smoothed.
    good = np.isfinite(image.image) & (image.variance > 0) & ((image.mask & image.plane_bits(["SAT"])) == 0)
    weight = np.where(good, 1.0 / np.where(good, image.variance, 1.0), 0.0)
    snr = (np.where(good, image.image, 0.0) * weight).sum(axis=0) / np.sqrt(weight.sum(axis=0))
    expected = ndimage.gaussian_filter(snr, SIGMA, mode="nearest") * 2.0 * np.sqrt(np.pi) * SIGMA
    np.testing.assert_allclose(whole, expected, rtol=1e-4, atol=1e-4)


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="min_contrast"):
        PeakSplitConfig(min_contrast=1.5)
    with pytest.raises(ValueError, match="min_peak_snr"):
        PeakSplitConfig(min_peak_snr=0)
    detections = _detections([_disc(30, 30, 5)], [1])
    with pytest.raises(ValueError, match="sigma"):
        split_at_peaks(detections, _image(), NOT_ARTIFACT, sigma=0.0)


def test_detect_task_splits_with_the_psf_and_refuses_bad_thresholds() -> None:
    from types import SimpleNamespace

    import lsst.pex.config as pexConfig

    from lsst.meas.extensions.deepdisc.tasks.detect import DeepDiscDetectConfig, DeepDiscDetectTask

    config = DeepDiscDetectConfig()
    assert config.doSplitPeaks and config.peak_split_config() == PeakSplitConfig()
    config.splitMinContrast = 1.2
    with pytest.raises(pexConfig.FieldValidationError, match="min_contrast"):
        config.validate()
    task = DeepDiscDetectTask(config=DeepDiscDetectConfig())
    package = SimpleNamespace(class_names=("star", "galaxy", "artifact_ghost_bright"))
    pair = _disc(30, 30, 9) | _disc(42, 31, 8)
    detections = _detections([pair], [1])
    # Without a PSF FWHM the coadds say nothing of the smoothing: skipped.
    image = _image(_blob(30, 30, 4000, 2.0), _blob(42, 31, 2500, 2.0))
    assert task.split_peaks(detections, image, package) is detections
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    image.wcs = wcs
    image.metadata["psf_fwhm_arcsec"] = 0.7  # sigma 1.49 px at 0.2"/px
    split = task.split_peaks(detections, image, package)
    assert len(split) == 2 and task.metadata["n_split_footprints"] == 1


def test_split_children_form_one_family_in_the_catalog() -> None:
    from lsst.meas.extensions.deepdisc.core.catalog import build_catalog, select_catalog_rows
    from lsst.meas.extensions.deepdisc.core.ids import IdPacker

    pair = _disc(30, 30, 9) | _disc(42, 31, 8)
    single = _disc(65, 45, 6)
    image = _image(_blob(30, 30, 4000, 2.0), _blob(42, 31, 2500, 2.0), _blob(65, 45, 3000, 2.0))
    split, _ = split_at_peaks(_detections([single, pair], [0, 1]), image, NOT_ARTIFACT, sigma=SIGMA)
    assert split.split_from.tolist()[0] == -1 and split.split_from[1] == split.split_from[2] >= 0
    # The groups survive selection and concatenation (renumbered apart).
    assert split.select(np.array([1, 2])).split_from.tolist() == split.split_from[1:].tolist()
    both = Detections.concatenate([split, split])
    assert both.split_from[1] == both.split_from[2] != both.split_from[4] == both.split_from[5]
    kwargs = dict(
        class_names=["star", "galaxy", "artifact_ghost_bright"],
        tract=1,
        patch=2,
        model_name="m",
        model_version="1",
        id_packer=IdPacker(n_tracts_bits=8, n_patches_bits=8),
    )
    catalog = build_catalog(split, image, **kwargs)
    assert catalog["family_size"].tolist() == [1, 2, 2]
    assert catalog["nChild"][1] == 1 and catalog["parent"][2] == catalog["id"][1]
    # Without the link the touching children would be two isolated sources.
    unlinked = build_catalog(Detections(**{**vars(split), "split_from": None}), image, **kwargs)
    assert unlinked["family_size"].tolist() == [1, 1, 1]
    kept = select_catalog_rows(catalog, np.array([False, True, True]), split, image)
    assert kept["family_size"].tolist() == [2, 2] and kept["parent"][1] == kept["id"][0]
