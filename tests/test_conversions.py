"""lsst.images.MaskedImage / afw ExposureF <-> MultibandImage conversions."""

from __future__ import annotations

import sys
import types

import astropy.units as u
import numpy as np
import pytest
from astropy.wcs import WCS
from lsst.images import XY, Box, Image, MaskedImage, MaskPlane, MaskSchema
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.butler.conversions import (
    LEGACY_TO_IMAGES_PLANES,
    LazyBands,
    masked_image_from_multiband,
    multiband_from_exposures,
    multiband_from_masked_images,
    wcs_from_sky_projection,
)
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MissingBandError, MultibandImage


def _tract_wcs(ra: float = 150.0) -> WCS:
    wcs = tan_wcs((ra, 2.0), crpix=(2000.5, 1500.5))
    return wcs


def _multiband(bands=("g", "r"), xy0=(700, 300), seed=0) -> MultibandImage:
    rng = np.random.default_rng(seed)
    shape = (len(bands), 40, 50)
    planes = dict(DEFAULT_MASK_PLANES)
    planes["MY_PLANE"] = 12  # A user plane with a gap in the bit numbering.
    bits = [1 << b for b in planes.values()]
    mask = np.zeros(shape, dtype=np.int32)
    for bit in bits:
        mask |= np.where(rng.random(shape) < 0.2, bit, 0).astype(np.int32)
    return MultibandImage(
        bands=bands,
        image=rng.normal(size=shape),
        variance=rng.random(shape) + 0.5,
        mask=mask,
        mask_planes=planes,
        wcs=_tract_wcs(),
        xy0=xy0,
        metadata={"psf_fwhm_arcsec": {b: 0.7 + 0.1 * i for i, b in enumerate(bands)}},
    )


def _corners(mb: MultibandImage) -> tuple[np.ndarray, np.ndarray]:
    x = mb.xy0[0] + np.array([0, mb.width - 1, 0, mb.width - 1, 17.3])
    y = mb.xy0[1] + np.array([0, 0, mb.height - 1, mb.height - 1, 9.8])
    return x, y


def _assert_same_sky(wcs_a: WCS, wcs_b: WCS, x: np.ndarray, y: np.ndarray) -> None:
    sky_a = wcs_a.pixel_to_world_values(x, y)
    np.testing.assert_allclose(sky_a, wcs_b.pixel_to_world_values(x, y), atol=1e-10)


def test_round_trip_keeps_pixels_masks_wcs_and_origin() -> None:
    mb = _multiband()
    images = {band: masked_image_from_multiband(mb, band) for band in mb.bands}
    first = images["g"]
    assert first.unit == u.nJy and first.variance.unit == u.nJy**2
    assert (first.bbox.x.start, first.bbox.y.start) == mb.xy0
    # lsst.images names the legacy planes its own way, at the same bit positions.
    assert "SATURATED" in first.mask.schema and "SAT" not in first.mask.schema
    assert first.mask.schema[DEFAULT_MASK_PLANES["SAT"]].name == "SATURATED"
    np.testing.assert_array_equal(first.mask.get("SATURATED"), (mb.mask[0] & 2) != 0)
    assert first.metadata["band"] == "g" and first.metadata["psf_fwhm_arcsec"] == pytest.approx(0.7)

    back = multiband_from_masked_images(images, ["r", "g"])
    assert back.bands == ("r", "g")
    assert back.xy0 == mb.xy0
    assert back.mask_planes == mb.mask_planes
    np.testing.assert_array_equal(back.image, mb.image[::-1])
    np.testing.assert_array_equal(back.variance, mb.variance[::-1])
    np.testing.assert_array_equal(back.mask, mb.mask[::-1])
    x, y = _corners(mb)
    np.testing.assert_allclose(
        back.wcs.pixel_to_world_values(x, y), mb.wcs.pixel_to_world_values(x, y), atol=1e-10
    )
    assert back.metadata["unit"] == "nJy"
    assert back.metadata["psf_fwhm_arcsec"] == pytest.approx({"r": 0.8, "g": 0.7})


def test_wcs_in_parent_coordinates_matches_the_projection() -> None:
    mb = _multiband(xy0=(1234, 567))
    masked = masked_image_from_multiband(mb, "g")
    wcs = wcs_from_sky_projection(masked.sky_projection, masked.bbox)
    x, y = _corners(mb)
    sky = masked.sky_projection.pixel_to_sky(XY(x=x, y=y))
    ra, dec = wcs.pixel_to_world_values(x, y)
    np.testing.assert_allclose(ra, sky.ra.deg, atol=1e-9)
    np.testing.assert_allclose(dec, sky.dec.deg, atol=1e-9)
    assert wcs_from_sky_projection(None, masked.bbox) is None


