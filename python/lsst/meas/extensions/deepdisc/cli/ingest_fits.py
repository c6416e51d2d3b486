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

"""``deepdisc-ingest-fits``: put your own FITS coadds into a Butler repository, ready for ``pipetask run``.

.. code-block:: bash

   deepdisc-ingest-fits REPO --band g=g.fits --band r=r.fits --band z=z.fits

creates the repository if there is none, registers what the coadds need (band records; a skymap made from
the image's own WCS with one tract, the image, cut into patches of at most ``--patch-size`` pixels), puts
one ``deep_coadd`` per band and patch into the RUN ``ingest/deep_coadd``, ingests the shipped model package
into ``pretrained_models/<name>`` and chains both into the collection ``ingest/defaults``.  It ends by
printing the ``pipetask run`` command to run next.

One file per band.  Each file is either

* a plain image: the first HDU with 2-d data is the image, optional extensions named ``MASK`` and
  ``VARIANCE`` hold the mask and the variance; or
* the Rubin ``ExposureF`` layout: extensions ``IMAGE``, ``MASK`` and ``VARIANCE`` (tile-compressed or not),
  mask planes named by ``MP_<PLANE>`` = bit keywords.

The image HDU must have a celestial FITS WCS (e.g. TAN), the same pixel grid in every band.  The array's
parent-coordinate origin ``xy0`` is read from ``LTV1``/``LTV2`` (afw) or the ``LINEAR`` "A" WCS, else taken
from ``--xy0`` (default ``0 0``).

Pixel values are converted to nJy.  The unit comes from ``--unit`` or ``BUNIT`` (a flux density such as
``nJy``, ``uJy`` or ``nanomaggy``); counts (``ADU``, ``counts``, ``electron``, or no ``BUNIT``) need an AB
zeropoint, from ``--zeropoint`` or the header (``MAGZERO``, ``MAGZPT``, ``PHOTZP``, or ``FLUXMAG0``, the
counts of a magnitude-0 source).  A file that says neither is refused: nothing is guessed.

A sky background that was not subtracted (sigma-clipped median above half the sky noise) is subtracted: a
128-pixel mesh of clipped medians, interpolated (``--no-subtract-background`` keeps it,
``--subtract-background`` forces it).  Without a variance plane the variance is the sky scatter plus, with
``--gain`` (electrons per pixel unit), the sources' Poisson term.  Without a mask plane, an empty mask with
afw's default planes is used.

``--skymap NAME --tract T --patch P`` files the coadd under a patch of a skymap already in the repository
(e.g. ``deepdisc-sim-repo REPO --records-only``, or ``butler register-skymap``) instead; an image that is
not in that patch is refused.

Re-running the same command does nothing.  A different image for a patch that already has a coadd needs
``--replace``.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_COLLECTION",
    "DEFAULT_RUN",
    "FluxCalibration",
    "IngestError",
    "IngestResult",
    "flux_calibration",
    "ingest_fits",
    "main",
    "read_band_fits",
]

import argparse
import getpass
import logging
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .._product import SHIPPED_MODEL_NAME, pipeline_path, shipped_model_path
from ..core.background import DEFAULT_MESH_SIZE, measure_background, noise_variance
from ..core.multiband import DEFAULT_MASK_PLANES, MultibandImage, same_sky_grid, set_bit_numbers
from ..core.patch_grid import DEFAULT_PATCH_BORDER, DEFAULT_PATCH_SIZE, PatchGrid

_log = logging.getLogger(__name__)

DEFAULT_RUN = "ingest/deep_coadd"
"""RUN collection the coadds go into."""

DEFAULT_COLLECTION = "ingest/defaults"
"""CHAINED collection of the coadds and the model: the ``-i`` of ``pipetask run``."""

ZEROPOINT_KEYWORDS = ("MAGZERO", "MAGZPT", "PHOTZP")
"""Header keywords holding an AB zeropoint (magnitude of one count), in the order they are looked for."""

COUNT_UNITS = frozenset({"adu", "adus", "count", "counts", "ct", "cts", "dn", "electron", "electrons", "e-"})
"""``BUNIT`` values (lower case, a trailing ``/s`` removed) that mean counts: they need a zeropoint."""

_BLOCKING_PLANES = ("NO_DATA", "BAD", "SAT")


class IngestError(RuntimeError):
    """The inputs cannot be ingested; the message says why and how to fix it."""


def _find_hdu(hdus: fits.HDUList, name: str) -> Any | None:
    for hdu in hdus:
        if hdu.name.upper() == name:
            return hdu
    return None


def _first_image_hdu(hdus: fits.HDUList) -> Any | None:
    for hdu in hdus:
        if hdu.is_image and hdu.data is not None and np.ndim(hdu.data) == 2:
            return hdu
    return None


def _read_xy0(header: fits.Header, default: tuple[int, int]) -> tuple[int, int]:
    """Parent origin of the array: afw's ``LTV`` cards, then a ``LINEAR`` "A" WCS, then ``default``."""
    if "LTV1" in header and "LTV2" in header:
        return -round(float(header["LTV1"])), -round(float(header["LTV2"]))
    if header.get("CTYPE1A") == "LINEAR" and "CRVAL1A" in header and "CRVAL2A" in header:
        x0 = float(header["CRVAL1A"]) - (float(header.get("CRPIX1A", 1.0)) - 1.0)
        y0 = float(header["CRVAL2A"]) - (float(header.get("CRPIX2A", 1.0)) - 1.0)
        return round(x0), round(y0)
    return default


def _read_wcs(header: fits.Header, path: Path, xy0: tuple[int, int]) -> WCS:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as err:
            raise IngestError(f"{path}: the FITS WCS of the image cannot be read ({err})") from None
    if not wcs.has_celestial:
        raise IngestError(
            f"{path}: the image has no celestial WCS (CTYPE = {list(wcs.wcs.ctype)}); "
            "a sky projection such as RA---TAN/DEC--TAN is required"
        )
    # The header maps array pixels; the core wants parent pixels, so shift the reference pixel by xy0.
    wcs.wcs.crpix = wcs.wcs.crpix + np.array(xy0, dtype=float)
    wcs.wcs.set()
    return wcs


