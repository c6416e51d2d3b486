"""Numpy work spread over threads (`map_in_threads`): the same results as one thread, in the same order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from catalog_asserts import assert_same_catalog
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core import binning, peak_split
from lsst.meas.extensions.deepdisc.core import threads as threads_module
from lsst.meas.extensions.deepdisc.core.binning import bin_image
from lsst.meas.extensions.deepdisc.core.catalog import (
    _build,
    build_catalog,
    footprint_detection_snr,
    select_catalog_rows,
)
from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans
from lsst.meas.extensions.deepdisc.core.ids import IdPacker
from lsst.meas.extensions.deepdisc.core.inference import Detections
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MultibandImage
from lsst.meas.extensions.deepdisc.core.peak_split import significance_map, split_at_peaks
from lsst.meas.extensions.deepdisc.core.star_galaxy import _psf_photometry, psf_photometry
from lsst.meas.extensions.deepdisc.core.threads import map_in_threads

NO_DATA = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
SAT = 1 << DEFAULT_MASK_PLANES["SAT"]
BANDS = ("u", "g", "r", "i", "z")
HEIGHT, WIDTH = 90, 110
XY0 = (300, 400)


def test_map_in_threads_returns_results_in_order_from_concurrent_calls() -> None:
    # Three calls that each wait for the other two: they complete only if they run at the same time.
    barrier = threading.Barrier(3, timeout=10)
    names = []

    def call(item: int) -> int:
        barrier.wait()
        names.append(threading.current_thread().name)
        time.sleep(0.01 * (3 - item))  # Finish in the reverse order.
        return item * item

    assert map_in_threads(call, range(3), threads=3) == [0, 1, 4]
    assert all(name.startswith("deepdisc-map") for name in names)


def test_map_in_threads_hands_the_workers_freed_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    released = []
    monkeypatch.setattr(threads_module, "release_free_memory", lambda: released.append(True) or True)
    assert map_in_threads(lambda item: np.ones(item).sum(), [10, 20], threads=2) == [10.0, 20.0]
    assert len(released) == 1
    with pytest.raises(ZeroDivisionError):
        map_in_threads(lambda item: 1 // item, [1, 0], threads=2)
    assert len(released) == 2


def test_map_in_threads_with_one_thread_runs_in_the_caller() -> None:
    caller = threading.get_ident()
    assert map_in_threads(lambda item: (item, threading.get_ident()), "ab", threads=1) == [
        ("a", caller),
        ("b", caller),
    ]
    assert map_in_threads(lambda item: threading.get_ident(), [0], threads=4) == [caller]
    assert map_in_threads(lambda item: item, [], threads=2) == []
    with pytest.raises(ValueError, match="threads must be >= 1"):
        map_in_threads(lambda item: item, [1], threads=0)


def test_map_in_threads_raises_the_first_error_and_starts_nothing_after_it() -> None:
    started = []
    first_failed = threading.Event()

    def call(item: int) -> int:
        started.append(item)
        if item == 1:
            first_failed.set()
            raise KeyError(f"band {item}")
        if item == 2:
            first_failed.wait(10)
            time.sleep(0.05)  # Still running when the error reaches the caller.
            raise ValueError("later error")
        return item

    with pytest.raises(KeyError, match="band 1"):
        map_in_threads(call, range(40), threads=2)
    # The calls queued behind the failure were cancelled (two workers: a few had already started).
    assert 2 in started and len(started) < 40


def _image(seed: int = 0) -> MultibandImage:
    """Five bands of noise with point sources, NaNs, no-data and saturated pixels and bad variances."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 1.0, (len(BANDS), HEIGHT, WIDTH)).astype(np.float32)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for cx, cy, flux in ((28, 40, 400.0), (38, 43, 300.0), (80, 20, 150.0), (70, 70, 900.0)):
        image += (flux * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 4.5)).astype(np.float32)
    variance = rng.uniform(0.8, 1.2, image.shape).astype(np.float32)
    mask = np.zeros(image.shape, dtype=np.int32)
    image[1, 8:11, 8:11] = np.nan
    mask[2, 60:75, 60:75] |= NO_DATA
    mask[3, 68:72, 68:72] |= SAT
    variance[4, 18:22, 78:82] = 0.0
    return MultibandImage(
        BANDS,
        image,
        variance,
        mask,
        wcs=tan_wcs((150.1, 2.2), crpix=(XY0[0] + 50.0, XY0[1] + 40.0)),
        xy0=XY0,
        metadata={"psf_fwhm_arcsec": dict(zip(BANDS, (1.0, 0.9, 0.8, 0.75, 0.7)))},
    )


