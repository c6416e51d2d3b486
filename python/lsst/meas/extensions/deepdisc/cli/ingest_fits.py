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

"""``deepdisc-ingest-fits``: put your own FITS coadds into a Butler repository as ``deep_coadd``.

One file per band, ``--band g=g.fits --band r=r.fits``.  Each file is either

* a plain image: the first HDU with 2-d data is the image, optional extensions named ``MASK`` and
  ``VARIANCE`` hold the mask and the variance; or
* the Rubin ``ExposureF`` layout: extensions ``IMAGE``, ``MASK`` and ``VARIANCE`` (tile-compressed or not),
  mask planes named by ``MP_<PLANE>`` = bit keywords.

The image HDU must have a celestial FITS WCS (e.g. TAN).  The array's parent-coordinate origin ``xy0`` is
read from ``LTV1``/``LTV2`` (afw) or the ``LINEAR`` "A" WCS, else taken from ``--xy0`` (default ``0 0``).
Pixel values are taken as nJy unless ``BUNIT`` (or ``--unit``) names another flux-density unit, which is
converted.  Without a variance plane a constant variance is estimated from the image (robust standard
deviation) and a warning is printed.  Without a mask plane, an empty mask with afw's default planes is used.

The target patch (``--skymap``, ``--tract``, ``--patch`` as a number or ``X,Y``) and the bands must already
have dimension records in the repository: create them with ``deepdisc-sim-repo REPO --records-only``
(simulated skymap) or
``butler register-skymap`` / ``butler register-instrument`` for a real one.
"""

from __future__ import annotations

__all__ = ["IngestError", "ingest_fits", "main", "read_band_fits"]

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..core.multiband import DEFAULT_MASK_PLANES, MultibandImage, same_sky_grid, set_bit_numbers

_log = logging.getLogger(__name__)

DEFAULT_RUN = "ingest/deep_coadd"


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


def _flux_scale(header: fits.Header, unit: str | None, path: Path) -> tuple[float, str]:
    name = unit or header.get("BUNIT") or "nJy"
    try:
        parsed = u.Unit(name)
        return float((1.0 * parsed).to_value(u.nJy)), str(name)
    except (ValueError, u.UnitConversionError):
        raise IngestError(
            f"{path}: pixel unit {name!r} is not a flux density convertible to nJy; pass --unit"
        ) from None


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