def _mask_planes(header: fits.Header, path: Path) -> dict[str, int]:
    planes = {key[3:]: int(value) for key, value in header.items() if key.startswith("MP_")}
    if not planes:
        _log.warning("%s: the MASK HDU has no MP_<PLANE> keywords; assuming afw's default planes", path)
        return dict(DEFAULT_MASK_PLANES)
    bits = list(planes.values())
    if len(set(bits)) != len(bits):
        raise IngestError(f"{path}: mask planes share bits: {planes}")
    return planes


@dataclass(frozen=True)
class FluxCalibration:
    """How a file's pixel values become nJy.

    Attributes
    ----------
    scale : `float`
        nJy per pixel unit of the file.
    source_unit : `str`
        The file's pixel unit (``"counts"`` when only a zeropoint was given).
    zeropoint : `float` or `None`
        AB zeropoint used for counts (magnitude of one count).
    origin : `str`
        Where the calibration came from (``"--unit"``, ``"BUNIT"``, ``"--zeropoint"``, ``"MAGZERO"``, ...).
    """

    scale: float
    source_unit: str
    zeropoint: float | None
    origin: str


def _is_counts(name: str) -> bool:
    text = name.strip().lower().replace(" ", "")
    for suffix in ("/s", "/sec", "/second", "s-1", "s**-1", "s^-1"):
        text = text.removesuffix(suffix)
    return text in COUNT_UNITS


def _flux_density_scale(name: str) -> float | None:
    """The nJy per unit of a flux-density unit name (maggies are AB: 1 nanomaggy is 3631 nJy), else `None`."""
    text = name.strip()
    text = {"nanomaggies": "nanomaggy", "maggies": "maggy"}.get(text.lower(), text)
    try:
        unit = u.Unit(text)
        if "mgy" in str(unit):
            return float((1.0 * unit).to_value(u.mgy) * 3631e9)
        return float((1.0 * unit).to_value(u.nJy))
    except (ValueError, TypeError, u.UnitConversionError):
        return None


def _zeropoint_scale(zeropoint: float) -> float:
    """The nJy of one count for an AB zeropoint."""
    return float((zeropoint * u.ABmag).to_value(u.nJy))


def _header_zeropoint(header: fits.Header, path: Path) -> tuple[float, str] | None:
    """The AB zeropoint recorded in a header and its keyword, `None` without one."""
    for key in ZEROPOINT_KEYWORDS:
        if key in header:
            try:
                value = float(header[key])
            except (TypeError, ValueError):
                raise IngestError(f"{path}: header keyword {key} = {header[key]!r} is not a number") from None
            if not np.isfinite(value):
                raise IngestError(f"{path}: header keyword {key} = {header[key]!r} is not finite")
            return value, key
    if "FLUXMAG0" in header:
        try:
            value = float(header["FLUXMAG0"])
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise IngestError(f"{path}: FLUXMAG0 = {header['FLUXMAG0']!r} must be a positive number")
        return 2.5 * float(np.log10(value)), "FLUXMAG0"
    return None


_HOW_TO_GIVE_A_UNIT = (
    "pass --unit with a flux density (nJy, uJy, Jy, ...) or, for counts/ADU, --zeropoint ZP (the AB "
    "magnitude of one count); or write BUNIT, or MAGZERO, into the header"
)


def flux_calibration(
    header: fits.Header, path: str | Path, unit: str | None = None, zeropoint: float | None = None
) -> FluxCalibration:
    """Work out how a file's pixel values become nJy; refuse a file that does not say.

    The command line wins over the header: ``--zeropoint`` (the pixels are counts), else ``--unit`` or
    ``BUNIT``.  A flux-density unit is converted; counts (``ADU``, ``counts``, ``electron``...) or no unit
    at all need a zeropoint, from the command line or the header (``MAGZERO``, ``MAGZPT``, ``PHOTZP``,
    ``FLUXMAG0``).

    Parameters
    ----------
    header : `astropy.io.fits.Header`
        The image HDU's header.
    path : `str` or `pathlib.Path`
        The file (for messages).
    unit : `str`, optional
        ``--unit``.
    zeropoint : `float`, optional
        ``--zeropoint`` (AB magnitude of one count).

    Returns
    -------
    calibration : `FluxCalibration`

    Raises
    ------
    IngestError
        No unit and no zeropoint, a unit that is neither a flux density nor counts, counts without a
        zeropoint, a flux-density ``--unit`` together with ``--zeropoint``, a malformed header zeropoint.
    """
    path = Path(path)
    header_unit = str(header.get("BUNIT", "")).strip() or None
    if zeropoint is not None:
        if not np.isfinite(zeropoint):
            raise IngestError(f"--zeropoint must be a finite number, got {zeropoint}")
        if unit is not None and not _is_counts(unit):
            raise IngestError(
                f"--unit {unit!r} and --zeropoint {zeropoint} both calibrate the pixels; give --unit for "
                "images in a flux density, --zeropoint for images in counts"
            )
        if header_unit is not None and not _is_counts(header_unit):
            _log.warning(
                "%s: BUNIT = %r is ignored: --zeropoint %.4g says the pixels are counts",
                path,
                header_unit,
                zeropoint,
            )
        return FluxCalibration(_zeropoint_scale(zeropoint), unit or "counts", float(zeropoint), "--zeropoint")
    name, origin = (unit, "--unit") if unit is not None else (header_unit, "BUNIT")
    if name is not None and not _is_counts(name):
        scale = _flux_density_scale(name)
        if scale is None:
            raise IngestError(
                f"{path}: pixel unit {name!r} ({origin}) is neither a flux density convertible to nJy nor "
                f"counts; {_HOW_TO_GIVE_A_UNIT}"
            )
        return FluxCalibration(scale, name, None, origin)
    found = _header_zeropoint(header, path)
    if found is not None:
        value, key = found
        return FluxCalibration(_zeropoint_scale(value), name or "counts", value, key)
    if name is not None:
        raise IngestError(
            f"{path}: the pixels are in {name!r} ({origin}), counts, and no zeropoint says what a count is "
            f"worth (no {', '.join(ZEROPOINT_KEYWORDS)} or FLUXMAG0 in the header); pass --zeropoint ZP (the "
            "AB magnitude of one count)"
        )
    raise IngestError(
        f"{path}: the pixel unit is unknown: the header has no BUNIT and no zeropoint "
        f"({', '.join(ZEROPOINT_KEYWORDS)}, FLUXMAG0), and nothing is assumed; {_HOW_TO_GIVE_A_UNIT}"
    )


