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
"""A real, if simple, deblending run on simulated coadds: detection, then multi-band template fitting.

``scarlet2`` (PyPI) was considered and rejected here: it needs ``jax``, ``equinox``, ``optax``, ``numpyro``,
``h5py`` and ``ipywidgets``, and JIT-compiles per blend shape, far too slow for thousands of blends on two CPU
cores.  This module implements instead what `DEBLENDER_NAME` says, a *moment-seeded multiband template
deblender*:

1. **Detection** (sep, i.e. SExtractor): a detection image that is the inverse-variance weighted sum of the
   bands, its background estimated and subtracted (``background_box``), thresholded at
   ``detection_threshold`` times the per-pixel noise after filtering (SExtractor's default 3x3 filter, or a
   PSF-matched Gaussian), ``min_area`` connected pixels, and sep's multi-threshold deblending
   (``deblend_nthresh``, ``deblend_cont``) to split peaks.  Nothing is taken from the truth.
2. **Parents**: the segmentation pixels grown by ``grow_sigma`` PSF sigmas (as afw grows footprints),
   ``NO_DATA`` removed; touching footprints merge.  Every sep object belongs to the parent under its peak.
3. **Templates**: each child is an elliptical profile in *model-PSF space*, centred on its adaptive
   (Gaussian-weighted, galsim HSM) centroid, whose best-fit Gaussian has the child's adaptive second moments
   on the detection image (neighbours masked out) minus those of the detection PSF; the model PSF (a
   pixel-integrated Gaussian) is convolved in analytically.  The profile is a Gaussian or an exponential
   (a 10-Gaussian mixture), whichever fits the child's own detection pixels better (``template_profile``);
   sep's isophotal moments stand in where HSM fails.
4. **Spectra**: per band, non-negative least squares of the children's templates convolved with the
   difference kernel to that band's observed PSF, jointly over the parent footprint, weighted by the inverse
   variance, saturated and ``NO_DATA`` pixels excluded.  Children with no flux in any band are dropped.

It makes the errors real deblenders make: faint neighbours below the threshold are missed or merged,
extended galaxies with sub-structure shred into several peaks, the symmetric parametric templates
misallocate flux between overlapping children (and miss the bulges' wings), and saturated stars
fragment.  Isolated parents (one child) are flagged like ``deblend_isolatedParent`` in the Rubin
pipelines, and their single child keeps the parent's id.
"""

from __future__ import annotations

__all__ = [
    "DEBLENDER_NAME",
    "TEMPLATE_PROFILES",
    "DeblendResult",
    "DeblenderConfig",
    "deblend_patch",
    "detect_sources",
    "exponential_mixture",
]

import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import galsim
import numpy as np
import sep
from scipy import ndimage, sparse
from scipy.linalg import solve_triangular
from scipy.optimize import nnls

from ..core.footprints import mask_to_spans
from ..core.multiband import MultibandImage
from .ids import pack_id
from .models import KernelBank, difference_kernels, gaussian_mixture_morph, model_psf_variance, paste
from .types import DeblendedBlend, DeblendedSource, PatchGeometry

DEBLENDER_NAME = (
    "moment-seeded multiband template deblender (sep detection, Gaussian/exponential templates, NNLS spectra)"
)
_SEP_DEFAULT_FILTER = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
TEMPLATE_PROFILES = ("auto", "exponential", "gaussian")