def test_errors_name_the_problem() -> None:
    mb = _multiband()
    images = {band: masked_image_from_multiband(mb, band) for band in mb.bands}
    with pytest.raises(MissingBandError, match="'i'"):
        multiband_from_masked_images(images, ["g", "i"])
    with pytest.raises(MissingBandError, match="'z'"):
        masked_image_from_multiband(mb, "z")
    with pytest.raises(ValueError, match="no bands"):
        multiband_from_masked_images(images, [])
    shifted = masked_image_from_multiband(_multiband(xy0=(701, 300)), "r")
    with pytest.raises(ValueError, match="bounding box"):
        multiband_from_masked_images({"g": images["g"], "r": shifted}, ["g", "r"])
    elsewhere = _multiband()
    elsewhere.wcs = _tract_wcs(ra=151.0)
    with pytest.raises(ValueError, match="same sky grid"):
        multiband_from_masked_images(
            {"g": images["g"], "r": masked_image_from_multiband(elsewhere, "r")}, ["g", "r"]
        )
    undeclared = _multiband()
    undeclared.mask[0, 0, 0] |= 1 << 20
    with pytest.raises(ValueError, match="not named"):
        masked_image_from_multiband(undeclared, "g")


def test_stacking_looks_each_band_up_once_and_holds_at_most_the_previous_one() -> None:
    import gc
    import weakref

    mb = _multiband()
    lookups: list[str] = []
    alive: list[weakref.ref] = []

    def load(band: str) -> MaskedImage:
        """A fresh image per lookup, as a Butler read would give."""
        gc.collect()
        # The previous band may still be being copied into the cubes; none before it is held.
        assert not any(ref() is not None for ref in alive[:-1]), "a band two lookups back is still held"
        lookups.append(band)
        image = masked_image_from_multiband(mb, band)
        alive.append(weakref.ref(image))
        return image

    bands = LazyBands({band: band for band in mb.bands}, load)
    back = multiband_from_masked_images(bands, ["r", "g"])
    assert lookups == ["r", "g"]  # Checking which bands exist loaded nothing.
    np.testing.assert_array_equal(back.image, mb.select_bands(["r", "g"]).image)
    np.testing.assert_array_equal(back.mask, mb.select_bands(["r", "g"]).mask)
    with pytest.raises(MissingBandError, match="'i'"):
        multiband_from_masked_images(bands, ["g", "i"])
    assert lookups == ["r", "g"]


def test_stacking_copies_each_band_in_the_helper_thread_while_the_next_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from lsst.meas.extensions.deepdisc.butler import conversions

    mb = _multiband()
    events: list[tuple[str, str]] = []
    copy_started = threading.Event()
    original = conversions._copy_band

    def copy(*args: object) -> None:
        events.append(("copy", threading.current_thread().name))
        copy_started.set()
        original(*args)  # type: ignore[arg-type]

    def load(band: str) -> MaskedImage:
        if events:  # The previous band's copy runs beside this read.
            assert copy_started.wait(5.0)
        copy_started.clear()
        events.append(("read", band))
        return masked_image_from_multiband(mb, band)

    monkeypatch.setattr(conversions, "_copy_band", copy)
    back = multiband_from_masked_images(LazyBands({b: b for b in mb.bands}, load), list(mb.bands))
    assert [kind for kind, _ in events] == ["read", "copy"] * len(mb.bands)
    assert all(name.startswith("stack-bands") for kind, name in events if kind == "copy")
    np.testing.assert_array_equal(back.image, mb.image)
    np.testing.assert_array_equal(back.variance, mb.variance)
    np.testing.assert_array_equal(back.mask, mb.mask)

    def failing(*args: object) -> None:
        raise OSError("disk gone while copying")

    monkeypatch.setattr(conversions, "_copy_band", failing)
    with pytest.raises(OSError, match="disk gone"):  # The helper's error reaches the caller.
        multiband_from_masked_images({b: masked_image_from_multiband(mb, b) for b in mb.bands}, mb.bands)