def _check_mask_bits(
    mask: np.ndarray, planes: Mapping[str, int], path: Path, band: str, unknown_mask_bits: str
) -> np.ndarray:
    """Unnamed mask bits: an error naming them and the fix, or (``"drop"``) cleared with a warning."""
    named = sum(1 << bit for bit in planes.values())
    unknown = mask & ~np.int64(named)
    if not np.any(unknown):
        return mask
    numbers = set_bit_numbers(unknown)
    if unknown_mask_bits == "drop":
        _log.warning(
            "%s (band %r): dropping mask bit(s) %s that no MP_<PLANE> keyword names (%d pixels)",
            path,
            band,
            numbers,
            int(np.count_nonzero(unknown)),
        )
        return mask & np.int64(named)
    raise IngestError(
        f"{path} (band {band!r}): mask bit(s) {numbers} are set in {int(np.count_nonzero(unknown))} "
        "pixels but not named; add an MP_<PLANE> = <bit> keyword to the MASK header for each, or pass "
        "--unknown-mask-bits drop to clear them"
    )


def _report_variance(variance: np.ndarray, image: np.ndarray, path: Path, band: str) -> dict[str, int]:
    """Count variance pixels that cannot weight an error (where the image has data) and warn about them."""
    has_data = np.isfinite(image)
    counts = {
        "zero": int(np.count_nonzero(has_data & (variance == 0))),
        "negative": int(np.count_nonzero(has_data & (variance < 0))),
        "non_finite": int(np.count_nonzero(has_data & ~np.isfinite(variance))),
    }
    if any(counts.values()):
        _log.warning(
            "%s (band %r): the variance plane has %d zero, %d negative and %d non-finite pixels where the "
            "image has data; detection leaves them out of the flux errors and flags the sources "
            "(flag_bad_variance)",
            path,
            band,
            counts["zero"],
            counts["negative"],
            counts["non_finite"],
        )
    return counts


def _blocking_bits(planes: Mapping[str, int]) -> int:
    return sum(1 << planes[name] for name in _BLOCKING_PLANES if name in planes)


def _sky_model(
    image: np.ndarray,
    valid: np.ndarray,
    path: Path,
    band: str,
    unit: str,
    subtract_background: bool | None,
    mesh_size: int,
) -> tuple[np.ndarray | None, Any]:
    """Measure the sky; the background to subtract (`None`: none) and the measurement."""
    try:
        estimate = measure_background(image, valid, mesh_size)
    except ValueError as err:
        raise IngestError(f"{path} (band {band!r}): {err}") from None
    low, high = estimate.range
    described = (
        f"sigma-clipped median {estimate.level:.4g} {unit}, {estimate.significance:.1f} times the sky noise "
        f"{estimate.sigma:.4g} {unit}"
    )
    if subtract_background is None:
        if not estimate.significant:
            _log.debug("%s (band %r): sky already subtracted (%s)", path, band, described)
            return None, estimate
        _log.info(
            "%s (band %r): the sky background was not subtracted (%s); subtracting a %d-pixel mesh "
            "background (%.4g to %.4g %s); --no-subtract-background keeps it",
            path,
            band,
            described,
            mesh_size,
            low,
            high,
            unit,
        )
        return estimate.background, estimate
    if subtract_background:
        _log.info(
            "%s (band %r): subtracting a %d-pixel mesh background (%.4g to %.4g %s) as asked (%s)",
            path,
            band,
            mesh_size,
            low,
            high,
            unit,
            described,
        )
        return estimate.background, estimate
    if estimate.significant:
        _log.warning(
            "%s (band %r): the sky background looks unsubtracted (%s) but is kept (--no-subtract-background)",
            path,
            band,
            described,
        )
    return None, estimate