@cache
def exponential_mixture() -> tuple[np.ndarray, np.ndarray, float]:
    """Mixture of 10 concentric Gaussians approximating a 2-d exponential profile of unit scale length.

    Returns
    -------
    amplitudes : `numpy.ndarray`
        Component fluxes (sum ~1; the profile is matched to 1% of its peak surface density times radius).
    variances : `numpy.ndarray`
        Component variances per axis, in units of the scale length squared.
    adaptive_variance : `float`
        Variance per axis of the best-fit (adaptive-moment) Gaussian of the exponential, same units.
    """
    radius = np.linspace(0.0, 15.0, 3000)
    profile = np.exp(-radius) / (2.0 * np.pi)
    variances = np.logspace(-3.3, 1.7, 10)
    design = np.exp(-(radius[:, None] ** 2) / (2.0 * variances)) / (2.0 * np.pi * variances)
    weight = np.sqrt(radius + 1e-3)  # fit the light (surface density times radius), not the cusp
    amplitudes, _ = nnls(design * weight[:, None], profile * weight)
    # Adaptive moments: the weighted second moment of the best-fit Gaussian is half its variance.
    variance = 2.0
    for _ in range(100):
        gauss = np.exp(-(radius**2) / (2.0 * variance)) * np.exp(-radius) * radius
        variance = float(np.trapezoid(gauss * radius**2, radius) / np.trapezoid(gauss, radius))
    return amplitudes / amplitudes.sum(), variances, variance


@dataclass(frozen=True)
class DeblenderConfig:
    """Settings of `deblend_patch`.

    Parameters
    ----------
    detection_threshold : `float`
        Detection threshold in units of the per-pixel noise of the detection image.
    psf_matched_filter : `bool`
        Filter with a PSF-sized Gaussian and sep's "matched" noise treatment (threshold then in units of the
        filtered noise) instead of SExtractor's default 3x3 kernel with plain convolution.
    min_area : `int`
        Minimum number of connected pixels of a detection.
    deblend_nthresh, deblend_cont : `int`, `float`
        sep's multi-threshold deblending (number of levels, minimum contrast).
    background_box : `int`
        Mesh size of the detection background (pixels).
    grow_sigma : `float`
        Parent footprints are grown by this many PSF sigmas.
    max_children : `int`
        Parents with more peaks keep only the brightest ones (``deblend_tooManyPeaks``).
    max_parent_area : `int`
        Larger parents are not deblended (``deblend_parentTooBig``, ``deblend_skipped``).
    masked_fraction_limit : `float`
        Parents with a larger fraction of masked pixels are flagged ``deblend_masked`` (still fitted).
    invalid_planes : `tuple` [`str`, ...]
        Pixels excluded from the fits.
    max_template_sigma : `float`
        Upper bound on a template's sigma (pixels).
    template_profile : `str`
        ``"exponential"`` (a 10-Gaussian mixture whose best-fit Gaussian has the child's deconvolved adaptive
        moments), ``"gaussian"`` (that Gaussian itself) or ``"auto"``: per child, the one that fits the
        child's own pixels of the detection image best.
    """

    detection_threshold: float = 1.3
    psf_matched_filter: bool = False
    min_area: int = 5
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    background_box: int = 64
    grow_sigma: float = 2.4
    max_children: int = 250
    max_parent_area: int = 1_000_000
    masked_fraction_limit: float = 0.5
    invalid_planes: tuple[str, ...] = ("SAT", "NO_DATA")
    max_template_sigma: float = 40.0
    template_profile: str = "auto"

    def __post_init__(self) -> None:
        if self.template_profile not in TEMPLATE_PROFILES:
            raise ValueError(
                f"template_profile must be one of {TEMPLATE_PROFILES}, got {self.template_profile!r}"
            )
        if self.detection_threshold <= 0 or self.min_area < 1 or self.background_box < 8:
            raise ValueError(f"invalid detection settings in {self}")
        if self.max_children < 1 or self.max_parent_area < 1 or self.grow_sigma < 0:
            raise ValueError(f"invalid deblending limits in {self}")


