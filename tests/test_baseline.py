"""The sep baseline on small synthetic multi-band images with known Gaussian sources."""

from __future__ import annotations

import numpy as np
import pytest
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.baseline import run_sep_baseline, segmentation_to_spans
from lsst.meas.extensions.deepdisc.core.footprints import (
    mask_to_spans,
    spans_area,
    spans_to_mask,
    unflatten_spans,
)
from lsst.meas.extensions.deepdisc.core.matching import SourceArrays, match_catalogs
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MissingBandError, MultibandImage

HEIGHT, WIDTH = 96, 128
XY0 = (1000, 2000)
BANDS = ("g", "r", "i")
BAND_SCALE = np.array([0.5, 1.0, 1.5])
PSF_SIGMA = 1.5
# (x, y) local, sigma, r-band flux, class (0 star, 1 galaxy)
SOURCES = [
    (30.3, 40.7, PSF_SIGMA, 5000.0, 0),
    (90.6, 25.2, 4.0, 8000.0, 1),
    (70.2, 70.9, PSF_SIGMA, 3000.0, 0),
]
NOISE = 1.0


def make_image(seed: int = 3, with_variance: bool = True, with_wcs: bool = False) -> MultibandImage:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    planes = []
    for scale in BAND_SCALE:
        plane = np.full((HEIGHT, WIDTH), 10.0)  # A constant sky for the background to remove.
        for x, y, sigma, flux, _ in SOURCES:
            plane += (
                scale
                * flux
                * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
                / (2 * np.pi * sigma**2)
            )
        planes.append(plane + rng.normal(0, NOISE, (HEIGHT, WIDTH)))
    wcs = None
    if with_wcs:
        wcs = tan_wcs((150.0, 2.0), crpix=(1001.0, 2001.0))
    return MultibandImage(
        bands=BANDS,
        image=np.stack(planes),
        variance=np.full((3, HEIGHT, WIDTH), NOISE**2) if with_variance else None,
        mask=np.zeros((3, HEIGHT, WIDTH), dtype=np.int32),
        wcs=wcs,
        xy0=XY0,
    )


def by_position(catalog) -> list[int]:
    """Row of the catalog nearest to each true source."""
    rows = []
    for x, y, *_ in SOURCES:
        distance = np.hypot(catalog["x"] - (x + XY0[0]), catalog["y"] - (y + XY0[1]))
        rows.append(int(np.argmin(distance)))
    return rows


def test_finds_sources_with_right_positions_fluxes_and_footprints() -> None:
    image = make_image(with_wcs=True)
    catalog = run_sep_baseline(image, psf_fwhm_pixels=2.3548 * PSF_SIGMA)
    assert len(catalog) == 3
    rows = by_position(catalog)
    assert sorted(rows) == [0, 1, 2]
    occupied = np.zeros((HEIGHT, WIDTH), dtype=int)
    for (x, y, _, flux, class_id), row in zip(SOURCES, rows):
        source = catalog[row]
        assert source["x"] == pytest.approx(x + XY0[0], abs=0.05)
        assert source["y"] == pytest.approx(y + XY0[1], abs=0.05)
        for band, scale in zip(BANDS, BAND_SCALE):
            # Isophotal flux misses the wings below the 1.5 sigma isophote: a few percent for the galaxy.
            assert source[f"{band}_flux"] == pytest.approx(scale * flux, rel=0.03 if class_id == 0 else 0.05)
        spans = unflatten_spans(source["footprint"])
        assert source["footprint_area"] == spans_area(spans)
        mask = spans_to_mask(spans, (HEIGHT, WIDTH), XY0)
        assert mask[int(round(y)), int(round(x))]  # The footprint covers the source centre ...
        assert mask.sum() > 20
        rows_, cols_ = np.nonzero(mask)
        bbox = (source["bbox_x_min"], source["bbox_y_min"], source["bbox_x_max"], source["bbox_y_max"])
        assert bbox == (
            cols_.min() + XY0[0],
            rows_.min() + XY0[1],
            cols_.max() + XY0[0],
            rows_.max() + XY0[1],
        )
        occupied += mask
        assert source["class_id"] == class_id
        # Flux error: sqrt(area * variance).
        assert source["r_flux_err"] == pytest.approx(np.sqrt(mask.sum()) * NOISE)
        ra, dec = image.pixel_to_sky(np.array([source["x"]]), np.array([source["y"]]))
        assert (source["ra"], source["dec"]) == pytest.approx((ra[0], dec[0]))
    assert occupied.max() == 1  # ... and footprints are disjoint.
    assert catalog["footprint"].dtype == object and catalog["footprint"][0].dtype == np.int32
    assert np.all((catalog["score"] > 0) & (catalog["score"] < 1))
    assert catalog.meta["thresh"] == 1.5