def read_band_fits(
    path: str | Path,
    band: str,
    unit: str | None = None,
    xy0: tuple[int, int] = (0, 0),
    unknown_mask_bits: str = "error",
    *,
    zeropoint: float | None = None,
    gain: float | None = None,
    subtract_background: bool | None = None,
    background_mesh: int = DEFAULT_MESH_SIZE,
) -> MultibandImage:
    """Read one band's FITS file (plain image or Rubin ``ExposureF`` layout) as a one-band nJy image.

    Parameters
    ----------
    path : `str` or `pathlib.Path`
        The file.
    band : `str`
        Band name to give the image.
    unit : `str`, optional
        Pixel unit, overriding ``BUNIT`` (see `flux_calibration`).
    xy0 : `tuple` [`int`, `int`]
        Parent origin used when the header records none.
    unknown_mask_bits : `str`
        ``"error"``: mask bits that no ``MP_<PLANE>`` keyword names are an error; ``"drop"``: they are
        cleared, with a warning.
    zeropoint : `float`, optional
        AB zeropoint for images in counts, overriding the header's.
    gain : `float`, optional
        Electrons per pixel unit of the file: adds the sources' Poisson variance when the variance is
        estimated (ignored when the file has a variance plane).
    subtract_background : `bool`, optional
        `None`: subtract a mesh background only if the sky was evidently not subtracted; `True`: always;
        `False`: never.
    background_mesh : `int`
        Mesh cell size of the background (pixels).

    Returns
    -------
    image : `MultibandImage`
        One band, nJy, with variance, mask, parent-coordinate WCS and ``xy0``; ``metadata`` records the
        source file and unit, the zeropoint, the flux scale, the background and how the variance was made.

    Raises
    ------
    IngestError
        Unreadable file, no 2-d image, no celestial WCS, planes of different shapes, no or bad unit, unnamed
        mask bits, no pixel with data.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"band {band!r}: file {path} does not exist")
    if gain is not None and not gain > 0:
        raise IngestError(f"--gain must be positive (electrons per pixel unit), got {gain}")
    try:
        hdus = fits.open(path)
    except OSError as err:
        raise IngestError(f"{path}: not a readable FITS file ({err})") from None
    with hdus:
        image_hdu = _find_hdu(hdus, "IMAGE")
        if image_hdu is None:
            image_hdu = _first_image_hdu(hdus)
        if image_hdu is None or image_hdu.data is None or np.ndim(image_hdu.data) != 2:
            raise IngestError(
                f"{path}: no 2-d image HDU (expected an IMAGE extension or a 2-d primary image)"
            )
        header = image_hdu.header
        image = np.asarray(image_hdu.data, dtype=np.float64)
        origin = _read_xy0(header, xy0)
        wcs = _read_wcs(header, path, origin)
        calibration = flux_calibration(header, path, unit, zeropoint)
        mask_hdu = _find_hdu(hdus, "MASK")
        variance_hdu = _find_hdu(hdus, "VARIANCE")
        for name, hdu in (("MASK", mask_hdu), ("VARIANCE", variance_hdu)):
            if hdu is not None and np.shape(hdu.data) != image.shape:
                raise IngestError(
                    f"{path}: the {name} HDU has shape {np.shape(hdu.data)}, the image {image.shape}"
                )
        if mask_hdu is not None:
            mask = np.asarray(mask_hdu.data).astype(np.int64)
            planes = _mask_planes(mask_hdu.header, path)
            mask = _check_mask_bits(mask, planes, path, band, unknown_mask_bits)
        else:
            mask = np.zeros(image.shape, dtype=np.int64)
            planes = dict(DEFAULT_MASK_PLANES)
        variance = None if variance_hdu is None else np.asarray(variance_hdu.data, dtype=np.float64)
    valid = np.isfinite(image) & ((mask & _blocking_bits(planes)) == 0)
    if not valid.any():
        raise IngestError(f"{path}: the image has no finite pixel outside the NO_DATA, BAD and SAT planes")
    background, estimate = _sky_model(
        image, valid, path, band, calibration.source_unit, subtract_background, background_mesh
    )
    sky = estimate.background
    if background is not None:
        image = image - background
        sky = np.zeros_like(sky)
    if variance is not None:
        if gain is not None:
            _log.info("%s: the file has a VARIANCE HDU; --gain is not used", path)
        variance = variance * calibration.scale**2
        variance_counts = _report_variance(variance, image, path, band)
        variance_origin = "VARIANCE HDU"
    else:
        if not (np.isfinite(estimate.sigma) and estimate.sigma > 0):
            raise IngestError(
                f"{path} (band {band!r}): the sky noise cannot be measured (robust sigma {estimate.sigma}); "
                "add a VARIANCE extension"
            )
        variance = noise_variance(image, estimate.sigma, gain, sky) * calibration.scale**2
        _log.warning(
            "%s (band %r): no VARIANCE HDU; variance estimated from the image: sky noise (%.4g nJy)^2%s",
            path,
            band,
            estimate.sigma * calibration.scale,
            f" plus the sources' Poisson term (gain {gain:g} e-/{calibration.source_unit})"
            if gain is not None
            else " everywhere (pass --gain to add the sources' Poisson term)",
        )
        variance_counts = {"estimated": int(variance.size)}
        variance_origin = "sky noise" + ("" if gain is None else f" + Poisson (gain {gain:g})")
    return MultibandImage(
        bands=(band,),
        image=(image * calibration.scale)[None],
        variance=variance[None],
        mask=mask.astype(np.int64 if max(planes.values(), default=0) >= 31 else np.int32)[None],
        mask_planes=planes,
        wcs=wcs,
        xy0=origin,
        metadata={
            "unit": "nJy",
            "source_unit": calibration.source_unit,
            "source_file": str(path),
            "zeropoint": calibration.zeropoint,
            "calibration": calibration.origin,
            "flux_scale_njy": calibration.scale,
            "background_subtracted": background is not None,
            "background_level": estimate.level * calibration.scale,
            "sky_sigma": estimate.sigma * calibration.scale,
            "variance": variance_origin,
            "variance_counts": variance_counts,
        },
    )


def _check_records(butler: Any, skymap: str | None, tract: int, patch: str | int) -> tuple[dict, Any]:
    """Resolve and check the data ID of an existing patch; missing records give an `IngestError`."""
    skymaps = [record.name for record in butler.query_dimension_records("skymap", explain=False)]
    how = (
        "leave out --tract and --patch to make a skymap from the image's own WCS, or create the skymap "
        "first: `deepdisc-sim-repo REPO --records-only` for the simulated one, `butler register-skymap` for "
        "a real one"
    )
    if skymap is None:
        if len(skymaps) != 1:
            raise IngestError(
                f"pass --skymap: the repository has {len(skymaps)} skymaps {skymaps}"
                + ("" if skymaps else f"; {how}")
            )
        skymap = skymaps[0]
    elif skymap not in skymaps:
        raise IngestError(f"skymap {skymap!r} is not registered (known: {skymaps}); {how}")
    if isinstance(patch, str) and "," in patch:
        (record,) = butler.query_dimension_records("skymap", data_id={"skymap": skymap})
        patch_x, patch_y = (int(v) for v in patch.split(","))
        if not (0 <= patch_x < record.patch_nx_max and 0 <= patch_y < record.patch_ny_max):
            raise IngestError(
                f"patch ({patch_x}, {patch_y}) is outside the {record.patch_nx_max}x{record.patch_ny_max} "
                f"patch grid of skymap {skymap!r}"
            )
        patch_id = patch_y * record.patch_nx_max + patch_x
    else:
        patch_id = int(patch)
    data_id = {"skymap": skymap, "tract": int(tract), "patch": patch_id}
    try:
        found = butler.query_dimension_records("patch", data_id=data_id, explain=False)
    except Exception:  # DataIdValueError for an unknown tract/patch value.
        found = []
    if not found:
        raise IngestError(f"tract {tract} patch {patch_id} of skymap {skymap!r} is not registered; {how}")
    return data_id, found[0].region


@dataclass
class IngestResult:
    """What `ingest_fits` did, and what to run next.

    Attributes
    ----------
    refs : `list` [`lsst.daf.butler.DatasetRef`]
        Every coadd of the input, new or already there, in (patch, band) order.
    written, unchanged, replaced : `int`
        Coadds put, found with the same pixels (nothing done), replaced (``replace=True``).
    skymap : `str`
        Skymap of the patches.
    tract : `int`
        Their tract.
    patches : `list` [`int`]
        Their patch ids.
    bands : `list` [`str`]
        The bands.
    run : `str`
        RUN collection of the coadds.
    collection : `str` or `None`
        CHAINED collection of the coadds and the model.
    model_collection : `str` or `None`
        Collection of the model package (`None`: no model ingested).
    model_status : `str` or `None`
        ``"ingested"``, ``"unchanged"`` or ``"replaced"``.
    new_records : `list` [`str`]
        The dimension records that were created (e.g. ``"skymap deepdisc_fits_..."``, ``"band z"``).
    dataset_type : `str`
        Dataset type of the coadds.
    explicit_patch : `bool`
        Whether the coadds were filed under a named existing patch (the data query then names it).
    """

    refs: list[Any] = field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    replaced: int = 0
    skymap: str = ""
    tract: int = 0
    patches: list[int] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    run: str = DEFAULT_RUN
    collection: str | None = None
    model_collection: str | None = None
    model_status: str | None = None
    new_records: list[str] = field(default_factory=list)
    dataset_type: str = "deep_coadd"
    explicit_patch: bool = False

    @property
    def data_query(self) -> str:
        """The ``-d`` data query selecting these patches."""
        query = f"skymap='{self.skymap}' AND tract={self.tract}"
        if self.explicit_patch:
            query += f" AND patch={self.patches[0]}"
        return query

    @property
    def inputs(self) -> str:
        """The ``-i`` input collections."""
        if self.collection:
            return self.collection
        return ",".join(c for c in (self.run, self.model_collection) if c)

    def pipetask_command(self, repo: str, output: str | None = None) -> str:
        """The ``pipetask run`` command that detects on these coadds (shell-quoted)."""
        if output is None:
            output = f"u/{_user_name()}/deepdisc"
        pipeline = str(pipeline_path("DeepDisc"))
        args = ["pipetask", "run", "-b", repo, "-i", self.inputs, "-o", output, "-p", pipeline]
        command = shlex.join(args) + f' -d "{self.data_query}" --register-dataset-types'
        if self.dataset_type != "deep_coadd":
            command += " " + shlex.join(["-c", f"detect:connections.coadds={self.dataset_type}"])
        return command


def _user_name() -> str:
    try:
        name = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return "".join(c for c in name if c.isalnum() or c in "._-") or "me"


def _check_same_grid(images: Mapping[str, MultibandImage], files: Mapping[str, str | Path]) -> None:
    """Every band on the first band's pixels and sky grid; the error names both files."""
    bands = list(images)
    reference = images[bands[0]]
    for band in bands[1:]:
        image = images[band]
        if image.shape != reference.shape or image.xy0 != reference.xy0:
            raise IngestError(
                f"{files[band]} (band {band!r}: {image.height}x{image.width} px at xy0 {image.xy0}) does not "
                f"cover the pixels of {files[bands[0]]} (band {bands[0]!r}: {reference.height}x"
                f"{reference.width} px at xy0 {reference.xy0}): the bands of a coadd must cover the same "
                "pixels"
            )
        if not same_sky_grid(reference.wcs, image.wcs, reference.shape, reference.xy0, 0.01):
            raise IngestError(
                f"the WCS of {files[band]} (band {band!r}) does not put its pixels where the WCS of "
                f"{files[bands[0]]} (band {bands[0]!r}) does (more than 0.01 pixel apart at a corner): "
                "the bands of a coadd must share one sky grid"
            )


