"""Block binning of images, footprints and label tables (the artifact level of detection and training)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.deepdisc.core import binning
from lsst.meas.extensions.deepdisc.core.artifacts import ArtifactConfig
from lsst.meas.extensions.deepdisc.core.binning import (
    bin_image,
    bin_labels,
    bin_spans,
    unbin_boxes,
    unbin_spans,
)
from lsst.meas.extensions.deepdisc.core.footprints import (
    flatten_spans,
    mask_to_spans,
    spans_area,
    spans_to_mask,
    unflatten_spans,
)
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MultibandImage

NO_DATA = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
SAT = 1 << DEFAULT_MASK_PLANES["SAT"]


def _image(height: int = 10, width: int = 9) -> MultibandImage:
    rng = np.random.default_rng(3)
    flux = rng.normal(0.0, 1.0, (2, height, width)).astype(np.float32)
    return MultibandImage(
        bands=("g", "r"),
        image=flux,
        variance=np.full(flux.shape, 4.0, np.float32),
        mask=np.zeros(flux.shape, np.int32),
        xy0=(100, 200),
    )


def test_binning_averages_blocks_and_divides_the_variance() -> None:
    image = _image(8, 8)
    binned = bin_image(image, 4)
    assert binned.shape == (2, 2) and binned.xy0 == (0, 0) and binned.bands == ("g", "r")
    expected = image.image.reshape(2, 2, 4, 2, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(binned.image, expected, rtol=1e-5)
    np.testing.assert_allclose(binned.variance, 4.0 / 16)
    assert bin_image(image, 1) is image
    with pytest.raises(ValueError, match="positive integer"):
        bin_image(image, 0)


def test_partial_edge_blocks_and_no_data_pixels_average_only_the_valid_pixels() -> None:
    image = _image(10, 9)  # 3x3 blocks of 4: the last row and column of blocks are partial.
    image.image[:, :4, :4] = 2.0
    image.image[:, 0, 0] = 1e6
    image.mask[:, 0, 0] = NO_DATA  # Left out of the mean.
    image.mask[0, 1, 1] = SAT  # Carried into the block's mask.
    image.image[:, 8:, 8:] = 5.0
    image.image[1, 4:8, 4:8] = np.nan  # A block without any finite pixel in band r.
    image.mask[:, 4:8, :4] = NO_DATA  # A block without data.
    binned = bin_image(image, 4)
    assert binned.shape == (3, 3)
    np.testing.assert_allclose(binned.image[:, 0, 0], 2.0)
    np.testing.assert_allclose(binned.variance[:, 0, 0], 4.0 / 15)
    assert binned.mask[0, 0, 0] == SAT and binned.mask[1, 0, 0] == 0
    np.testing.assert_allclose(binned.image[:, 2, 2], 5.0)  # The 2x1 corner block of the 10x9 image.
    assert np.isnan(binned.image[1, 1, 1]) and np.isfinite(binned.image[0, 1, 1])
    assert binned.image[0, 1, 0] == 0.0 and np.all(binned.mask[:, 1, 0] & NO_DATA)
    assert np.all(binned.invalid_pixels(("NO_DATA",))[:, 1, 0])


def test_footprints_go_to_the_binned_grid_and_back() -> None:
    xy0 = (100, 200)
    mask = np.zeros((40, 40), dtype=bool)
    mask[8:24, 12:20] = True  # Exactly blocks (2..5, 3..4) at binning 4.
    spans = mask_to_spans(mask, xy0=xy0)
    binned = bin_spans(spans, 4, xy0, (10, 10))
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:6, 3:5] = True
    np.testing.assert_array_equal(spans_to_mask(binned, (10, 10)), expected)
    back = unbin_spans(binned, 4, xy0, (40, 40))
    np.testing.assert_array_equal(spans_to_mask(back, (40, 40), xy0=xy0), mask)
    # A source smaller than half a block keeps the block of its centroid.
    tiny = mask_to_spans(np.pad(np.ones((1, 2), bool), ((13, 26), (21, 17))), xy0=xy0)
    assert spans_to_mask(bin_spans(tiny, 4, xy0, (10, 10)), (10, 10))[3, 5]
    # Blocks past the unbinned image's edge are clipped; footprints outside the binned image vanish.
    edge = unbin_spans(np.array([[9, 9, 9]]), 4, xy0, (38, 37))
    assert spans_area(edge) == 2 * 1
    outside = mask_to_spans(np.ones((2, 2), bool), xy0=(100 + 60, 200))
    assert bin_spans(outside, 4, xy0, (10, 10)).shape == (0, 3)
    np.testing.assert_allclose(unbin_boxes(np.array([[1.0, 2.0, 3.0, 4.5]]), 4, xy0), [[104, 208, 112, 218]])


def test_label_tables_are_binned_row_by_row_and_rows_outside_dropped() -> None:
    xy0 = (0, 0)
    inside = np.zeros((16, 16), bool)
    inside[0:8, 0:8] = True
    table = Table()
    table["source_id"] = [1, 2]
    column = np.empty(2, dtype=object)
    column[:] = [flatten_spans(mask_to_spans(inside)), flatten_spans(mask_to_spans(inside, xy0=(64, 0)))]
    table["footprint"] = column
    binned = bin_labels(table, 4, xy0, (4, 4))
    assert list(binned["source_id"]) == [1]
    assert spans_area(unflatten_spans(np.asarray(binned["footprint"][0]))) == 4


def test_binned_artifacts_are_smaller_and_brighter_in_noise_units() -> None:
    config = ArtifactConfig()
    binned = config.binned(4)
    assert binned.psf_fwhm == pytest.approx(config.psf_fwhm / 4)
    assert binned.ghost_radius_range == pytest.approx(tuple(r / 4 for r in config.ghost_radius_range))
    assert binned.faint_sb == pytest.approx(tuple(4 * s for s in config.faint_sb))
    assert binned.ray_width == config.ray_width  # In units of the PSF, which shrank already.
    assert config.binned(1) is config
    with pytest.raises(ValueError, match="positive integer"):
        config.binned(2.5)


def test_binning_in_strips_gives_the_same_planes_as_one_strip(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch is binned a few block rows at a time (bounded memory); the strips must not show."""
    image = _image(45, 23)  # 12 block rows of 4, the last one partial.
    image.image[1, 10:20] = np.nan
    image.mask[0, 3:9, 5:9] = NO_DATA
    image.mask[1, 30, 7] = SAT
    whole = bin_image(image, 4)
    monkeypatch.setattr(binning, "_BLOCK_ROWS_PER_CHUNK", 1)
    strips = bin_image(image, 4)
    assert strips.shape == whole.shape == (12, 6)
    for plane in ("image", "variance", "mask"):
        np.testing.assert_array_equal(getattr(strips, plane), getattr(whole, plane))
        assert getattr(strips, plane).dtype == getattr(whole, plane).dtype