def test_star_galaxy_guess_needs_psf() -> None:
    catalog = run_sep_baseline(make_image())
    np.testing.assert_array_equal(catalog["class_id"], -1)
    galaxy_row = by_position(catalog)[1]
    star_row = by_position(catalog)[0]
    # Half-light radius of a Gaussian: 1.1774 sigma.
    assert catalog["half_light_radius"][star_row] == pytest.approx(1.1774 * PSF_SIGMA, rel=0.1)
    assert catalog["half_light_radius"][galaxy_row] == pytest.approx(1.1774 * 4.0, rel=0.1)
    with pytest.raises(ValueError, match="no value for band"):
        run_sep_baseline(make_image(), psf_fwhm_pixels={"g": 3.5})


def test_without_variance_uses_background_rms() -> None:
    catalog = run_sep_baseline(make_image(with_variance=False))
    assert len(catalog) == 3
    # Noise from the background RMS: the error is close to the true one.
    row = by_position(catalog)[0]
    area = catalog["footprint_area"][row]
    assert catalog["g_flux_err"][row] == pytest.approx(np.sqrt(area) * NOISE, rel=0.1)


def test_nan_and_no_data_are_masked() -> None:
    image = make_image()
    no_data = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    image.mask[:, :, 120:] = no_data  # No data in any band on the right edge.
    image.image[:, :, 120:] = 1e6  # Garbage under NO_DATA must not matter.
    image.image[1, 60:64, :] = np.nan  # A NaN stripe in r only.
    catalog = run_sep_baseline(image)
    assert len(catalog) == 3
    for column in ("x", "y", "g_flux", "r_flux", "i_flux", "detection_snr"):
        assert np.all(np.isfinite(catalog[column])), column
    for footprint in catalog["footprint"]:
        assert unflatten_spans(footprint)[:, 2].max() < XY0[0] + 120
    star = catalog[by_position(catalog)[0]]
    assert star["g_flux"] == pytest.approx(0.5 * 5000.0, rel=0.03)

    image.image[:] = np.nan
    empty = run_sep_baseline(image)
    assert len(empty) == 0
    assert {"id", "x", "y", "footprint", "bbox_x_min", "class_id", "r_flux"} <= set(empty.colnames)


def test_detection_bands_and_errors() -> None:
    image = make_image()
    only_i = run_sep_baseline(image, bands=["i"])
    assert len(only_i) == 3 and only_i.meta["detection_bands"] == ["i"]
    assert "g_flux" in only_i.colnames  # Fluxes are still measured in every band.
    with pytest.raises(MissingBandError, match="'z'"):
        run_sep_baseline(image, bands=["z"])
    with pytest.raises(ValueError, match="thresh"):
        run_sep_baseline(image, thresh=0)


def test_segmentation_to_spans_round_trip() -> None:
    rng = np.random.default_rng(1)
    segmap = rng.integers(0, 5, (20, 30))
    spans = segmentation_to_spans(segmap, 6, (7, -3))
    assert len(spans) == 6 and spans[5].shape == (0, 3)
    for label in range(1, 6):
        np.testing.assert_array_equal(spans[label - 1], mask_to_spans(segmap == label, (7, -3)))
    with pytest.raises(ValueError, match="label 4"):
        segmentation_to_spans(segmap.clip(0, 4), 3)


def test_baseline_catalog_feeds_the_matcher() -> None:
    catalog = run_sep_baseline(make_image(), psf_fwhm_pixels=2.3548 * PSF_SIGMA)
    detections = SourceArrays.from_table(catalog)
    truth = SourceArrays(x=[s[0] + XY0[0] for s in SOURCES], y=[s[1] + XY0[1] for s in SOURCES])
    result = match_catalogs(truth, detections)
    assert result.n_matched == 3 and result.iou_type == "none"
    assert np.all(result.distance < 0.1)
    assert detections.spans is not None and detections.bbox.shape == (3, 4)