def _stack(images: Mapping[str, MultibandImage]) -> MultibandImage:
    bands = list(images)
    first = images[bands[0]]
    return MultibandImage(
        bands=tuple(bands),
        image=np.concatenate([images[b].image for b in bands]),
        variance=np.concatenate([images[b].variance for b in bands]),
        mask=np.concatenate([images[b].mask.astype(np.int64) for b in bands]),
        mask_planes=dict(first.mask_planes),
        wcs=first.wcs,
        xy0=first.xy0,
        metadata={"per_band": {b: images[b].metadata for b in bands}},
    )


def _same_pixels(stored: Any, new: Any) -> bool:
    """Whether a stored ``MaskedImage`` has the pixels, variance, mask and box of a new one."""
    try:
        return (
            stored.bbox == new.bbox
            and np.array_equal(stored.image.array, new.image.array, equal_nan=True)
            and np.array_equal(stored.variance.array, new.variance.array, equal_nan=True)
            and np.array_equal(stored.mask.array, new.mask.array)
        )
    except AttributeError:  # Not a MaskedImage (another storage class): not the same.
        return False


def _existing_dataset_type(butler: Any, name: str, wanted: Any) -> bool:
    """Whether ``name`` is registered (as ``wanted``); another definition is an `IngestError`."""
    from lsst.daf.butler import MissingDatasetTypeError

    try:
        existing = butler.get_dataset_type(name)
    except MissingDatasetTypeError:
        return False
    if existing != wanted:
        raise IngestError(
            f"dataset type {name!r} exists in this repository with another definition ({existing}); "
            "choose another name with --dataset-type"
        )
    return True


