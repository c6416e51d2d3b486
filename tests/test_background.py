"""core.background (sky level, mesh background, noise variance) and core.patch_grid (skymap from an image)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.background import (
    clipped_stats,
    measure_background,
    mesh_background,
    noise_variance,
)
from lsst.meas.extensions.deepdisc.core.patch_grid import PatchGrid


def _stars(shape: tuple[int, int], n: int, seed: int, flux: float = 3000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    for x, y in zip(rng.uniform(0, shape[1], n), rng.uniform(0, shape[0], n)):
        image += flux / (2 * np.pi * 4.0) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
    return image


def test_clipped_stats_ignore_sources_and_nans() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(10.0, 2.0, 20000)
    values[:1000] += 500.0  # 5% bright pixels
    values[1000:1100] = np.nan
    median, sigma = clipped_stats(values)
    assert median == pytest.approx(10.0, abs=0.1)
    assert sigma == pytest.approx(2.0, rel=0.05)
    rows_median, rows_sigma = clipped_stats(np.stack([values, values + 5.0]), axis=1)
    np.testing.assert_allclose(rows_median, [median, median + 5.0], atol=1e-4)
    assert np.isnan(clipped_stats(np.full(5, np.nan))[0])


def test_mesh_background_follows_a_gradient_under_sources() -> None:
    shape = (300, 420)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky = 800.0 + 0.5 * xx - 0.3 * yy
    noise = np.random.default_rng(2).normal(0.0, 5.0, shape)
    image = sky + noise + _stars(shape, 60, 3)
    background = mesh_background(image, mesh_size=64)
    assert background.shape == shape and background.dtype == np.float32
    # Between the outermost cell centres (31.5 and 277.5, 401.5); the background is flat beyond them.
    inner = (slice(32, 278), slice(32, 402))
    assert np.abs(mesh_background(sky, mesh_size=64) - sky)[inner].max() < 0.01
    assert np.abs(background - sky)[inner].max() < 3.0
    # Invalid pixels are not used: a huge NO_DATA block does not pull the background up.
    valid = np.ones(shape, dtype=bool)
    polluted = image.copy()
    polluted[:100, :100] = 1e6
    valid[:100, :100] = False
    masked = mesh_background(polluted, valid, 64)
    assert masked.max() < 1100.0
    np.testing.assert_allclose(masked[160:278, 160:402], background[160:278, 160:402], atol=3.0)
    # An image smaller than one cell: a constant.
    small = mesh_background(image[:50, :50] - sky[:50, :50] + 7.0, mesh_size=64)
    assert np.ptp(small) == 0 and small[0, 0] == pytest.approx(7.0, abs=1.0)
    with pytest.raises(ValueError, match="no valid pixel"):
        mesh_background(image, np.zeros(shape, dtype=bool))


def test_an_unsubtracted_sky_is_significant_a_subtracted_one_is_not() -> None:
    shape = (256, 256)
    rng = np.random.default_rng(4)
    sources = _stars(shape, 80, 5)
    subtracted = sources + rng.normal(0.0, 30.0, shape)
    estimate = measure_background(subtracted)
    assert not estimate.significant and abs(estimate.significance) < 0.2
    assert estimate.sigma == pytest.approx(30.0, rel=0.05)
    raw = subtracted + 1000.0
    estimate = measure_background(raw)
    assert estimate.significant and estimate.significance == pytest.approx(1000.0 / 30.0, rel=0.05)
    assert estimate.level == pytest.approx(1000.0, abs=2.0)
    assert estimate.range[0] > 990 and estimate.range[1] < 1010
    # A residual half a sigma away from zero is enough.
    assert measure_background(subtracted + 20.0).significant
    assert not measure_background(subtracted + 5.0).significant


def test_noise_variance_adds_the_sources_poisson_term() -> None:
    image = np.array([[1000.0, 1000.0], [1400.0, np.nan]])
    variance = noise_variance(image, sky_sigma=15.0, gain=4.0, background=1000.0)
    np.testing.assert_allclose(variance, [[225.0, 225.0], [225.0 + 100.0, 225.0]])
    np.testing.assert_allclose(noise_variance(image, 15.0), 225.0)
    with pytest.raises(ValueError, match="gain"):
        noise_variance(image, 15.0, gain=0.0)


def _wcs() -> WCS:
    wcs = tan_wcs((150.0, 2.0), crpix=(100.0, 100.0), scale_arcsec=0.263)
    return wcs


def test_patch_grid_one_patch_or_a_grid_that_tiles_the_image() -> None:
    single = PatchGrid.for_image((400, 300), xy0=(10, 20), patch_size=4000)
    assert single.n_patches == 1
    assert single.inner_box(0, 0) == single.outer_box(0, 0) == single.tract_box == (10, 20, 310, 420)

    grid = PatchGrid.for_image((250, 300), xy0=(5, -7), patch_size=128, border=16)
    # At most 96 px inside: 4 x 3 patches, of equal sizes rather than 96 px and a 12 px sliver.
    assert (grid.inner_width, grid.inner_height, grid.nx, grid.ny) == (75, 84, 4, 3)
    assert grid.inner_box(3, 2) == (5 + 225, -7 + 168, 5 + 300, -7 + 250)
    covered = np.zeros((250, 300), dtype=int)
    for patch_x, patch_y in grid.patches():
        xb, yb, xe, ye = grid.inner_box(patch_x, patch_y)
        covered[yb + 7 : ye + 7, xb - 5 : xe - 5] += 1
        oxb, oyb, oxe, oye = grid.outer_box(patch_x, patch_y)
        assert oxe - oxb <= 128 and oye - oyb <= 128
        assert (oxb, oyb) == (max(xb - 16, 5), max(yb - 16, -7))
        assert grid.patch_xy(grid.patch_index(patch_x, patch_y)) == (patch_x, patch_y)
    assert (covered == 1).all()  # Every pixel in exactly one inner box.
    with pytest.raises(ValueError, match="border"):
        PatchGrid.for_image((500, 500), patch_size=100, border=50)


def test_patch_grid_hash_changes_with_the_geometry() -> None:
    wcs = _wcs()
    grid = PatchGrid.for_image((400, 400))
    assert grid.geometry_hash(wcs) == PatchGrid.for_image((400, 400)).geometry_hash(wcs.deepcopy())
    assert len(grid.geometry_hash(wcs)) == 20
    moved = wcs.deepcopy()
    moved.wcs.crval = [150.0, 2.001]
    moved.wcs.set()
    assert grid.geometry_hash(moved) != grid.geometry_hash(wcs)
    assert PatchGrid.for_image((400, 401)).geometry_hash(wcs) != grid.geometry_hash(wcs)
    assert PatchGrid.for_image((400, 400), patch_size=300).geometry_hash(wcs) != grid.geometry_hash(wcs)
