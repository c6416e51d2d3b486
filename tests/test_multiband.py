"""The core multi-band image type."""

from __future__ import annotations

import numpy as np
import pytest
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.multiband import MissingBandError, MultibandImage


def _image() -> MultibandImage:
    wcs = tan_wcs((150.0, 2.0), crpix=(1.0, 1.0))  # FITS 1-based: parent pixel (0, 0) is the tangent point
    rng = np.random.default_rng(3)
    return MultibandImage.from_bands(
        {b: rng.normal(size=(20, 30)) for b in "gri"},
        variances={b: np.ones((20, 30)) for b in "gri"},
        masks={b: np.zeros((20, 30), np.int32) for b in "gri"},
        wcs=wcs,
        xy0=(1000, 2000),
    )


def test_band_selection_and_errors() -> None:
    image = _image()
    sub = image.select_bands(["i", "g"])
    np.testing.assert_array_equal(sub.image[0], image.image[2])
    with pytest.raises(MissingBandError, match=r"\['z', 'y'\] required but not available.*\['g', 'r', 'i'\]"):
        image.select_bands(["g", "z", "y"])
    with pytest.raises(MissingBandError, match="band 'u' is not available"):
        image.band_index("u")
    with pytest.raises(ValueError, match="duplicate band"):
        MultibandImage(bands=("g", "g"), image=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="2 bands"):
        MultibandImage(bands=("g", "r"), image=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        MultibandImage.from_bands({"g": np.zeros((3, 3)), "r": np.zeros((3, 4))})


def test_invalid_pixels_and_planes() -> None:
    image = _image()
    image.image[1, 2, 3] = np.nan
    image.mask[0, 4, 5] = 1 << image.mask_planes["NO_DATA"]
    image.mask[2, 6, 7] = 1 << image.mask_planes["SAT"]
    invalid = image.invalid_pixels()
    assert invalid[1, 2, 3] and invalid[0, 4, 5] and not invalid[2, 6, 7]
    assert invalid.sum() == 2
    assert image.plane_mask(["SAT"])[6, 7] and image.plane_mask(["SAT"]).sum() == 1
    assert image.plane_mask(["NOT_A_PLANE"]).sum() == 0


def test_band_invalid_in_blocks_of_rows_is_the_band_of_invalid_pixels(monkeypatch) -> None:
    from lsst.meas.extensions.deepdisc.core import multiband

    image = _image()
    rng = np.random.default_rng(8)
    image.image[rng.random(image.image.shape) < 0.05] = np.inf
    image.mask[rng.random(image.mask.shape) < 0.1] |= 1 << image.mask_planes["NO_DATA"]
    image.mask[rng.random(image.mask.shape) < 0.1] |= 1 << image.mask_planes["SAT"]
    planes = ("NO_DATA", "SAT")
    expected = ~np.isfinite(image.image) | ((image.mask & image.plane_bits(planes)) != 0)
    monkeypatch.setattr(multiband, "_BLOCK_PIXELS", 3 * 30 + 7)  # blocks of 3 rows, the last one short
    out = np.ones((20, 30), dtype=bool)
    for b in range(3):
        np.testing.assert_array_equal(image.band_invalid(b, planes), expected[b])
        assert image.band_invalid(b, planes, out=out) is out and np.array_equal(out, expected[b])
    np.testing.assert_array_equal(image.invalid_pixels(planes), expected)


def test_cutout_keeps_parent_coordinates_and_wcs() -> None:
    image = _image()
    cut = image.cutout(5, 6, 15, 16)
    assert cut.xy0 == (1005, 2006) and cut.shape == (10, 10)
    np.testing.assert_array_equal(cut.image, image.image[:, 6:16, 5:15])
    ra0, dec0 = image.pixel_to_sky(np.array([0.0]), np.array([0.0]))
    assert ra0[0] == pytest.approx(150.0) and dec0[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="outside image"):
        image.cutout(0, 0, 31, 5)