def read_band_fits(
    path: str | Path,
    band: str,
    unit: str | None = None,
    xy0: tuple[int, int] = (0, 0),
    unknown_mask_bits: str = "error",
) -> MultibandImage:
    """Read one band's FITS file (plain image or Rubin ``ExposureF`` layout) as a one-band image.

    Parameters
    ----------
    path : `str` or `pathlib.Path`
        The file.
    band : `str`
        Band name to give the image.
    unit : `str`, optional
        Pixel unit, overriding ``BUNIT`` (default nJy).
    xy0 : `tuple` [`int`, `int`]
        Parent origin used when the header records none.
    unknown_mask_bits : `str`
        ``"error"``: mask bits that no ``MP_<PLANE>`` keyword names are an error; ``"drop"``: they are
        cleared, with a warning.

    Returns
    -------
    image : `MultibandImage`
        One band, nJy, with variance, mask, parent-coordinate WCS and ``xy0``.

    Raises
    ------
    IngestError
        Unreadable file, no 2-d image, no celestial WCS, planes of different shapes, bad unit, unnamed mask
        bits.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"band {band!r}: file {path} does not exist")
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
        scale, unit_name = _flux_scale(header, unit, path)
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
        if variance_hdu is not None:
            variance = np.asarray(variance_hdu.data, dtype=np.float64) * scale**2
            variance_counts = _report_variance(variance, image, path, band)
        else:
            finite = image[np.isfinite(image)] * scale
            if finite.size == 0:
                raise IngestError(f"{path}: the image has no finite pixels")
            sigma = 1.4826 * np.median(np.abs(finite - np.median(finite)))
            _log.warning(
                "%s: no VARIANCE HDU; using a constant variance (%.4g nJy)^2 estimated from the image",
                path,
                sigma,
            )
            variance = np.full(image.shape, sigma**2)
            variance_counts = {"estimated": int(variance.size)}
    return MultibandImage(
        bands=(band,),
        image=(image * scale)[None],
        variance=variance[None],
        mask=mask.astype(np.int64 if max(planes.values(), default=0) >= 31 else np.int32)[None],
        mask_planes=planes,
        wcs=wcs,
        xy0=origin,
        metadata={
            "unit": "nJy",
            "source_unit": unit_name,
            "source_file": str(path),
            "variance_counts": variance_counts,
        },
    )


def _check_records(
    butler: Any, skymap: str | None, tract: int, patch: str | int, bands: Sequence[str]
) -> dict:
    """Resolve and check the data ID; missing dimension records give an `IngestError` saying what to do."""
    skymaps = [record.name for record in butler.query_dimension_records("skymap", explain=False)]
    how = (
        "create the dimension records first: `deepdisc-sim-repo REPO --records-only` for the simulated "
        "skymap, or `butler register-skymap` / `butler register-instrument` for a real one"
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

    known_bands = {record.name for record in butler.query_dimension_records("band", explain=False)}
    unknown = [b for b in bands if b not in known_bands]
    if unknown:
        raise IngestError(
            f"band(s) {unknown} are not registered (known: {sorted(known_bands)}); bands come from "
            "physical_filter records of an instrument: `butler register-instrument`, or deepdisc-sim-repo"
        )
    return data_id, found[0].region


def ingest_fits(
    butler: Any,
    files: Mapping[str, str | Path],
    tract: int,
    patch: int | str,
    skymap: str | None = None,
    run: str = DEFAULT_RUN,
    collection: str | None = None,
    unit: str | None = None,
    xy0: tuple[int, int] = (0, 0),
    dataset_type: str = "deep_coadd",
    unknown_mask_bits: str = "error",
) -> list[Any]:
    """Put per-band FITS coadds into a repository as ``deep_coadd``, all bands or none.

    Every file is read and checked (image, WCS, units, mask bits, shapes and sky grid across bands, the
    conversion to the stored type) before anything is written, and the writes share one Butler
    transaction, so a failure leaves the repository as it was and the same command can be re-run.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    files : mapping [`str`, path]
        Band -> FITS file.
    tract : `int`
        Tract id.
    patch : `int` or `str`
        Patch id, or ``"X,Y"`` patch coordinates in the skymap's grid.
    skymap : `str`, optional
        Skymap name; optional if the repository has exactly one.
    run : `str`
        RUN collection to write into.
    collection : `str`, optional
        CHAINED collection to prepend ``run`` to (created if needed).
    unit : `str`, optional
        Pixel unit overriding ``BUNIT``.
    xy0 : `tuple` [`int`, `int`]
        Parent origin for files whose header records none.
    dataset_type : `str`
        Dataset type to write (storage class ``MaskedImageV2``, dimensions tract, patch, band, skymap); use
        another name where ``deep_coadd`` already exists as an ``ExposureF`` (a real DRP repository).
    unknown_mask_bits : `str`
        ``"error"`` or ``"drop"`` (see `read_band_fits`).

    Returns
    -------
    refs : `list` [`lsst.daf.butler.DatasetRef`]
        The new datasets, in band order.

    Raises
    ------
    IngestError
        Missing/invalid files, missing WCS, shape or sky-grid mismatches between bands, unnamed mask bits,
        unregistered dimension records, datasets already present.
    """
    from lsst.daf.butler import CollectionType, DatasetType
    from lsst.sphgeom import LonLat, UnitVector3d

    from ..butler.conversions import masked_image_from_multiband
    from ..sim.repo import ALL_DATASET_TYPES, DEEP_COADD

    if not files:
        raise IngestError("no band given: use --band BAND=FILE (once per band)")
    bands = list(files)
    data_id, region = _check_records(butler, skymap, tract, patch, bands)
    images = {
        band: read_band_fits(files[band], band, unit=unit, xy0=xy0, unknown_mask_bits=unknown_mask_bits)
        for band in bands
    }
    reference = images[bands[0]]
    for band in bands[1:]:
        if images[band].shape != reference.shape or images[band].xy0 != reference.xy0:
            raise IngestError(
                f"band {band!r} ({images[band].shape} at xy0 {images[band].xy0}) does not match band "
                f"{bands[0]!r} ({reference.shape} at xy0 {reference.xy0}): bands must cover the same pixels"
            )
        if not same_sky_grid(reference.wcs, images[band].wcs, reference.shape, reference.xy0, 0.01):
            raise IngestError(
                f"the WCS of {files[band]} (band {band!r}) does not put its pixels where the WCS of "
                f"{files[bands[0]]} (band {bands[0]!r}) does (more than 0.01 pixel apart at a corner): "
                "the bands of a coadd must share one sky grid"
            )
    centre_ra, centre_dec = reference.pixel_to_sky(
        reference.xy0[0] + (reference.width - 1) / 2.0, reference.xy0[1] + (reference.height - 1) / 2.0
    )
    if region is not None and not region.contains(
        UnitVector3d(LonLat.fromDegrees(float(centre_ra), float(centre_dec)))
    ):
        _log.warning(
            "the image centre (%.5f, %.5f) lies outside the sky region of %s; check --tract/--patch",
            centre_ra,
            centre_dec,
            data_id,
        )
    dimensions, storage_class = ALL_DATASET_TYPES[DEEP_COADD]
    try:
        butler.registry.registerDatasetType(
            DatasetType(dataset_type, dimensions, storage_class, universe=butler.dimensions)
        )
    except Exception as err:  # ConflictingDefinitionError; its import path moved between releases.
        raise IngestError(
            f"dataset type {dataset_type!r} exists in this repository with another definition ({err}); "
            "choose another name with --dataset-type"
        ) from None
    butler.registry.registerRun(run)
    for band in bands:
        if butler.find_dataset(dataset_type, {**data_id, "band": band}, collections=run) is not None:
            raise IngestError(f"{dataset_type} for {data_id} band {band!r} already exists in run {run!r}")
    masked = {}
    for band in bands:  # Everything is converted before the first write.
        try:
            masked[band] = masked_image_from_multiband(images[band], band)
        except ValueError as err:
            raise IngestError(f"{files[band]} (band {band!r}): {err}") from None
    refs = []
    with butler.transaction():
        for band in bands:
            refs.append(butler.put(masked[band], dataset_type, {**data_id, "band": band}, run=run))
            _log.info("ingested %s as %s %s band %s", files[band], dataset_type, data_id, band)
    if collection:
        butler.registry.registerCollection(collection, CollectionType.CHAINED)
        chain = list(butler.registry.getCollectionChain(collection))
        if run not in chain:
            butler.registry.setCollectionChain(collection, [run, *chain])
    return refs


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
        description="Put per-band FITS coadds into a Butler repository as deep_coadd datasets.",
    )
    parser.add_argument("repo", help="Butler repository (root directory or config URI)")
    parser.add_argument(
        "--band",
        action="append",
        default=[],
        metavar="BAND=FILE",
        help="a band and its FITS file (plain image or IMAGE/MASK/VARIANCE layout); repeat per band",
    )
    parser.add_argument("--tract", type=int, required=True, help="tract id")
    parser.add_argument("--patch", required=True, help="patch id, or X,Y in the skymap's patch grid")
    parser.add_argument("--skymap", help="skymap name (optional if the repository has one skymap)")
    parser.add_argument("--run", default=DEFAULT_RUN, help=f"RUN collection (default {DEFAULT_RUN})")
    parser.add_argument("--collection", help="CHAINED collection to add the run to")
    parser.add_argument("--unit", help="pixel unit, overriding BUNIT (default nJy)")
    parser.add_argument(
        "--xy0",
        type=int,
        nargs=2,
        default=(0, 0),
        metavar=("X0", "Y0"),
        help="parent origin if not in header",
    )
    parser.add_argument(
        "--dataset-type", default="deep_coadd", help="dataset type to write (default deep_coadd)"
    )
    parser.add_argument(
        "--unknown-mask-bits",
        choices=("error", "drop"),
        default="error",
        help="mask bits that no MP_<PLANE> keyword names: refuse the file (default) or clear them",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (default INFO; DEBUG shows tracebacks)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deepdisc-ingest-fits``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        from lsst.daf.butler import Butler

        files = _parse_bands(args.band)
        try:
            butler = Butler.from_config(args.repo, writeable=True)
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            raise IngestError(f"cannot open the Butler repository {args.repo!r}: {err}") from None
        refs = ingest_fits(
            butler,
            files,
            tract=args.tract,
            patch=args.patch,
            skymap=args.skymap,
            run=args.run,
            collection=args.collection,
            unit=args.unit,
            xy0=tuple(args.xy0),
            dataset_type=args.dataset_type,
            unknown_mask_bits=args.unknown_mask_bits,
        )
    except IngestError as err:
        print(f"deepdisc-ingest-fits: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # Anything unforeseen: one line, the traceback only when debugging.
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(
            f"deepdisc-ingest-fits: error: {type(err).__name__}: {err} (no dataset was written; "
            "--log-level DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return 1
    print(f"ingested {len(refs)} {args.dataset_type} dataset(s) into run {args.run!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