@dataclass
class DeblendResult:
    """What `deblend_patch` returns.

    Parameters
    ----------
    blends : `list` [`DeblendedBlend`]
        One per parent footprint (a skipped parent has no children).
    parent_flags : `dict` [`int`, `dict`]
        Per parent id: ``deblend_nPeaks`` and the boolean flags ``deblend_isolatedParent``,
        ``deblend_tooManyPeaks``, ``deblend_parentTooBig``, ``deblend_skipped``, ``deblend_masked``,
        ``deblend_failed``.
    n_detections : `int`
        Number of sep objects (peaks).
    detection_mask : `numpy.ndarray`
        ``[H, W]`` union of the parent footprints.
    """

    blends: list[DeblendedBlend]
    parent_flags: dict[int, dict[str, Any]]
    n_detections: int
    detection_mask: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def _adaptive_moments(image: np.ndarray, weight: np.ndarray | None, guess_sigma: float, centre=None):
    """Adaptive moments: covariance ``[[xx, xy], [xy, yy]]`` and 0-based ``(x, y)`` centroid, or `None`."""
    try:
        result = galsim.hsm.FindAdaptiveMom(
            galsim.Image(np.ascontiguousarray(image, dtype=np.float64), scale=1.0),
            weight=None if weight is None else galsim.Image(np.ascontiguousarray(weight, dtype=np.int32)),
            guess_sig=guess_sigma,
            guess_centroid=centre,
            strict=False,
        )
    except (galsim.GalSimError, RuntimeError, ValueError):  # pragma: no cover - strict=False reports instead.
        return None
    if result.moments_status != 0 or not np.isfinite(result.moments_sigma) or result.moments_sigma <= 0:
        return None
    shape = result.observed_shape
    e1, e2 = shape.e1, shape.e2
    trace = 2.0 * result.moments_sigma**2 / math.sqrt(max(1.0 - e1**2 - e2**2, 1e-6))
    covariance = 0.5 * trace * np.array([[1.0 + e1, e2], [e2, 1.0 - e1]])
    # galsim images are 1-based.
    return covariance, (result.moments_centroid.x - 1.0, result.moments_centroid.y - 1.0)


