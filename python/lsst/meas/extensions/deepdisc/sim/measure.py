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
"""Catalogs of a deblended patch: ``object_deblend`` (parents, children, footprints) and ``object_patch``.

Measurement (a deliberately simple stand-in for the pipeline's, noisy at faint magnitudes):

* every child's pixels are the *flux-redistributed* image, ``image x model_k / sum_j model_j`` inside the
  parent footprint (scarlet's ``conserve_flux``); a parent with children is measured on the image itself;
* ``<band>_psfFlux``: inverse-variance weighted linear fit of the band's PSF, centred on the object, over the
  footprint pixels (saturated and ``NO_DATA`` pixels excluded);
* ``<band>_cModelFlux``: the same fit with the object's own observed-PSF model shape (for a parent, the sum
  of its children's models), scaled to the model's total flux;
* ``<band>_extendedness`` / ``refExtendedness``: 1 where ``psfFlux / cModelFlux < 0.985``, else 0, NaN when
  undefined (``base_ClassificationExtendedness`` with its default ``fluxRatio``);
* ``refBand``: the first band of ``i, r, z, y, g, u`` (those present) where the psfFlux S/N reaches 5, else
  the band of highest S/N;
* ``detect_isPrimary``: a leaf object (child, or parent without children) centred in the patch's inner
  region.

A child's footprint is the set of parent-footprint pixels where its band-summed observed-PSF model exceeds
the lower of ``footprint_threshold`` and half its own peak.  Ids follow `ids`.
"""

from __future__ import annotations

__all__ = [
    "EXTENDEDNESS_FLUX_RATIO",
    "REF_BAND_PRIORITY",
    "build_object_tables",
]

import math
from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table

from ..core.footprints import flatten_spans, mask_to_spans, spans_centroid, spans_to_mask
from ..core.multiband import MultibandImage
from .models import KernelBank, difference_kernels, gaussian_morph, model_psf_variance, paste
from .types import DeblendedBlend, PatchGeometry

EXTENDEDNESS_FLUX_RATIO = 0.985
REF_BAND_PRIORITY = ("i", "r", "z", "y", "g", "u")
_FLAG_NAMES = (
    "deblend_isolatedParent",
    "deblend_tooManyPeaks",
    "deblend_parentTooBig",
    "deblend_skipped",
    "deblend_masked",
    "deblend_failed",
)
_FLAG_DOCS = {
    "deblend_isolatedParent": "The parent has a single peak and was not deblended",
    "deblend_tooManyPeaks": "The parent had too many peaks; only the brightest were deblended",
    "deblend_parentTooBig": "The parent footprint was too large to deblend",
    "deblend_skipped": "The deblender skipped this parent",
    "deblend_masked": "More than half of the parent footprint is masked (SAT or NO_DATA)",
    "deblend_failed": "No child of the parent kept any flux",
}