def _find(butler: Any, dataset_type: str, data_id: Mapping[str, Any], run: str) -> Any | None:
    from lsst.daf.butler import MissingCollectionError

    try:
        return butler.find_dataset(dataset_type, data_id, collections=run)
    except MissingCollectionError:
        return None


def _load_model(path: str | Path, bands: Sequence[str]) -> Any:
    """The model package at ``path``; warns when it cannot run on ``bands``."""
    from ..core.model_package import BandMismatchError, ModelPackage, ModelPackageError

    try:
        package = ModelPackage.load(path)
    except (OSError, ModelPackageError) as err:
        raise IngestError(f"model package {path}: {err}") from None
    try:
        package.check_bands(bands)
    except BandMismatchError as err:
        _log.warning("the detection will refuse these coadds: %s", err)
    return package


def ingest_fits(
    butler: Any,
    files: Mapping[str, str | Path],
    tract: int | None = None,
    patch: int | str | None = None,
    skymap: str | None = None,
    run: str = DEFAULT_RUN,
    collection: str | None = None,
    unit: str | None = None,
    xy0: tuple[int, int] = (0, 0),
    dataset_type: str = "deep_coadd",
    unknown_mask_bits: str = "error",
    *,
    zeropoint: float | None = None,
    gain: float | None = None,
    subtract_background: bool | None = None,
    background_mesh: int = DEFAULT_MESH_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
    patch_border: int = DEFAULT_PATCH_BORDER,
    replace: bool = False,
    model: str | Path | None = None,
) -> IngestResult:
    """Put per-band FITS coadds into a repository as ``deep_coadd``, all or nothing; idempotent.

    Every file is read and checked (image, WCS, units, mask bits, shapes and sky grid across bands, the
    conversion to the stored type, the coadds already there) before anything is written; the coadds are
    written in one Butler transaction, so a failure leaves them as they were and the same command can be
    re-run.  Dimension records and the model are registered first (idempotently).

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    files : mapping [`str`, path]
        Band -> FITS file.
    tract, patch : `int`, `int` or `str`, optional
        An existing patch to file the coadd under (``patch`` an id or ``"X,Y"``); both or neither.  Without
        them a skymap is made from the image's WCS (`PatchGrid.for_image`), one tract (0) that is the image.
    skymap : `str`, optional
        With ``tract``/``patch``: the existing skymap (optional if the repository has one).  Without: the
        name of the skymap to make (default ``deepdisc_fits_<geometry hash>``).
    run : `str`
        RUN collection to write into.
    collection : `str`, optional
        CHAINED collection to put ``run`` (first) and the model's collection into (created if needed).
    unit, zeropoint : optional
        Pixel unit or AB zeropoint overriding the header's (`flux_calibration`).
    xy0 : `tuple` [`int`, `int`]
        Parent origin for files whose header records none.
    dataset_type : `str`
        Dataset type to write (storage class ``MaskedImageV2``, dimensions tract, patch, band, skymap); use
        another name where ``deep_coadd`` already exists as an ``ExposureF`` (a real DRP repository).
    unknown_mask_bits : `str`
        ``"error"`` or ``"drop"`` (see `read_band_fits`).
    gain, subtract_background, background_mesh
        See `read_band_fits`.
    patch_size, patch_border : `int`
        Largest patch side and overlap border of the skymap made from the image.
    replace : `bool`
        Replace coadds with different pixels already in ``run`` (otherwise an error).
    model : path, optional
        A model package to ingest into ``pretrained_models/<name>`` (idempotent) and chain into
        ``collection``.

    Returns
    -------
    result : `IngestResult`

    Raises
    ------
    IngestError
        Missing/invalid files, missing WCS or unit, shape or sky-grid mismatches between bands, an image
        outside the named patch, unregistered skymap/patch, a skymap name taken by another geometry,
        different coadds already present without ``replace``, an unusable model package.
    """
    from lsst.daf.butler import CollectionType, DatasetType
    from lsst.images import Box, TractFrame

    from ..butler.conversions import masked_image_from_multiband
    from ..butler.records import SkymapConflictError, register_bands, register_image_skymap
    from ..butler.regions import PatchMismatchError, check_coadd_in_patch

    if not files:
        raise IngestError("no band given: use --band BAND=FILE (once per band)")
    if (tract is None) != (patch is None):
        raise IngestError(
            "give --tract and --patch together (an existing patch), or neither (a skymap made from the image)"
        )
    bands = list(files)
    images = {
        band: read_band_fits(
            files[band],
            band,
            unit=unit,
            xy0=xy0,
            unknown_mask_bits=unknown_mask_bits,
            zeropoint=zeropoint,
            gain=gain,
            subtract_background=subtract_background,
            background_mesh=background_mesh,
        )
        for band in bands
    }
    _check_same_grid(images, files)
    whole = _stack(images)
    result = IngestResult(bands=bands, run=run, collection=collection, dataset_type=dataset_type)

    # Where the pixels go: (data ID, image) per patch.
    pieces: list[tuple[dict[str, Any], MultibandImage]] = []
    pixel_frame = None
    grid = None
    if tract is not None:
        data_id, region = _check_records(butler, skymap, tract, patch)  # type: ignore[arg-type]
        try:
            check_coadd_in_patch(whole, region, data_id)
        except PatchMismatchError as err:
            raise IngestError(f"{', '.join(str(files[b]) for b in bands)}: {err}") from None
        pieces.append((data_id, whole))
        result.explicit_patch = True
    else:
        try:
            grid = PatchGrid.for_image(whole.shape, whole.xy0, patch_size, patch_border)
        except ValueError as err:
            raise IngestError(f"--patch-size/--patch-border: {err}") from None
        geometry_hash = grid.geometry_hash(whole.wcs)
        skymap = skymap or f"deepdisc_fits_{geometry_hash.hex()[:12]}"
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", skymap):
            raise IngestError(f"--skymap {skymap!r}: use letters, digits, '_', '.' and '-' only")
        known = butler.query_dimension_records("skymap", data_id={}, explain=False)
        for record in known:
            if record.name == skymap and bytes(record.hash) != geometry_hash:
                raise IngestError(
                    f"skymap {skymap!r} is already registered for another image (other WCS, pixel box or "
                    "patch size); choose another --skymap name, or leave --skymap out"
                )
        x0, y0, _, _ = grid.tract_box
        pixel_frame = TractFrame(skymap=skymap, tract=0, bbox=Box.from_shape(whole.shape, start=(y0, x0)))
        for patch_x, patch_y in grid.patches():
            xb, yb, xe, ye = grid.outer_box(patch_x, patch_y)
            piece = whole.cutout(xb - x0, yb - y0, xe - x0, ye - y0)
            pieces.append(
                ({"skymap": skymap, "tract": 0, "patch": grid.patch_index(patch_x, patch_y)}, piece)
            )
        _log.info(
            "skymap %s: one tract (0), the image (%dx%d px), in %d patch(es) of at most %d px (%dx%d grid)",
            skymap,
            whole.width,
            whole.height,
            grid.n_patches,
            min(patch_size, max(whole.shape)),
            grid.nx,
            grid.ny,
        )
    result.skymap = str(pieces[0][0]["skymap"])
    result.tract = int(pieces[0][0]["tract"])
    result.patches = [int(data_id["patch"]) for data_id, _ in pieces]

    # Everything is converted, and compared with what is there, before the first write.
    masked: list[tuple[dict[str, Any], Any]] = []
    for data_id, piece in pieces:
        for band in bands:
            one = piece.select_bands([band])
            one.mask = one.mask.astype(images[band].mask.dtype)
            try:
                masked.append(
                    (
                        {**data_id, "band": band},
                        masked_image_from_multiband(one, band, pixel_frame=pixel_frame),
                    )
                )
            except ValueError as err:
                raise IngestError(f"{files[band]} (band {band!r}): {err}") from None
    dimensions, storage_class = ("skymap", "tract", "patch", "band"), "MaskedImageV2"
    wanted_type = DatasetType(dataset_type, dimensions, storage_class, universe=butler.dimensions)
    type_exists = _existing_dataset_type(butler, dataset_type, wanted_type)
    existing: dict[int, Any] = {}
    conflicts = []
    if type_exists:
        for number, (data_id, image) in enumerate(masked):
            ref = _find(butler, dataset_type, data_id, run)
            if ref is None:
                continue
            existing[number] = ref
            if not _same_pixels(butler.get(ref), image):
                conflicts.append(data_id)
    if conflicts and not replace:
        listed = "; ".join(f"patch {d['patch']} band {d['band']!r}" for d in conflicts[:5])
        raise IngestError(
            f"run {run!r} already holds a different {dataset_type} for skymap {result.skymap!r} tract "
            f"{result.tract}: {listed}{' ...' if len(conflicts) > 5 else ''}; pass --replace to replace it "
            "(catalogs already made from the old coadds are not updated), or ingest into another --run"
        )
    package = _load_model(model, bands) if model is not None else None

    # Writes: records, dataset type, model, then the coadds in one transaction.
    result.new_records += [f"band {band}" for band in register_bands(butler, bands)]
    if grid is not None:
        try:
            if register_image_skymap(butler, result.skymap, whole.wcs, grid):
                result.new_records.append(f"skymap {result.skymap} (tract 0, {grid.n_patches} patch(es))")
        except SkymapConflictError as err:
            raise IngestError(str(err)) from None
    if not type_exists:
        butler.registry.registerDatasetType(wanted_type)
    if package is not None:
        from ..butler.model_formatter import ingest_model_package
        from ..core.model_package import ModelPackageError

        try:
            model_result = ingest_model_package(butler, package)
        except ModelPackageError as err:
            raise IngestError(f"model package {model}: {err}") from None
        result.model_collection, result.model_status = model_result.run, model_result.status
    butler.registry.registerRun(run)
    to_replace = [existing[n] for n in existing if masked[n][0] in conflicts]
    with butler.transaction():
        if to_replace:
            butler.pruneDatasets(to_replace, disassociate=True, unstore=True, purge=True)
        for number, (data_id, image) in enumerate(masked):
            if number in existing and data_id not in conflicts:
                result.refs.append(existing[number])
                result.unchanged += 1
                continue
            result.refs.append(butler.put(image, dataset_type, data_id, run=run))
            _log.info("ingested %s as %s %s", files[data_id["band"]], dataset_type, data_id)
    result.replaced = len(to_replace)
    result.written = len(masked) - result.unchanged
    if collection:
        butler.registry.registerCollection(collection, CollectionType.CHAINED)
        chain = list(butler.registry.getCollectionChain(collection))
        new_chain = ([] if run in chain else [run]) + chain
        if result.model_collection and result.model_collection not in new_chain:
            new_chain.append(result.model_collection)
        if new_chain != chain:
            butler.registry.setCollectionChain(collection, new_chain)
    return result