def _clip_covariance(covariance: np.ndarray, minimum: float, maximum: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(0.5 * (covariance + covariance.T))
    values = np.clip(values, minimum, maximum)
    return (vectors * values) @ vectors.T


def detect_sources(image: MultibandImage, psf_sigma: float, config: DeblenderConfig) -> dict[str, Any]:
    """Run sep on the inverse-variance weighted band sum.

    Parameters
    ----------
    image : `MultibandImage`
        Coadd with variance and mask.
    psf_sigma : `float`
        Gaussian sigma (pixels) of the detection image's PSF (for the matched filter).
    config : `DeblenderConfig`
        Settings.

    Returns
    -------
    detection : `dict`
        ``objects`` (sep structured array), ``segmentation`` (``[H, W]`` int, object index + 1),
        ``image`` (background-subtracted detection image), ``sigma`` (its per-pixel noise), ``valid`` and
        ``weights`` (per band).
    """
    if image.variance is None:
        raise ValueError("deblending needs a variance plane")
    valid = ~image.invalid_pixels(("NO_DATA",)).any(axis=0) & np.isfinite(image.variance).all(axis=0)
    if not valid.any():
        raise ValueError("the image has no valid pixel to detect on")
    weights = np.array([1.0 / float(np.median(v[valid])) for v in image.variance])
    data = np.tensordot(weights, np.where(valid, image.image, 0.0), axes=1)
    variance = np.tensordot(weights**2, np.where(valid, image.variance, 0.0), axes=1)
    sigma = np.sqrt(np.where(valid, variance, np.median(variance[valid])))
    saturated = image.plane_mask(("SAT",))
    sep.set_extract_pixstack(max(300_000, 2 * data.size))
    sep.set_sub_object_limit(max(1024, config.max_children * 8))
    box = min(config.background_box, max(8, min(data.shape) // 2))
    background = sep.Background(
        np.ascontiguousarray(data, dtype=np.float64), mask=~valid | saturated, bw=box, bh=box, fw=3, fh=3
    )
    data = data - background.back()
    data[~valid] = 0.0
    if config.psf_matched_filter:
        half = int(math.ceil(3.0 * psf_sigma))
        r = np.arange(-half, half + 1)
        kernel = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / psf_sigma**2)
        filter_type = "matched"
    else:
        kernel, filter_type = _SEP_DEFAULT_FILTER, "conv"
    objects, segmentation = sep.extract(
        np.ascontiguousarray(data, dtype=np.float64),
        config.detection_threshold,
        err=np.ascontiguousarray(sigma, dtype=np.float64),
        mask=~valid,
        minarea=config.min_area,
        filter_kernel=kernel,
        filter_type=filter_type,
        deblend_nthresh=config.deblend_nthresh,
        deblend_cont=config.deblend_cont,
        segmentation_map=True,
    )
    return {
        "objects": objects,
        "segmentation": segmentation,
        "image": data,
        "sigma": sigma,
        "valid": valid,
        "weights": weights,
    }


def deblend_patch(
    image: MultibandImage,
    psf_images: dict[str, np.ndarray],
    model_psf: np.ndarray,
    geometry: PatchGeometry,
    config: DeblenderConfig | None = None,
) -> DeblendResult:
    """Detect and deblend a multi-band coadd patch.

    Parameters
    ----------
    image : `MultibandImage`
        Coadd (nJy) with variance and mask; ``xy0`` is the patch origin in tract pixels.
    psf_images : `dict` [`str`, `numpy.ndarray`]
        Observed PSF per band (odd square, unit sum).
    model_psf : `numpy.ndarray`
        Model PSF of the deblended models.
    geometry : `PatchGeometry`
        Patch placement (for the ids).
    config : `DeblenderConfig`, optional
        Settings.

    Returns
    -------
    result : `DeblendResult`
        Blends with model-space children, flags and detection statistics.
    """
    config = config or DeblenderConfig()
    if image.variance is None:
        raise ValueError("deblending needs a variance plane")
    missing = [b for b in image.bands if b not in psf_images]
    if missing:
        raise ValueError(f"no PSF image for band(s) {missing}")
    kernels = difference_kernels({b: psf_images[b] for b in image.bands}, model_psf)
    bank = KernelBank(np.stack([kernels[b] for b in image.bands]))
    x_origin, y_origin = image.xy0
    height, width = image.shape

    # Detection PSF: the weighted mean of the band PSFs, and its adaptive moments.
    detection_weights = np.array([1.0 / float(np.nanmedian(v)) for v in image.variance])
    psf_det = np.tensordot(
        detection_weights / detection_weights.sum(), np.stack([psf_images[b] for b in image.bands]), axes=1
    )
    psf_moments = _adaptive_moments(psf_det, None, 2.0)
    if psf_moments is None:
        raise ValueError("cannot measure the adaptive moments of the PSF images")
    psf_covariance = psf_moments[0]
    psf_sigma = float(np.linalg.det(psf_covariance) ** 0.25)
    model_variance = model_psf_variance(model_psf)

    detection = detect_sources(image, psf_sigma, config)
    objects, segmentation, valid = detection["objects"], detection["segmentation"], detection["valid"]

    grow = int(round(config.grow_sigma * psf_sigma))
    detected = segmentation > 0
    if grow > 0:
        r = np.arange(-grow, grow + 1)
        disk = r[:, None] ** 2 + r[None, :] ** 2 <= grow**2
        footprints = ndimage.binary_dilation(detected, structure=disk) & valid
    else:
        footprints = detected & valid
    labels, n_parents = ndimage.label(footprints, structure=np.ones((3, 3), dtype=bool))
    slices = ndimage.find_objects(labels)
    peak_x = np.clip(objects["xpeak"], 0, width - 1)
    peak_y = np.clip(objects["ypeak"], 0, height - 1)
    parent_of = labels[peak_y, peak_x]
    members: dict[int, list[int]] = {}
    for index in np.argsort(-objects["flux"], kind="stable"):
        if parent_of[index] > 0:
            members.setdefault(int(parent_of[index]), []).append(int(index))

    bad_bits = image.plane_bits(config.invalid_planes)
    fit_ok = np.isfinite(image.image) & np.isfinite(image.variance) & (image.variance > 0)
    if image.mask is not None:
        fit_ok &= (image.mask & bad_bits) == 0

    parents = [label for label in range(1, n_parents + 1) if label in members]
    n_parent_ids = len(parents)
    child_counter = n_parent_ids
    blends: list[DeblendedBlend] = []
    parent_flags: dict[int, dict[str, Any]] = {}
    n_dropped = 0
    for counter, label in enumerate(parents, start=1):
        parent_id = pack_id(geometry.tract, geometry.patch, counter)
        rows, cols = slices[label - 1]
        in_parent = labels[rows, cols] == label
        spans = mask_to_spans(in_parent, xy0=(x_origin + cols.start, y_origin + rows.start))
        blend = DeblendedBlend(
            parent_id=parent_id,
            origin=(y_origin + rows.start, x_origin + cols.start),
            shape=(rows.stop - rows.start, cols.stop - cols.start),
            spans=spans,
        )
        peaks = members[label]
        area = int(in_parent.sum())
        masked_fraction = 1.0 - float(np.mean(fit_ok[:, rows, cols][:, in_parent]))
        flags = {
            "deblend_nPeaks": len(peaks),
            "deblend_isolatedParent": len(peaks) == 1,
            "deblend_tooManyPeaks": len(peaks) > config.max_children,
            "deblend_parentTooBig": area > config.max_parent_area,
            "deblend_skipped": area > config.max_parent_area,
            "deblend_masked": masked_fraction > config.masked_fraction_limit,
            "deblend_failed": False,
        }
        parent_flags[parent_id] = flags
        blends.append(blend)
        if flags["deblend_skipped"]:
            continue
        peaks = peaks[: config.max_children]
        children = _fit_blend(
            peaks,
            objects,
            segmentation,
            detection,
            image,
            fit_ok,
            in_parent,
            (rows, cols),
            bank,
            psf_covariance,
            model_variance,
            config,
        )
        n_dropped += len(peaks) - len(children)
        if not children:
            flags["deblend_failed"] = True
            continue
        flags["deblend_isolatedParent"] = len(children) == 1 and len(peaks) == 1
        for child in children:
            if len(children) == 1 and len(peaks) == 1:
                child.source_id = parent_id
                child.is_isolated = True
            else:
                child_counter += 1
                child.source_id = pack_id(geometry.tract, geometry.patch, child_counter)
            child.parent_id = parent_id
        blend.children = children

    detection_mask = labels > 0
    stats = {"n_dropped_zero_flux": n_dropped, "psf_sigma_px": psf_sigma}
    return DeblendResult(blends, parent_flags, int(len(objects)), detection_mask, stats)


def _fit_blend(
    peaks: list[int],
    objects: np.ndarray,
    segmentation: np.ndarray,
    detection: dict[str, Any],
    image: MultibandImage,
    fit_ok: np.ndarray,
    in_parent: np.ndarray,
    bbox_slices: tuple[slice, slice],
    bank: KernelBank,
    psf_covariance: np.ndarray,
    model_variance: float,
    config: DeblenderConfig,
) -> list[DeblendedSource]:
    """Templates and NNLS spectra of the children of one parent."""
    rows, cols = bbox_slices
    x_origin, y_origin = image.xy0
    height, width = image.shape
    box_h, box_w = rows.stop - rows.start, cols.stop - cols.start
    kernel_half = bank.half
    det_image = detection["image"]
    templates = []
    for index in peaks:
        obj = objects[index]
        x, y = float(obj["x"]), float(obj["y"])
        # Adaptive moments on a cutout, other objects' pixels masked.
        half = int(min(max(8, math.ceil(4.0 * max(obj["a"], 1.0))), 64))
        ix, iy = int(round(x)), int(round(y))
        cy0, cy1 = max(0, iy - half), min(height, iy + half + 1)
        cx0, cx1 = max(0, ix - half), min(width, ix + half + 1)
        cut_seg = segmentation[cy0:cy1, cx0:cx1]
        weight = ((cut_seg == 0) | (cut_seg == index + 1)).astype(np.int32)
        moments = None
        if cy1 - cy0 >= 5 and cx1 - cx0 >= 5:
            moments = _adaptive_moments(
                det_image[cy0:cy1, cx0:cx1],
                weight,
                max(1.0, math.sqrt(obj["a"] * obj["b"])),
                galsim.PositionD(x - cx0 + 1.0, y - cy0 + 1.0),
            )
        if moments is None:
            covariance = np.array([[obj["x2"], obj["xy"]], [obj["xy"], obj["y2"]]], dtype=float)
        else:
            covariance = moments[0]
            # The Gaussian-weighted centroid is less noisy than sep's isophotal one; keep it if it agrees.
            hsm_x, hsm_y = moments[1][0] + cx0, moments[1][1] + cy0
            if math.hypot(hsm_x - x, hsm_y - y) < 1.0:
                x, y = hsm_x, hsm_y
        # A barycentre can fall outside a concave parent's box: keep every model centre inside it.
        x = min(max(x, cols.start), cols.stop - 1.0)
        y = min(max(y, rows.start), rows.stop - 1.0)
        ix, iy = int(round(x)), int(round(y))
        intrinsic = _clip_covariance(covariance - psf_covariance, 0.0, config.max_template_sigma**2)
        profiles = TEMPLATE_PROFILES[1:] if config.template_profile == "auto" else (config.template_profile,)
        best, best_score = None, -np.inf
        for profile in profiles:
            amplitudes, covariances = _profile_components(profile, intrinsic, model_variance)
            # The box holds the components that carry light (>1% of the flux) out to 4 sigma; the model
            # lives inside the parent's box, as scarlet's sources live inside their blend.
            widest = covariances[amplitudes > 0.01][-1]
            extent = int(math.ceil(4.0 * math.sqrt(np.linalg.eigvalsh(widest).max()))) + 1
            mx0 = max(x_origin + cols.start, x_origin + ix - extent)
            my0 = max(y_origin + rows.start, y_origin + iy - extent)
            mx1 = min(x_origin + cols.stop, x_origin + ix + extent + 1)
            my1 = min(y_origin + rows.stop, y_origin + iy + extent + 1)
            morph = gaussian_mixture_morph(
                amplitudes, covariances, (x + x_origin, y + y_origin), (mx0, my0, mx1, my1)
            )
            candidate = ((my0, mx0), morph, (x + x_origin, y + y_origin))
            if len(profiles) == 1:
                best = candidate
                break
            # Keep the profile that explains the child's own pixels of the detection image best.
            score = _detection_fit_score(
                morph, (my0, mx0), detection, (cy0, cy1, cx0, cx1), weight, bank, image.xy0
            )
            if best is None or score > best_score:
                best, best_score = candidate, score
        templates.append(best)

    # Observed-PSF templates, clipped to the parent box: (box offsets, [C, h, w] values).
    observed_templates = []
    for (my0, mx0), morph, _ in templates:
        observed = bank.convolve(morph)
        oy0 = my0 - kernel_half - (y_origin + rows.start)
        ox0 = mx0 - kernel_half - (x_origin + cols.start)
        sy0, sx0 = max(0, -oy0), max(0, -ox0)
        sy1, sx1 = min(observed.shape[1], box_h - oy0), min(observed.shape[2], box_w - ox0)
        observed_templates.append(
            ((slice(oy0 + sy0, oy0 + sy1), slice(ox0 + sx0, ox0 + sx1)), observed[:, sy0:sy1, sx0:sx1])
        )

    n = len(templates)
    spectra = np.zeros((n, len(image.bands)), dtype=np.float64)
    for b in range(len(image.bands)):
        usable = in_parent & fit_ok[b, rows, cols]
        if not usable.any():
            continue
        pixel_index = np.full((box_h, box_w), -1, dtype=np.int64)
        pixel_index[usable] = np.arange(int(usable.sum()))
        inv_sigma = 1.0 / np.sqrt(image.variance[b, rows, cols][usable].astype(np.float64))
        data = image.image[b, rows, cols][usable].astype(np.float64) * inv_sigma
        entries_row, entries_col, entries_val = [], [], []
        for k, (local_slices, values) in enumerate(observed_templates):
            local = pixel_index[local_slices]
            hit = local >= 0
            if not hit.any():
                continue
            entries_row.append(local[hit])
            entries_col.append(np.full(int(hit.sum()), k))
            entries_val.append(values[b][hit])
        if not entries_row:
            continue
        pix = np.concatenate(entries_row)
        design = sparse.csc_matrix(
            (np.concatenate(entries_val) * inv_sigma[pix], (pix, np.concatenate(entries_col))),
            shape=(data.size, n),
        )
        spectra[:, b] = _nnls_normal(design, data)

    children = []
    for k, ((my0, mx0), morph, centre) in enumerate(templates):
        if not np.any(spectra[k] > 0):
            continue
        children.append(
            DeblendedSource(
                source_id=0,
                parent_id=0,
                peak=(float(centre[0]), float(centre[1])),
                origin=(int(my0), int(mx0)),
                spectrum=spectra[k].astype(np.float32),
                morph=morph,
            )
        )
    return children


def _profile_components(profile: str, intrinsic: np.ndarray, model_variance: float):
    """Amplitudes and model-space covariances of a template whose best-fit Gaussian is ``intrinsic``."""
    if profile == "exponential":
        amplitudes, variances, adaptive_variance = exponential_mixture()
        scale = intrinsic / adaptive_variance  # scale length^2 x shape
    else:
        amplitudes, variances, scale = np.ones(1), np.ones(1), intrinsic
    return amplitudes, variances[:, None, None] * scale + model_variance * np.eye(2)


def _detection_fit_score(
    morph: np.ndarray,
    origin: tuple[int, int],
    detection: dict[str, Any],
    cutout: tuple[int, int, int, int],
    use: np.ndarray,
    bank: KernelBank,
    xy0: tuple[int, int],
) -> float:
    """``<D, T>^2 / <T, T>`` of a template in the detection image over the cutout (higher fits better)."""
    template = bank.convolve(morph, detection["weights"])
    cy0, cy1, cx0, cx1 = cutout
    oy0, ox0 = origin[0] - bank.half - xy0[1], origin[1] - bank.half - xy0[0]
    canvas = np.zeros((cy1 - cy0, cx1 - cx0))
    paste(canvas, template, (oy0, ox0), (cy0, cx0))
    weight = use * detection["valid"][cy0:cy1, cx0:cx1] / detection["sigma"][cy0:cy1, cx0:cx1] ** 2
    cross = float(np.sum(canvas * detection["image"][cy0:cy1, cx0:cx1] * weight))
    norm = float(np.sum(canvas * canvas * weight))
    return cross * abs(cross) / norm if norm > 0 else -np.inf


def _nnls_normal(design: sparse.spmatrix, data: np.ndarray) -> np.ndarray:
    """Non-negative least squares through the normal equations (the design is tall and sparse)."""
    gram = (design.T @ design).toarray()
    rhs = design.T @ data
    n = gram.shape[0]
    jitter = 1e-10 * max(float(np.trace(gram)) / max(n, 1), 1e-300)
    for _ in range(6):
        try:
            upper = np.linalg.cholesky(gram + jitter * np.eye(n)).T
            break
        except np.linalg.LinAlgError:
            jitter *= 100.0
    else:  # pragma: no cover - the jitter always wins eventually.
        return np.zeros(n)
    target = solve_triangular(upper, rhs, trans="T")
    solution, _ = nnls(upper, target, maxiter=50 * n)
    return solution
