# This file is part of meas_extensions_deepdisc.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""Conversions between Butler image types and the core's `MultibandImage`.

``lsst.images.MaskedImage`` (storage class ``MaskedImageV2``) is what afw-free environments read; the
legacy ``lsst.afw.image.ExposureF`` is converted where afw is installed (imported lazily).

Conventions:

* Pixel values are kept as stored; the image unit (normally nJy) is recorded in ``metadata["unit"]``, and
  images in another flux-density unit are converted to nJy.
* The core speaks the afw (legacy) mask-plane names (``SAT``, ``INTRP``, ``CR``, ``EDGE``, ...; see
  `..core.multiband.DEFAULT_MASK_PLANES`), while ``lsst.images`` names the same planes ``SATURATED``,
  ``INTERPOLATED``, ``COSMIC_RAY``, ``DETECTION_EDGE``.  Writing maps legacy names to ``lsst.images`` names
  with lsst.images' own coadd tables and keeps each plane's bit position; reading maps them back.
* The WCS is an `astropy.wcs.WCS` in *parent* pixel coordinates (``xy0`` is not subtracted), made from
  the sky projection's FITS form (or its FITS approximation).
"""

from __future__ import annotations

__all__ = [
    "LEGACY_TO_IMAGES_PLANES",
    "LazyBands",
    "masked_image_from_multiband",
    "multiband_from_coadds",
    "multiband_from_exposures",
    "multiband_from_masked_images",
    "sky_projection_from_wcs",
    "wcs_from_sky_projection",
]

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import astropy.units as u
import numpy as np
from astropy.wcs import WCS

from lsst.images import (
    Box,
    GeneralFrame,
    Image,
    Mask,
    MaskedImage,
    MaskPlane,
    MaskSchema,
    SkyProjection,
    get_legacy_non_cell_coadd_mask_planes,
    get_legacy_optional_mask_planes,
    get_legacy_visit_image_mask_planes,
)

from ..core.multiband import MissingBandError, MultibandImage, same_sky_grid, set_bit_numbers

_log = logging.getLogger(__name__)


def _legacy_plane_table() -> dict[str, MaskPlane]:
    table = dict(get_legacy_visit_image_mask_planes())
    table.update(get_legacy_non_cell_coadd_mask_planes())  # Coadd descriptions win where both exist.
    table.update(get_legacy_optional_mask_planes())
    return table


LEGACY_TO_IMAGES_PLANES: dict[str, MaskPlane] = _legacy_plane_table()
"""Legacy (afw) mask-plane name to the ``lsst.images`` plane it becomes."""

_IMAGES_TO_LEGACY: dict[str, str] = {plane.name: legacy for legacy, plane in LEGACY_TO_IMAGES_PLANES.items()}

_FLAT_FRAME = GeneralFrame(unit=u.pix)
_SIGMA_TO_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def wcs_from_sky_projection(projection: SkyProjection[Any] | None, bbox: Box) -> WCS | None:
    """Astropy WCS in parent pixel coordinates for a sky projection, or `None` without a FITS form.

    Parameters
    ----------
    projection : `lsst.images.SkyProjection` or `None`
        The projection.
    bbox : `lsst.images.Box`
        Box of the image it belongs to (sets ``NAXIS``; the WCS is shifted back to parent coordinates).
    """
    if projection is None:
        return None
    wcs = projection.as_fits_wcs(bbox, allow_approximation=True)
    if wcs is None:
        return None
    # as_fits_wcs() makes the first pixel of bbox (0, 0); the core wants parent coordinates.
    wcs = wcs.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix + np.array([bbox.x.start, bbox.y.start], dtype=float)
    wcs.wcs.set()
    return wcs


def sky_projection_from_wcs(wcs: WCS, pixel_frame: Any = None) -> SkyProjection[Any]:
    """`lsst.images.SkyProjection` for an astropy WCS in parent pixel coordinates.

    Parameters
    ----------
    wcs : `astropy.wcs.WCS`
        Celestial 2-d WCS (e.g. TAN).
    pixel_frame : `lsst.images` frame, optional
        Pixel frame (e.g. ``TractFrame``); a plain pixel frame by default.

    Raises
    ------
    ValueError
        If the WCS is not a 2-d celestial WCS.
    """
    if not wcs.has_celestial or wcs.naxis != 2:
        raise ValueError(f"need a 2-d celestial WCS, got axes {list(wcs.wcs.ctype)}")
    return SkyProjection.from_fits_wcs(wcs, pixel_frame if pixel_frame is not None else _FLAT_FRAME)


def _schema_for(mask_planes: Mapping[str, int]) -> tuple[MaskSchema, dict[str, str]]:
    """Schema whose overall plane index equals the legacy bit, and legacy -> lsst.images name map."""
    if not mask_planes:
        return MaskSchema([]), {}
    planes: list[MaskPlane | None] = [None] * (max(mask_planes.values()) + 1)
    renamed: dict[str, str] = {}
    for legacy_name, bit in mask_planes.items():
        if bit < 0:
            raise ValueError(f"mask plane {legacy_name!r} has a negative bit index {bit}")
        if planes[bit] is not None:
            raise ValueError(f"mask planes {planes[bit].name!r} and {legacy_name!r} share bit {bit}")  # type: ignore[union-attr]
        plane = LEGACY_TO_IMAGES_PLANES.get(
            legacy_name, MaskPlane(legacy_name, f"{legacy_name} (user plane)")
        )
        planes[bit] = plane
        renamed[legacy_name] = plane.name
    return MaskSchema(planes), renamed


def masked_image_from_multiband(
    mb: MultibandImage,
    band: str,
    *,
    unit: u.UnitBase | None = u.nJy,
    pixel_frame: Any = None,
) -> MaskedImage:
    """One band of a `MultibandImage` as an `lsst.images.MaskedImage`.

    Parameters
    ----------
    mb : `MultibandImage`
        Source image; ``xy0`` becomes the bbox origin, the WCS a sky projection.
    band : `str`
        Band to extract.
    unit : `astropy.units.UnitBase` or `None`
        Pixel unit (nJy for Rubin coadds); variance gets its square.
    pixel_frame : `lsst.images` frame, optional
        Pixel frame of the sky projection (e.g. ``TractFrame``).

    Returns
    -------
    masked_image : `lsst.images.MaskedImage`
        Image, variance (1 where ``mb`` has none) and mask with ``lsst.images`` plane names; metadata
        ``band`` and, when ``mb.metadata["psf_fwhm_arcsec"][band]`` exists, ``psf_fwhm_arcsec``.

    Raises
    ------
    MissingBandError
        If ``band`` is not in ``mb``.
    """
    index = mb.band_index(band)
    bbox = Box.from_shape(mb.shape, start=(mb.xy0[1], mb.xy0[0]))
    projection = None if mb.wcs is None else sky_projection_from_wcs(mb.wcs, pixel_frame)
    image = Image(
        np.array(mb.image[index], dtype=np.float32), bbox=bbox, unit=unit, sky_projection=projection
    )
    variance = None
    if mb.variance is not None:
        variance = Image(
            np.array(mb.variance[index], dtype=np.float32),
            bbox=bbox,
            unit=None if unit is None else unit**2,
            sky_projection=projection,
        )
    schema, renamed = _schema_for(mb.mask_planes)
    mask = Mask(0, schema=schema, bbox=bbox, sky_projection=projection)
    if mb.mask is not None:
        bits = np.asarray(mb.mask[index])
        if bits.dtype.kind == "i" and bits.dtype.itemsize <= 4:
            # afw masks are int32 and use bit 31; read them as unsigned so the sign does not spread.
            bits = bits.astype(np.int32).view(np.uint32)
        bits = bits.astype(np.int64)
        for legacy_name, bit in mb.mask_planes.items():
            mask.set(renamed[legacy_name], (bits & (1 << bit)) != 0)
        unknown = bits & ~np.int64(sum(1 << bit for bit in mb.mask_planes.values()))
        if np.any(unknown):
            raise ValueError(
                f"band {band!r}: mask bit(s) {set_bit_numbers(unknown)} are set but not named in mask_planes "
                f"{mb.mask_planes}"
            )
    metadata: dict[str, Any] = {"band": band}
    fwhm = mb.metadata.get("psf_fwhm_arcsec")
    if isinstance(fwhm, Mapping) and band in fwhm:
        metadata["psf_fwhm_arcsec"] = float(fwhm[band])
    return MaskedImage(image, mask=mask, variance=variance, metadata=metadata)


def _image_unit_scale(unit: u.UnitBase | None, band: str) -> float:
    """Factor that converts pixel values to nJy (1 if the unit is nJy, unknown or not a flux density)."""
    if unit is None or unit == u.nJy:
        return 1.0
    try:
        return float((1.0 * unit).to_value(u.nJy))
    except u.UnitConversionError:
        _log.warning("band %r has unit %s, not a flux density; values kept as they are", band, unit)
        return 1.0


class LazyBands(Mapping[str, Any]):
    """Images by band, each loaded when it is looked up and not kept: streaming input of the stacking.

    `multiband_from_masked_images` looks each band up once and releases it once copied, so a patch's bands
    given this way are held at most two at a time beside the cubes, the one being copied while the next is
    read (``read_coadds`` reads them from the Butler).

    Parameters
    ----------
    sources : mapping [`str`, `object`]
        What ``load`` takes, by band (a Butler reference, a file path).
    load : callable
        Loads one band's image from its source.
    """

    def __init__(self, sources: Mapping[str, Any], load: Callable[[Any], Any]) -> None:
        self._sources = dict(sources)
        self._load = load

    def __getitem__(self, band: str) -> Any:
        return self._load(self._sources[band])

    def __contains__(self, band: object) -> bool:  # Mapping's default would load the band.
        return band in self._sources

    def __iter__(self) -> Iterator[str]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def _copy_band(
    masked: MaskedImage,
    scale: float,
    planes: list[tuple[str, int]],
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
) -> None:
    """Copy one band into its planes of the cubes: pixels times ``scale`` (variance ``scale**2``), masks.

    ``planes`` are the band's mask planes as ``(name, legacy bit)``; ``mask`` starts at zero.
    """
    # Without whole-band temporaries (the same float32 products as ``array * scale``).
    np.multiply(masked.image.array, scale, out=image)
    np.multiply(masked.variance.array, scale**2, out=variance)
    dtype = mask.dtype.type
    for name, bit in planes:
        np.bitwise_or(mask, dtype(1) << dtype(bit), out=mask, where=masked.mask.get(name))


def multiband_from_masked_images(images: Mapping[str, MaskedImage], bands: Sequence[str]) -> MultibandImage:
    """Stack per-band `lsst.images.MaskedImage` objects into a `MultibandImage`.

    Parameters
    ----------
    images : mapping [`str`, `lsst.images.MaskedImage`]
        Images by band (extra bands are ignored).  Each wanted band is looked up once, in ``bands`` order,
        and released once copied.  A band is copied into the cubes by a helper thread while the next band
        is looked up, so that, with `LazyBands`, which reads a band when it is looked up (a Butler read, in
        the looking-up thread), reading and copying overlap; at most two bands are in memory beside the
        cubes, and one copy at a time is pending.
    bands : sequence of `str`
        Bands to stack, in order.

    Returns
    -------
    mb : `MultibandImage`
        ``float32`` image and variance cubes, an integer mask cube whose planes use legacy names (bit
        positions taken from the first band's schema, new names appended), the WCS of the first band in
        parent coordinates, ``xy0`` from the bbox, and metadata ``unit`` and ``psf_fwhm_arcsec`` (if the
        images carry it).

    Raises
    ------
    MissingBandError
        If a requested band is absent.
    ValueError
        If no band is requested, the bboxes differ or the images are not on the same sky grid.
    """
    bands = tuple(bands)
    if not bands:
        raise ValueError("no bands requested")
    missing = [b for b in bands if b not in images]
    if missing:
        raise MissingBandError(f"band(s) {missing} required but not available; got bands {sorted(images)}")
    # One pass: ``images`` may load each band when it is looked up (`LazyBands`); each band is looked up
    # once, here, and copied into the cubes by the helper thread while the next one is looked up.
    mask_planes: dict[str, int] = {}
    units = {}
    fwhm = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-bands") as copier:
        pending: Future[None] | None = None
        for index, band in enumerate(bands):
            masked = images[band]
            if index == 0:
                bbox = masked.bbox
                x0, y0 = bbox.x.start, bbox.y.start
                shape = (bbox.y.size, bbox.x.size)
                wcs = wcs_from_sky_projection(masked.sky_projection, bbox)
                if masked.sky_projection is not None and wcs is None:
                    _log.warning(
                        "the sky projection of band %r has no FITS form; the image will have no WCS", band
                    )
                image = np.empty((len(bands), *shape), dtype=np.float32)
                variance = np.empty_like(image)
                mask = np.zeros((len(bands), *shape), dtype=np.int32)
            else:
                if masked.bbox != bbox:
                    raise ValueError(
                        f"bands must share one bounding box: {bands[0]} has {bbox}, but {band} has "
                        f"{masked.bbox}"
                    )
                other = wcs_from_sky_projection(masked.sky_projection, bbox)
                if not same_sky_grid(wcs, other, shape, (x0, y0)):
                    raise ValueError(f"band {band!r} is not on the same sky grid as band {bands[0]!r}")
            # Legacy plane name -> bit: the first band's schema positions, then new names in order of
            # appearance; ``planes``: this band's planes as (name, legacy bit), for its copy.
            planes = []
            for position, plane in enumerate(masked.mask.schema):
                if plane is None:
                    continue
                legacy_name = _IMAGES_TO_LEGACY.get(plane.name, plane.name)
                if legacy_name not in mask_planes:
                    taken = set(mask_planes.values())
                    bit = position if position not in taken else max(taken | {-1}) + 1
                    while bit in taken:
                        bit += 1
                    mask_planes[legacy_name] = bit
                planes.append((plane.name, mask_planes[legacy_name]))
            if mask_planes and max(mask_planes.values()) > 62:
                raise ValueError(f"{len(mask_planes)} mask planes do not fit a 64-bit mask")
            # The previous band's copy first: one pending at a time, and the mask cube is final under it.
            if pending is not None:
                pending.result()
            if mask.dtype == np.int32 and mask_planes and max(mask_planes.values()) >= 31:
                mask = mask.astype(np.int64)  # A band brought a plane past bit 30 (rare).
            scale = _image_unit_scale(masked.unit, band)
            native = masked.unit and str(masked.unit)
            units[band] = "nJy" if scale != 1.0 or masked.unit == u.nJy else native
            band_fwhm = masked.metadata.get("psf_fwhm_arcsec") if masked.metadata is not None else None
            if isinstance(band_fwhm, (int, float)):
                fwhm[band] = float(band_fwhm)
            pending = copier.submit(
                _copy_band, masked, scale, planes, image[index], variance[index], mask[index]
            )
            del masked
        if pending is not None:
            pending.result()
    metadata: dict[str, Any] = {"unit": units[bands[0]] if len(set(units.values())) == 1 else units}
    if fwhm:
        metadata["psf_fwhm_arcsec"] = fwhm
    return MultibandImage(
        bands=bands,
        image=image,
        variance=variance,
        mask=mask,
        mask_planes=mask_planes,
        wcs=wcs,
        xy0=(x0, y0),
        metadata=metadata,
    )


def multiband_from_exposures(exposures: Mapping[str, Any], bands: Sequence[str]) -> MultibandImage:
    """Stack per-band ``lsst.afw.image.ExposureF`` coadds into a `MultibandImage` (needs lsst.afw).

    Parameters
    ----------
    exposures : mapping [`str`, ``lsst.afw.image.Exposure``]
        Exposures by band (extra bands are ignored).
    bands : sequence of `str`
        Bands to stack, in order.

    Returns
    -------
    mb : `MultibandImage`
        Image/variance/mask cubes, afw's mask-plane dictionary, the ``SkyWcs`` as an astropy WCS in parent
        coordinates, ``xy0`` from the bbox and, where the exposures have a PSF, ``psf_fwhm_arcsec``.

    Raises
    ------
    ImportError
        If lsst.afw is not installed.
    MissingBandError
        If a requested band is absent.
    ValueError
        If bboxes or mask-plane dictionaries differ between bands.
    """
    try:
        import lsst.afw.image  # noqa: F401  (only checks that afw is there)
    except ImportError as err:
        raise ImportError(
            "multiband_from_exposures needs lsst.afw (Rubin Science Pipelines), which is not installed; "
            "read the coadds as lsst.images.MaskedImage (storage class MaskedImageV2) and use "
            "multiband_from_masked_images instead"
        ) from err
    bands = tuple(bands)
    if not bands:
        raise ValueError("no bands requested")
    missing = [b for b in bands if b not in exposures]
    if missing:
        raise MissingBandError(f"band(s) {missing} required but not available; got bands {sorted(exposures)}")
    first = exposures[bands[0]]
    bbox = first.getBBox()
    x0, y0 = int(bbox.getMinX()), int(bbox.getMinY())
    shape = (int(bbox.getHeight()), int(bbox.getWidth()))
    planes = dict(first.mask.getMaskPlaneDict())
    for band in bands[1:]:
        other = exposures[band].getBBox()
        if (int(other.getMinX()), int(other.getMinY()), int(other.getHeight()), int(other.getWidth())) != (
            x0,
            y0,
            *shape,
        ):
            raise ValueError(f"bands must share one bounding box: {bands[0]} has {bbox}, {band} has {other}")
        if dict(exposures[band].mask.getMaskPlaneDict()) != planes:
            raise ValueError(f"band {band!r} has a different mask-plane dictionary than {bands[0]!r}")
    wcs = None
    sky_wcs = first.getWcs()
    if sky_wcs is not None:
        # afw's FITS metadata puts CRPIX in parent coordinates (the exposure's xy0 is not subtracted).
        wcs = WCS(dict(sky_wcs.getFitsMetadata(True).toDict()))
    fwhm = {}
    for band in bands:
        exposure = exposures[band]
        psf = exposure.getPsf()
        band_wcs = exposure.getWcs()
        if psf is None or band_wcs is None:
            continue
        position = psf.getAveragePosition()
        sigma_pixels = psf.computeShape(position).getDeterminantRadius()
        scale_arcsec = band_wcs.getPixelScale(position).asArcseconds()
        fwhm[band] = float(sigma_pixels * _SIGMA_TO_FWHM * scale_arcsec)
    metadata: dict[str, Any] = {"unit": "nJy"}
    if fwhm:
        metadata["psf_fwhm_arcsec"] = fwhm
    return MultibandImage(
        bands=bands,
        image=np.stack([np.asarray(exposures[b].image.array, dtype=np.float32) for b in bands]),
        variance=np.stack([np.asarray(exposures[b].variance.array, dtype=np.float32) for b in bands]),
        mask=np.stack([np.asarray(exposures[b].mask.array, dtype=np.int32) for b in bands]),
        mask_planes={str(k): int(v) for k, v in planes.items()},
        wcs=wcs,
        xy0=(x0, y0),
        metadata=metadata,
    )


def multiband_from_coadds(
    coadds: Mapping[str, Any], bands: Sequence[str], storage_class: str = "MaskedImageV2"
) -> MultibandImage:
    """Per-band coadds as the tasks read them (their ``coaddStorageClass``) to a `MultibandImage`.

    Parameters
    ----------
    coadds : `~collections.abc.Mapping` [`str`, `object`]
        Band to ``lsst.images.MaskedImage`` (``MaskedImageV2``) or ``lsst.afw.image.ExposureF``.
    bands : `~collections.abc.Sequence` [`str`]
        Bands to stack, in order.
    storage_class : `str`
        ``"MaskedImageV2"`` or ``"ExposureF"`` (needs lsst.afw).
    """
    if storage_class == "ExposureF":
        return multiband_from_exposures(coadds, bands)
    if storage_class == "MaskedImageV2":
        return multiband_from_masked_images(coadds, bands)
    raise ValueError(f"unsupported coadd storage class {storage_class!r}; use MaskedImageV2 or ExposureF")