def test_reads_lsst_images_masks_units_and_new_plane_names() -> None:
    bbox = Box.from_shape((6, 7), start=(10, 20))
    schema = MaskSchema([MaskPlane("NO_DATA", "n"), MaskPlane("SATURATED", "s"), MaskPlane("STREAK", "x")])
    image = Image(np.full((6, 7), 2.0, dtype=np.float32), bbox=bbox, unit=u.uJy)
    masked = MaskedImage(image, mask_schema=schema)
    masked.mask.set("SATURATED", np.eye(6, 7, dtype=bool))
    masked.mask.set("STREAK", np.ones((6, 7), dtype=bool))
    mb = multiband_from_masked_images({"i": masked}, ["i"])
    assert mb.xy0 == (20, 10) and mb.wcs is None
    np.testing.assert_allclose(mb.image, 2000.0)  # uJy -> nJy
    np.testing.assert_allclose(mb.variance, 1e6)  # unit variance in uJy^2
    assert mb.mask_planes == {"NO_DATA": 0, "SAT": 1, "STREAK": 2}
    np.testing.assert_array_equal(mb.plane_mask(["SAT"]), np.eye(6, 7, dtype=bool))
    assert mb.plane_mask(["STREAK"]).all() and not mb.plane_mask(["NO_DATA"]).any()
    assert LEGACY_TO_IMAGES_PLANES["INTRP"].name == "INTERPOLATED"


def test_exposures_need_afw() -> None:
    try:
        import lsst.afw.image  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="multiband_from_masked_images"):
            multiband_from_exposures({}, ["g"])
    else:  # pragma: no cover - only where the full stack is installed.
        pytest.skip("lsst.afw is installed; the duck-typed test below covers the conversion")


class _Box:
    def __init__(self, x0, y0, width, height):
        self.x0, self.y0, self.width, self.height = x0, y0, width, height

    def getMinX(self):
        return self.x0

    def getMinY(self):
        return self.y0

    def getWidth(self):
        return self.width

    def getHeight(self):
        return self.height


class _Plane:
    def __init__(self, array, planes=None):
        self.array = array
        self._planes = planes

    def getMaskPlaneDict(self):
        return self._planes


class _PropertyList:
    def __init__(self, header):
        self._header = header

    def toDict(self):
        return self._header


class _SkyWcs:
    def __init__(self, wcs: WCS):
        self._wcs = wcs

    def getFitsMetadata(self, precise):
        return _PropertyList(dict(self._wcs.to_header()))

    def getPixelScale(self, position):
        return types.SimpleNamespace(asArcseconds=lambda: 0.2)


class _Psf:
    def getAveragePosition(self):
        return (0.0, 0.0)

    def computeShape(self, position):
        return types.SimpleNamespace(getDeterminantRadius=lambda: 1.5)


class _Exposure:
    def __init__(self, mb: MultibandImage, index: int):
        self.image = _Plane(mb.image[index])
        self.variance = _Plane(mb.variance[index])
        self.mask = _Plane(mb.mask[index], mb.mask_planes)
        self._box = _Box(mb.xy0[0], mb.xy0[1], mb.width, mb.height)
        self._wcs = _SkyWcs(mb.wcs)

    def getBBox(self):
        return self._box

    def getWcs(self):
        return self._wcs

    def getPsf(self):
        return _Psf()


def test_exposures_with_an_afw_like_api(monkeypatch) -> None:
    # Stand-in modules so that the lazy `import lsst.afw.image` succeeds; the exposures are duck-typed.
    import lsst

    afw = types.ModuleType("lsst.afw")
    afw.image = types.ModuleType("lsst.afw.image")
    monkeypatch.setitem(sys.modules, "lsst.afw", afw)
    monkeypatch.setitem(sys.modules, "lsst.afw.image", afw.image)
    monkeypatch.setattr(lsst, "afw", afw, raising=False)
    mb = _multiband(xy0=(100, 200))
    exposures = {band: _Exposure(mb, i) for i, band in enumerate(mb.bands)}
    back = multiband_from_exposures(exposures, ["g", "r"])
    np.testing.assert_array_equal(back.image, mb.image)
    np.testing.assert_array_equal(back.mask, mb.mask)
    assert back.xy0 == (100, 200) and back.mask_planes == mb.mask_planes
    x, y = _corners(mb)
    np.testing.assert_allclose(
        back.wcs.pixel_to_world_values(x, y), mb.wcs.pixel_to_world_values(x, y), atol=1e-10
    )
    assert back.metadata["psf_fwhm_arcsec"]["g"] == pytest.approx(1.5 * 2.35482 * 0.2, rel=1e-4)
    with pytest.raises(MissingBandError):
        multiband_from_exposures(exposures, ["g", "u"])
    exposures["r"]._box = _Box(101, 200, mb.width, mb.height)
    with pytest.raises(ValueError, match="bounding box"):
        multiband_from_exposures(exposures, ["g", "r"])


def test_multiband_from_coadds_dispatches_on_storage_class() -> None:
    from lsst.meas.extensions.deepdisc.butler.conversions import multiband_from_coadds

    with pytest.raises(ValueError, match="unsupported coadd storage class 'ImageF'"):
        multiband_from_coadds({}, ["g"], "ImageF")