def _parse_bands(values: Sequence[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for value in values:
        band, sep, path = value.partition("=")
        band = band.strip()
        if not sep or not band or not path:
            raise IngestError(f"--band expects BAND=FILE, got {value!r}")
        if band in files:
            raise IngestError(f"band {band!r} given more than once ({files[band]} and {path})")
        files[band] = path
    return files


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="deepdisc-ingest-fits",
        description="Put per-band FITS coadds into a Butler repository (created if missing), with the "
        "records and the model they need, and print the pipetask command that detects on them.",
    )
    parser.add_argument("repo", help="Butler repository (root directory, created if missing, or config URI)")
    parser.add_argument(
        "--band",
        action="append",
        default=[],
        metavar="BAND=FILE",
        help="a band and its FITS file (plain image or IMAGE/MASK/VARIANCE layout); repeat per band",
    )
    units = parser.add_argument_group("pixel values")
    units.add_argument(
        "--unit", help="pixel unit, overriding BUNIT: a flux density (nJy, uJy...) or ADU/counts"
    )
    units.add_argument(
        "--zeropoint",
        type=float,
        help="AB zeropoint of images in counts (magnitude of one count), overriding "
        "MAGZERO/MAGZPT/PHOTZP/FLUXMAG0",
    )
    units.add_argument(
        "--gain",
        type=float,
        help="electrons per pixel unit: adds the sources' Poisson term to a variance estimated from the "
        "image",
    )
    units.add_argument(
        "--subtract-background",
        dest="subtract_background",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="subtract a mesh sky background (default: only when the sky was evidently not subtracted)",
    )
    units.add_argument(
        "--background-mesh",
        type=int,
        default=DEFAULT_MESH_SIZE,
        metavar="PIXELS",
        help=f"mesh cell of the background (default {DEFAULT_MESH_SIZE})",
    )
    units.add_argument(
        "--unknown-mask-bits",
        choices=("error", "drop"),
        default="error",
        help="mask bits that no MP_<PLANE> keyword names: refuse the file (default) or clear them",
    )
    units.add_argument(
        "--xy0",
        type=int,
        nargs=2,
        default=(0, 0),
        metavar=("X0", "Y0"),
        help="parent origin if not in header",
    )
    where = parser.add_argument_group("where the coadds go")
    where.add_argument(
        "--skymap",
        help="name of the skymap made from the image (default deepdisc_fits_<hash>), or with --tract/--patch "
        "an existing skymap (optional if the repository has one)",
    )
    where.add_argument("--tract", type=int, help="an existing tract (with --patch)")
    where.add_argument("--patch", help="an existing patch: id, or X,Y in the skymap's patch grid")
    where.add_argument(
        "--patch-size",
        type=int,
        default=DEFAULT_PATCH_SIZE,
        help=f"largest patch side of the skymap made from the image (default {DEFAULT_PATCH_SIZE})",
    )
    where.add_argument(
        "--patch-border",
        type=int,
        default=DEFAULT_PATCH_BORDER,
        help=f"overlap border of its patches when the image needs several (default {DEFAULT_PATCH_BORDER})",
    )
    where.add_argument("--run", default=DEFAULT_RUN, help=f"RUN collection (default {DEFAULT_RUN})")
    where.add_argument(
        "--collection",
        default=DEFAULT_COLLECTION,
        help=f"CHAINED collection of the coadds and the model (default {DEFAULT_COLLECTION}); '' for none",
    )
    where.add_argument(
        "--dataset-type", default="deep_coadd", help="dataset type to write (default deep_coadd)"
    )
    where.add_argument(
        "--replace",
        action="store_true",
        help="replace coadds with different pixels already in the run (otherwise an error)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        type=Path,
        metavar="PKG.zip",
        help=f"model package for pretrained_models/<name> (default: the shipped {SHIPPED_MODEL_NAME})",
    )
    model.add_argument("--no-model", action="store_true", help="ingest no model package")
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (default INFO; DEBUG shows tracebacks)"
    )
    return parser