class _Measurer:
    """Linear flux fits on one patch."""

    def __init__(self, image: MultibandImage, psf_images: dict[str, np.ndarray], model_psf: np.ndarray):
        self.image = image
        kernels = difference_kernels({b: psf_images[b] for b in image.bands}, model_psf)
        self.bank = KernelBank(np.stack([kernels[b] for b in image.bands]))
        self.kernel_half = self.bank.half
        bad = image.plane_bits(("SAT", "NO_DATA"))
        self.fit_ok = np.isfinite(image.image) & np.isfinite(image.variance) & (image.variance > 0)
        if image.mask is not None:
            self.fit_ok &= (image.mask & bad) == 0
        self.point_variance = model_psf_variance(model_psf)

    def observed(self, origin: tuple[int, int], morph: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
        """Unit-flux observed cube of a model-space morphology (``[C, h + k - 1, w + k - 1]``)."""
        cube = self.bank.convolve(np.asarray(morph, dtype=float) / float(np.sum(morph)))
        return (origin[0] - self.kernel_half, origin[1] - self.kernel_half), cube

    def point_source(self, x: float, y: float) -> tuple[tuple[int, int], np.ndarray]:
        """Unit-flux observed PSF cube centred on ``(x, y)`` parent coordinates."""
        ix, iy = int(round(x)), int(round(y))
        box = (ix - 5, iy - 5, ix + 6, iy + 6)
        morph = gaussian_morph(self.point_variance * np.eye(2), (x, y), box)
        return self.observed((box[1], box[0]), morph)

    def fit(
        self,
        data: np.ndarray,
        data_origin: tuple[int, int],
        region: np.ndarray,
        template: tuple[tuple[int, int], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-band flux and error of ``template`` fitted to ``data`` (``[C, H, W]``) over ``region``."""
        (ty0, tx0), cube = template
        x_img, y_img = self.image.xy0
        n_bands = len(self.image.bands)
        flux = np.full(n_bands, np.nan)
        error = np.full(n_bands, np.nan)
        oy0, ox0 = ty0 - data_origin[0], tx0 - data_origin[1]
        height, width = data.shape[-2:]
        sy0, sx0 = max(0, -oy0), max(0, -ox0)
        sy1, sx1 = min(cube.shape[1], height - oy0), min(cube.shape[2], width - ox0)
        if sy1 <= sy0 or sx1 <= sx0:
            return flux, error
        local = (slice(oy0 + sy0, oy0 + sy1), slice(ox0 + sx0, ox0 + sx1))
        img_rows = slice(data_origin[0] - y_img + local[0].start, data_origin[0] - y_img + local[0].stop)
        img_cols = slice(data_origin[1] - x_img + local[1].start, data_origin[1] - x_img + local[1].stop)
        for b in range(n_bands):
            use = region[local] & self.fit_ok[b, img_rows, img_cols]
            if not use.any():
                continue
            weight = 1.0 / self.image.variance[b, img_rows, img_cols][use].astype(float)
            shape = cube[b, sy0:sy1, sx0:sx1][use]
            values = data[b][local][use].astype(float)
            norm = float(np.sum(shape * shape * weight))
            if norm <= 0:
                continue
            flux[b] = float(np.sum(shape * values * weight)) / norm
            error[b] = 1.0 / math.sqrt(norm)
        return flux, error


def _ref_band(
    bands: Sequence[str], psf_flux: np.ndarray, psf_err: np.ndarray, priority: Sequence[str]
) -> str:
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(np.isfinite(psf_flux) & (psf_err > 0), psf_flux / psf_err, -np.inf)
    for band in priority:
        if band in bands and snr[bands.index(band)] >= 5.0:
            return band
    return bands[int(np.argmax(snr))] if np.isfinite(snr).any() else next(b for b in priority if b in bands)


def build_object_tables(
    blends: list[DeblendedBlend],
    image: MultibandImage,
    psf_images: dict[str, np.ndarray],
    model_psf: np.ndarray,
    geometry: PatchGeometry,
    parent_flags: dict[int, dict[str, Any]] | None = None,
    inner_bbox: tuple[int, int, int, int] | None = None,
    footprint_threshold_sigma: float = 1.0,
    band_sigmas: Sequence[float] | None = None,
    ref_band_priority: Sequence[str] = REF_BAND_PRIORITY,
) -> tuple[Table, Table]:
    """Deblended catalog and object table of one patch.

    Parameters
    ----------
    blends : `list` [`DeblendedBlend`]
        Deblender output (model-space children).
    image : `MultibandImage`
        The coadd the models were fitted to (nJy, with variance and mask).
    psf_images : `dict` [`str`, `numpy.ndarray`]
        Observed PSF per band.
    model_psf : `numpy.ndarray`
        Model PSF of the children.
    geometry : `PatchGeometry`
        Patch placement (WCS).
    parent_flags : `dict` [`int`, `dict`], optional
        Deblender flags per parent id (see `deblend.DeblendResult`); missing flags are `False`.
    inner_bbox : `tuple` [`int`, `int`, `int`, `int`], optional
        ``(x_begin, y_begin, x_end, y_end)`` of the patch's inner region (default: the whole patch).
    footprint_threshold_sigma : `float`
        Children's footprints: where the child's observed model in the detection image exceeds this many
        sigma of the detection image's per-pixel noise (or half the model's peak, if lower).
    band_sigmas : `sequence` [`float`], optional
        Per-band sky noise per pixel defining the detection image (default: square root of the median
        variance of each band).
    ref_band_priority : `sequence` [`str`]
        Priority order of the reference band.

    Returns
    -------
    object_deblend, object_patch : `astropy.table.Table`
        See the module docstring; both have one row per parent and per child, in the same order.
    """
    if image.variance is None:
        raise ValueError("measurement needs a variance plane")
    bands = list(image.bands)
    parent_flags = parent_flags or {}
    measurer = _Measurer(image, psf_images, model_psf)
    x_img, y_img = image.xy0
    if band_sigmas is None:
        band_sigmas = [math.sqrt(float(np.nanmedian(v))) for v in image.variance]
    inverse_variance = 1.0 / np.asarray(band_sigmas, dtype=float) ** 2
    weights = inverse_variance / math.sqrt(float(np.sum(inverse_variance)))
    if inner_bbox is None:
        inner_bbox = (x_img, y_img, x_img + image.width, y_img + image.height)

    records: list[dict[str, Any]] = []
    for blend in blends:
        flags = {name: bool(parent_flags.get(blend.parent_id, {}).get(name, False)) for name in _FLAG_NAMES}
        n_peaks = int(parent_flags.get(blend.parent_id, {}).get("deblend_nPeaks", len(blend.children)))
        (by0, bx0), (bh, bw) = blend.origin, blend.shape
        parent_mask = spans_to_mask(blend.spans, (bh, bw), (bx0, by0))
        rows = slice(by0 - y_img, by0 - y_img + bh)
        cols = slice(bx0 - x_img, bx0 - x_img + bw)
        data = np.where(np.isfinite(image.image[:, rows, cols]), image.image[:, rows, cols], 0.0)

        # Children's unit-flux observed models and their flux-weighted sum in the parent box.
        unit_models, model_fluxes = [], []
        total = np.zeros((len(bands), bh, bw))
        for child in blend.children:
            morph_sum = float(np.sum(child.morph))
            fluxes = np.asarray(child.spectrum, dtype=float) * morph_sum
            origin, cube = measurer.observed(child.origin, child.morph)
            unit_models.append((origin, cube))
            model_fluxes.append(fluxes)
            paste(total, cube * fluxes[:, None, None], origin, (by0, bx0))

        isolated = len(blend.children) == 1 and blend.children[0].source_id == blend.parent_id
        if blend.children:
            brightest = int(np.argmax([np.nansum(f) for f in model_fluxes]))
            px, py = blend.children[brightest].peak
        else:
            px, py = spans_centroid(blend.spans)
        parent_record = {
            "id": blend.parent_id,
            "parent": 0,
            "nChild": 0 if isolated else len(blend.children),
            "x": float(px),
            "y": float(py),
            "nPeaks": n_peaks,
            "flags": flags,
            "spans": blend.spans,
        }
        if isolated:
            origin, cube = unit_models[0]
            psf = measurer.fit(data, (by0, bx0), parent_mask, measurer.point_source(px, py))
            model = measurer.fit(data, (by0, bx0), parent_mask, (origin, cube))
            parent_record.update(psf=psf, model=model)
            records.append(parent_record)
            continue
        psf = measurer.fit(data, (by0, bx0), parent_mask, measurer.point_source(px, py))
        if blend.children:
            total_flux = total.sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                parent_shape = total / np.where(total_flux > 0, total_flux, np.inf)[:, None, None]
            model = measurer.fit(data, (by0, bx0), parent_mask, ((by0, bx0), parent_shape))
        else:
            model = (np.full(len(bands), np.nan), np.full(len(bands), np.nan))
        parent_record.update(psf=psf, model=model)
        records.append(parent_record)

        with np.errstate(invalid="ignore", divide="ignore"):
            inverse_total = np.where(total > 0, 1.0 / total, 0.0)
        for child, (origin, cube), fluxes in zip(blend.children, unit_models, model_fluxes):
            # Work in the child's observed box, clipped to the parent box.
            oy, ox = origin[0] - by0, origin[1] - bx0
            ly0, lx0 = max(0, oy), max(0, ox)
            ly1, lx1 = min(bh, oy + cube.shape[1]), min(bw, ox + cube.shape[2])
            if ly1 <= ly0 or lx1 <= lx0:  # pragma: no cover - a child's model always overlaps its parent box.
                continue
            local = (slice(ly0, ly1), slice(lx0, lx1))
            own = cube[:, ly0 - oy : ly1 - oy, lx0 - ox : lx1 - ox] * fluxes[:, None, None]
            deblended = data[:, local[0], local[1]] * own * inverse_total[:, local[0], local[1]]
            local_origin = (by0 + ly0, bx0 + lx0)
            region = parent_mask[local]
            cx, cy = child.peak
            psf = measurer.fit(deblended, local_origin, region, measurer.point_source(cx, cy))
            model = measurer.fit(deblended, local_origin, region, (origin, cube))
            summed = np.tensordot(weights, own, axes=1)
            peak = float(summed.max()) if summed.size else 0.0
            footprint = region & (summed > min(footprint_threshold_sigma, 0.5 * peak)) & (summed > 0)
            records.append(
                {
                    "id": child.source_id,
                    "parent": blend.parent_id,
                    "nChild": 0,
                    "x": float(cx),
                    "y": float(cy),
                    "nPeaks": 1,
                    "flags": dict.fromkeys(_FLAG_NAMES, False),
                    "spans": mask_to_spans(footprint, (local_origin[1], local_origin[0])),
                    "psf": psf,
                    "model": model,
                }
            )
    return _tables(records, bands, geometry, inner_bbox, ref_band_priority)


def _tables(
    records: list[dict[str, Any]],
    bands: list[str],
    geometry: PatchGeometry,
    inner_bbox: tuple[int, int, int, int],
    priority: Sequence[str],
) -> tuple[Table, Table]:
    n = len(records)
    ids = np.array([r["id"] for r in records], dtype=np.int64)
    parents = np.array([r["parent"] for r in records], dtype=np.int64)
    n_child = np.array([r["nChild"] for r in records], dtype=np.int32)
    x = np.array([r["x"] for r in records], dtype=float)
    y = np.array([r["y"] for r in records], dtype=float)
    if n:
        ra, dec = geometry.wcs.pixel_to_world_values(x, y)
        ra = np.asarray(ra) % 360.0
    else:
        ra = dec = np.zeros(0)
    spans = np.empty(n, dtype=object)
    areas = np.zeros(n, dtype=np.int32)
    for i, record in enumerate(records):
        spans[i] = flatten_spans(record["spans"])
        areas[i] = (
            int(np.sum(record["spans"][:, 2] - record["spans"][:, 1] + 1)) if len(record["spans"]) else 0
        )

    deblend = Table()
    deblend["id"] = ids
    deblend["id"].description = "Object id: (tract, patch, counter) packed as in sim.ids"
    deblend["parent"] = parents
    deblend["parent"].description = "Id of the parent (0 for parents and isolated objects)"
    deblend["nChild"] = n_child
    deblend["nChild"].description = "Number of children (deblend_nChild; 0 for children and isolated objects)"
    _add_positions(deblend, x, y, ra, dec)
    deblend["deblend_nPeaks"] = np.array([r["nPeaks"] for r in records], dtype=np.int32)
    deblend["deblend_nPeaks"].description = "Number of peaks detected in the parent footprint"
    for name in _FLAG_NAMES:
        deblend[name] = np.array([r["flags"][name] for r in records], dtype=bool)
        deblend[name].description = _FLAG_DOCS[name]
    deblend["footprint_area"] = areas
    deblend["footprint_area"].unit = u.pix
    deblend["footprint_area"].description = "Number of pixels in the footprint"
    deblend["spans"] = spans
    deblend["spans"].description = (
        "Footprint as flattened int32 spans (y, x_begin, x_end inclusive), parent coordinates: the parent "
        "footprint for parents, the child's band-summed observed-PSF model above threshold within the parent "
        "footprint for children"
    )

    objects = Table()
    objects["objectId"] = ids
    objects["objectId"].description = "Unique id of the object (same as object_deblend id)"
    objects["parentObjectId"] = parents
    objects["parentObjectId"].description = "Id of the parent object (0 for parents and isolated objects)"
    _add_positions(objects, x, y, ra, dec)
    psf = np.array([r["psf"][0] for r in records]).reshape(n, len(bands))
    psf_err = np.array([r["psf"][1] for r in records]).reshape(n, len(bands))
    model = np.array([r["model"][0] for r in records]).reshape(n, len(bands))
    model_err = np.array([r["model"][1] for r in records]).reshape(n, len(bands))
    ref_bands = [_ref_band(bands, psf[i], psf_err[i], priority) for i in range(n)]
    objects["refBand"] = np.array(ref_bands, dtype="U1")
    objects["refBand"].description = "Reference band (first of i, r, z, y, g, u with psfFlux S/N >= 5)"
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = psf / model
        extendedness = np.where(
            np.isfinite(ratio) & (model > 0), (ratio < EXTENDEDNESS_FLUX_RATIO) * 1.0, np.nan
        )
    for b, band in enumerate(bands):
        for name, values, doc in (
            ("psfFlux", psf[:, b], "PSF flux (linear PSF fit on the deblended pixels)"),
            ("psfFluxErr", psf_err[:, b], "Uncertainty of psfFlux"),
            ("cModelFlux", model[:, b], "Model flux (linear fit of the deblended model shape)"),
            ("cModelFluxErr", model_err[:, b], "Uncertainty of cModelFlux"),
        ):
            column = f"{band}_{name}"
            objects[column] = values.astype(float)
            objects[column].unit = u.nJy
            objects[column].description = f"{doc}, band {band}"
    for b, band in enumerate(bands):
        objects[f"{band}_extendedness"] = extendedness[:, b]
        objects[
            f"{band}_extendedness"
        ].description = (
            f"1 if psfFlux/cModelFlux < {EXTENDEDNESS_FLUX_RATIO} in band {band}, else 0; NaN if undefined"
        )
    ref_index = np.array([bands.index(b) for b in ref_bands], dtype=int)
    objects["refExtendedness"] = extendedness[np.arange(n), ref_index] if n else np.zeros(0)
    objects["refExtendedness"].description = "Extendedness in the reference band"
    x0, y0, x1, y1 = inner_bbox
    inner = (x >= x0 - 0.5) & (x < x1 - 0.5) & (y >= y0 - 0.5) & (y < y1 - 0.5)
    leaf = n_child == 0
    objects["detect_isPrimary"] = inner & leaf
    objects[
        "detect_isPrimary"
    ].description = "Leaf object (child or undeblended parent) in the inner patch region"
    objects["detect_isIsolated"] = (parents == 0) & leaf
    objects["detect_isIsolated"].description = "Parent without children (isolated source)"
    objects["deblend_nChild"] = n_child
    objects["deblend_nChild"].description = "Number of children of the object"
    return deblend, objects


def _add_positions(table: Table, x: np.ndarray, y: np.ndarray, ra: np.ndarray, dec: np.ndarray) -> None:
    table["coord_ra"] = np.asarray(ra, dtype=float)
    table["coord_ra"].unit, table["coord_ra"].description = u.deg, "Right ascension (ICRS)"
    table["coord_dec"] = np.asarray(dec, dtype=float)
    table["coord_dec"].unit, table["coord_dec"].description = u.deg, "Declination (ICRS)"
    table["x"] = x
    table["x"].unit, table["x"].description = u.pix, "Centroid column, parent (tract) pixel coordinates"
    table["y"] = y
    table["y"].unit, table["y"].description = u.pix, "Centroid row, parent (tract) pixel coordinates"