def _detections() -> Detections:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    discs = [(33, 41, 9), (80, 20, 6), (70, 70, 10), (20, 75, 5), (64, 66, 4)]
    masks = [(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2 for cx, cy, r in discs]
    n = len(masks)
    boxes = []
    for m in masks:
        rows, cols = np.nonzero(m)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return Detections(
        boxes=np.array(boxes, dtype=float) + np.array([XY0[0], XY0[1], XY0[0], XY0[1]]),
        scores=np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
        class_ids=np.array([1, 0, 1, 1, 2]),
        class_probs=np.random.default_rng(2).dirichlet(np.ones(3), n),
        footprints=[mask_to_spans(m, XY0) for m in masks],
        tile_index=np.zeros(n, dtype=int),
        merged_duplicate=np.zeros(n, dtype=bool),
    )


def _spy(monkeypatch: pytest.MonkeyPatch, module) -> list[int]:
    """Record the thread counts ``module`` hands to `map_in_threads`."""
    counts: list[int] = []

    def spied(function, items, threads=1):
        counts.append(threads)
        return map_in_threads(function, items, threads)

    monkeypatch.setattr(module, "map_in_threads", spied)
    return counts


def test_catalog_measured_in_threads_equals_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    image, detections = _image(), _detections()
    kwargs = dict(
        class_names=["star", "galaxy", "artifact_ghost_bright"],
        tract=9813,
        patch=7,
        model_name="m",
        model_version="1",
        id_packer=IdPacker.from_skymap(tract_max=20000, patch_nx_max=10, patch_ny_max=10),
    )
    serial = build_catalog(detections, image, **kwargs)
    # The measurements are real: PSF fluxes in every band, the flags the planes set.
    assert np.isfinite(serial["i_psfFlux"][0]) and serial["flag_saturated"][2] and serial["flag_nodata"][2]
    assert serial["flag_bad_variance"][1]
    sums_counts, psf_counts = _spy(monkeypatch, _build), _spy(monkeypatch, _psf_photometry)
    threaded = build_catalog(detections, image, threads=3, **kwargs)
    assert sums_counts == [3] and psf_counts == [3]
    assert_same_catalog(threaded, serial)
    np.testing.assert_array_equal(
        footprint_detection_snr(detections, image, threads=3), footprint_detection_snr(detections, image)
    )
    keep = np.array([True, False, True, True, False])
    assert_same_catalog(
        select_catalog_rows(serial, keep, detections, image, threads=2),
        select_catalog_rows(serial, keep, detections, image),
    )
    assert sums_counts == [3, 3, 1, 2, 1]  # Each threaded call above, then its serial reference.


def test_psf_photometry_in_threads_equals_one_thread_band_by_band() -> None:
    image = _image(1)
    x = np.array([328.2, 380.0, 370.4, 309.0, 455.0, np.nan])
    y = np.array([441.0, 420.3, 470.0, 409.0, 430.0, 440.0])
    serial = psf_photometry(image, x, y)
    assert np.isfinite(serial.flux[:2]).all() and np.isnan(serial.flux[5]).all()
    assert np.isnan(serial.flux[2, 2]) and np.isfinite(serial.flux[2, 3])  # No data in r there.
    assert np.isnan(serial.flux[3, 1]) and np.isfinite(serial.flux[3, 0])  # A NaN pixel in g.
    for threads in (2, 5, 8):
        threaded = psf_photometry(image, x, y, threads=threads)
        for field in ("flux", "flux_err", "excess", "excess_err", "x", "y"):
            np.testing.assert_array_equal(getattr(threaded, field), getattr(serial, field), err_msg=field)


def test_binning_and_significance_map_in_threads_equal_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image(3)
    serial = bin_image(image, 4)
    bin_counts = _spy(monkeypatch, binning)
    threaded = bin_image(image, 4, threads=2)
    assert bin_counts == [2]
    for plane in ("image", "variance", "mask"):
        np.testing.assert_array_equal(getattr(threaded, plane), getattr(serial, plane), err_msg=plane)

    snr, unusable = significance_map(image, 1.5)
    # Blocks of 7 rows: 13 of them, the last one partial, spread over the threads.
    monkeypatch.setattr(peak_split, "_BLOCK_PIXELS", 7 * WIDTH)
    map_counts = _spy(monkeypatch, peak_split)
    snr_t, unusable_t = significance_map(image, 1.5, threads=3)
    assert map_counts == [3]
    np.testing.assert_array_equal(snr_t, snr)
    np.testing.assert_array_equal(unusable_t, unusable)
    assert unusable[70, 70] and snr.max() > 50

    detections = _detections()
    artifacts = np.array([False, False, True])
    split, n_split = split_at_peaks(detections, image, artifacts, sigma=1.5)
    split_t, n_split_t = split_at_peaks(detections, image, artifacts, sigma=1.5, threads=3)
    assert n_split == n_split_t == 1  # The two blended point sources of the first disc.
    assert len(split_t) == len(split) == len(detections) + 1
    for a, b in zip(split_t.footprints, split.footprints):
        np.testing.assert_array_equal(a, b)