def _open_repo(repo: str, create: bool) -> tuple[Any, str]:
    """A writeable Butler on ``repo``, created (with this package's storage classes) where allowed."""
    from ..butler.config_path import ensure_butler_config_path
    from ..butler.repository import open_writeable_butler

    ensure_butler_config_path()
    try:
        return open_writeable_butler(repo, create=None if create else False)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, OSError) as err:
        raise IngestError(f"cannot open the Butler repository {repo!r}: {err}") from None


def _report(result: IngestResult, root: str) -> None:
    n = len(result.refs)
    if result.written == 0:
        print(
            f"nothing new: the {n} {result.dataset_type} dataset(s) of skymap {result.skymap!r} are already "
            f"in run {result.run!r} with the same pixels"
        )
    else:
        print(
            f"ingested {result.written} {result.dataset_type} dataset(s) into run {result.run!r} "
            f"({result.replaced} replaced, {result.unchanged} already there): skymap {result.skymap!r} tract "
            f"{result.tract}, patch(es) {result.patches}, bands {''.join(result.bands)}"
        )
    if result.new_records:
        print(f"registered {', '.join(result.new_records)}")
    if result.model_collection:
        status = {"unchanged": "already in", "ingested": "ingested into", "replaced": "replaced in"}
        print(f"model package {status.get(result.model_status or '', 'in')} {result.model_collection!r}")
    print("detect with:")
    print(f"  {result.pipetask_command(root)}")
    if not result.model_collection:
        print("  (add the collection of your model package, pretrained_models/<name>, to -i)")
    print("then read the catalogs, e.g.:")
    print(
        f"  butler query-datasets {shlex.quote(root)} object_deepdisc --collections u/{_user_name()}/deepdisc"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deepdisc-ingest-fits``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        files = _parse_bands(args.band)
        model = None if args.no_model else args.model
        if model is None and not args.no_model:
            try:
                model = shipped_model_path()
            except FileNotFoundError as error:
                _log.warning("%s; no model ingested", error)
        elif model is not None and not Path(model).is_file():
            raise IngestError(f"--model {model}: no such file")
        butler, root = _open_repo(args.repo, create=args.tract is None)
        with butler:
            result = ingest_fits(
                butler,
                files,
                tract=args.tract,
                patch=args.patch,
                skymap=args.skymap,
                run=args.run,
                collection=args.collection or None,
                unit=args.unit,
                xy0=tuple(args.xy0),
                dataset_type=args.dataset_type,
                unknown_mask_bits=args.unknown_mask_bits,
                zeropoint=args.zeropoint,
                gain=args.gain,
                subtract_background=args.subtract_background,
                background_mesh=args.background_mesh,
                patch_size=args.patch_size,
                patch_border=args.patch_border,
                replace=args.replace,
                model=model,
            )
    except IngestError as err:
        print(f"deepdisc-ingest-fits: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # Anything unforeseen: one line, the traceback only when debugging.
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(
            f"deepdisc-ingest-fits: error: {type(err).__name__}: {err} (no coadd was written; "
            "--log-level DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return 1
    _report(result, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
