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
"""Pixels and truth of one simulated coadd patch.

`render_scene` draws the noise-free multi-band scene of a patch; `simulate_patch` adds noise and masks, runs
the deblender (`deblend`) and the measurement (`measure`) and returns a `SimulatedPatch`.

How the pixels are made
-----------------------
* Every object is drawn once, at unit flux, in *model-PSF space*: its intrinsic profile (galsim bulge +
  disk, or a point) convolved with the deblender's model PSF (a pixel-integrated Gaussian, sigma 0.8 px) and
  the pixel.  Objects have one spectrum (no colour gradient), so each is exactly a scarlet-like
  ``spectrum x morph`` model.
* The observed PSF of band ``b`` is ``model_psf * K_b`` with ``K_b`` a Moffat (beta 3) whose width makes the
  observed FWHM equal to the LSST median seeing of the band (``surveycodex``), scaled by a patch-to-patch
  factor; a small patch-wide PSF ellipticity is added.  The image of band ``b`` is the sum of
  ``flux_b x morph`` convolved with ``K_b``.
* Noise: background-dominated 10-year coadd noise (`survey.BandConditions`) plus the sources' Poisson noise;
  the variance plane is exactly the variance of the noise added.  The standard normal deviates come from
  blocks of 128 x 128 *tract* pixels seeded by ``(seed, tract, block)``, so overlapping patches share them.
* Masks (bits of `..core.multiband.DEFAULT_MASK_PLANES`):
  ``SAT`` where a single 30 s visit would saturate, plus bleed trails: the charge above saturation in each
  column spills up and down the column (image set to the saturation level there);
  ``NO_DATA`` in a corner triangle or an edge strip of some patches (image and variance are NaN there, as in
  Rubin coadds);  ``EDGE`` along the patch border, as wide as the detection smoothing kernel's radius
  (``int(7 sigma_psf + 0.5)``, afw's ``SourceDetectionTask``); ``DETECTED`` on the detection footprints.
* Artifacts (presets with ``artifact_rate`` or ``artifact_anywhere_per_mpix``, see `artifacts`): ghosts,
  rays, scattered light and streaks are added to the noise-free image before the noise (their photon noise
  is in the variance), so the deblender sees them as a real one would; they are recorded in
  ``SimulatedPatch.truth_artifacts`` and change nothing else (truth, blendedness, saturation).

Truth
-----
The ``truth`` table has one row per object whose centre lies in the patch or whose footprint is not empty.
An object's footprint is the set of patch pixels where its noise-free observed image *summed over bands*
exceeds ``truth_threshold_sigma`` (default 1) times the per-pixel noise of the band sum,
``sqrt(sum_b sigma_b^2)``; ``NO_DATA`` pixels are excluded.  ``blendedness`` is BTK's
``1 - (S_k . S_k) / (S_all . S_k)`` on the band-summed noise-free image of the patch.
"""

from __future__ import annotations

__all__ = [
    "PatchScene",
    "no_data_region",
    "render_scene",
    "simulate_patch",
    "truth_blends",
]

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import astropy.units as u
import galsim
import numpy as np
from astropy.table import Table
from scipy import ndimage
from scipy.signal import fftconvolve

from ..core.footprints import flatten_spans, mask_to_spans, spans_to_mask
from ..core.labels import detection_weights
from ..core.multiband import DEFAULT_MASK_PLANES, MultibandImage
from .artifacts import render_patch_artifacts
from .catalog import band_fluxes, sources_near_patch
from .deblend import DEBLENDER_NAME, DeblenderConfig, deblend_patch
from .ids import pack_id
from .measure import build_object_tables
from .models import KernelBank, integrated_gaussian, paste
from .morphology import morphology_profile
from .presets import SimPreset, get_preset, patch_geometry
from .survey import BandConditions, lsst_band_conditions, njy_to_mag
from .types import DeblendedBlend, DeblendedSource, PatchGeometry, SimulatedPatch

STREAM_PSF = 2
STREAM_NOISE = 3
STREAM_NO_DATA = 4
STREAM_DEPTH = 5
NOISE_BLOCK = 128
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_GSPARAMS = galsim.GSParams(folding_threshold=5e-3, maxk_threshold=1e-3, minimum_fft_size=32)


@dataclass
class PatchScene:
    """The noise-free scene of one patch and what it was made of.

    Parameters
    ----------
    preset : `SimPreset`
        The preset.
    seed : `int`
        Seed of the tract's scene.
    geometry : `PatchGeometry`
        Patch placement.
    conditions : `dict` [`str`, `BandConditions`]
        Per-band depth and seeing of this patch.
    psf_images : `dict` [`str`, `numpy.ndarray`]
        Observed PSF per band (``model_psf * kernels[band]``, cropped to ``psf_size``, unit sum).
    psf_fwhm_arcsec : `dict` [`str`, `float`]
        Measured FWHM of ``psf_images``.
    kernels : `dict` [`str`, `numpy.ndarray`]
        The true kernels from model-PSF space to each band's PSF.
    model_psf : `numpy.ndarray`
        Pixel-integrated Gaussian model PSF (``psf_size`` square, unit sum).
    sources : `astropy.table.Table`
        Every object that reaches the patch (rows of `catalog.draw_cell_sources` plus ``flux_<band>``).
    stamps : `list` [`numpy.ndarray`]
        Unit-sum model-space image of each object (odd square, centred on the object's nearest pixel).
    stamp_origins : `numpy.ndarray`
        ``[N, 2]`` ``(y0, x0)`` parent coordinates of each stamp.
    noise_free : `numpy.ndarray`
        ``[C, H, W]`` noise-free observed image of the patch (nJy).
    """

    preset: SimPreset
    seed: int
    geometry: PatchGeometry
    conditions: dict[str, BandConditions]
    psf_images: dict[str, np.ndarray]
    psf_fwhm_arcsec: dict[str, float]
    kernels: dict[str, np.ndarray]
    model_psf: np.ndarray
    sources: Table
    stamps: list[np.ndarray]
    stamp_origins: np.ndarray
    noise_free: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bands(self) -> tuple[str, ...]:
        """Bands, in image order."""
        return self.preset.bands

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x_begin, y_begin, x_end, y_end)`` of the patch, end exclusive."""
        g = self.geometry
        return g.x0, g.y0, g.x0 + g.width, g.y0 + g.height

    def render_subset(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Noise-free ``[C, H, W]`` patch image of the objects ``sources[indices]`` only."""
        return _render_layers(self, np.asarray(indices, dtype=int))


def _band_conditions(preset: SimPreset, tract: int, patch: int, seed: int) -> dict[str, BandConditions]:
    """Per-band conditions of a patch: LSST medians, with patch-to-patch depth and seeing variations."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, tract, patch, STREAM_DEPTH]))
    seeing = math.exp(rng.normal(0.0, preset.psf_fwhm_scatter))
    conditions = {}
    for band in preset.bands:
        base = lsst_band_conditions(band, preset.pixel_scale_arcsec)
        median = base.psf_fwhm_arcsec if preset.seeing_fwhm_arcsec is None else preset.seeing_fwhm_arcsec
        fwhm = median * seeing * math.exp(rng.normal(0.0, preset.psf_fwhm_scatter / 3.0))
        depth = rng.normal(0.0, preset.depth_scatter_mag) + preset.depth_offset_mag
        conditions[band] = base.with_depth_offset(depth).with_fwhm(fwhm)
    return conditions


def _crop_centre(image: np.ndarray, size: int) -> np.ndarray:
    cy, cx = image.shape[0] // 2, image.shape[1] // 2
    half = size // 2
    return image[cy - half : cy + half + 1, cx - half : cx + half + 1]


def _make_psfs(preset: SimPreset, conditions: dict[str, BandConditions], rng: np.random.Generator):
    """Model PSF, per-band kernels and observed PSFs with the target FWHM (a few secant steps)."""
    size = preset.psf_size
    scale = preset.pixel_scale_arcsec
    model_psf = integrated_gaussian(preset.model_psf_sigma, size)
    shear = rng.normal(0.0, preset.psf_ellipticity_scatter, 2)
    model_fwhm = preset.model_psf_sigma * _FWHM_PER_SIGMA * scale

    def observed(kernel_fwhm: float) -> tuple[np.ndarray, np.ndarray, float]:
        moffat = galsim.Moffat(beta=preset.psf_moffat_beta, fwhm=kernel_fwhm).shear(g1=shear[0], g2=shear[1])
        kernel = moffat.drawImage(nx=size, ny=size, scale=scale, method="no_pixel").array.astype(float)
        kernel /= kernel.sum()
        psf = _crop_centre(fftconvolve(model_psf, kernel, mode="full"), size)
        psf /= psf.sum()
        fwhm = galsim.Image(psf, scale=scale).calculateFWHM()
        return kernel, psf, float(fwhm)

    kernels, psfs, fwhms = {}, {}, {}
    for band, cond in conditions.items():
        target = cond.psf_fwhm_arcsec
        guesses = [math.sqrt(max(target**2 - model_fwhm**2, (0.5 * target) ** 2))]
        kernel, psf, fwhm = observed(guesses[0])
        values = [fwhm - target]
        guesses.append(guesses[0] * target / fwhm)
        for _ in range(4):
            kernel, psf, fwhm = observed(guesses[-1])
            values.append(fwhm - target)
            if abs(values[-1]) < 1e-3 * target:
                break
            slope = (values[-1] - values[-2]) / (guesses[-1] - guesses[-2])
            guesses.append(guesses[-1] - values[-1] / slope if slope > 0 else guesses[-1] * target / fwhm)
        kernels[band], psfs[band], fwhms[band] = kernel, psf, fwhm
    return model_psf, kernels, psfs, fwhms


def _draw_morph(row: Any, preset: SimPreset, model: galsim.GSObject) -> np.ndarray:
    """Unit-sum model-space stamp of one object, centred on its nearest pixel."""
    half = int(row["stamp_half"])
    size = 2 * half + 1
    offset = (float(row["x"] - np.rint(row["x"])), float(row["y"] - np.rint(row["y"])))
    if row["is_star"]:
        return integrated_gaussian(preset.model_psf_sigma, size, offset).astype(np.float32)
    if preset.morphology:
        profile = morphology_profile(row, _GSPARAMS)
    else:
        hlr = float(row["size"])
        bulge_fraction = float(row["bulge_fraction"])
        components = []
        if bulge_fraction > 0:
            bulge = galsim.DeVaucouleurs(half_light_radius=hlr, trunc=5.0 * hlr, gsparams=_GSPARAMS)
            components.append(bulge.withFlux(bulge_fraction))
        if bulge_fraction < 1:
            disk = galsim.Exponential(half_light_radius=hlr, gsparams=_GSPARAMS)
            components.append(disk.withFlux(1.0 - bulge_fraction))
        profile = galsim.Add(components).shear(g1=float(row["e1"]), g2=float(row["e2"]))
    convolved = galsim.Convolve(profile, model, gsparams=_GSPARAMS)
    stamp = convolved.drawImage(nx=size, ny=size, scale=preset.pixel_scale_arcsec, offset=offset).array
    # The image must hold exactly the catalogue flux: renormalise what the stamp caught (>= 99.5%).
    return (stamp / stamp.sum()).astype(np.float32)


def _draw_chunk(sources: Table, preset: SimPreset, model: galsim.GSObject) -> list[np.ndarray]:
    """`_draw_morph` for every row of ``sources`` (one worker's share of `_draw_stamps`)."""
    return [_draw_morph(row, preset, model) for row in sources]


def _draw_stamps(sources: Table, preset: SimPreset, model: galsim.GSObject, jobs: int) -> list[np.ndarray]:
    """Model-space stamps of all ``sources``, in row order, drawn by ``jobs`` processes.

    Each stamp depends on its own row alone (no random draws), so the stamps do not depend on ``jobs``.
    """
    if jobs <= 1 or len(sources) < 2 * jobs:
        return _draw_chunk(sources, preset, model)
    # Several chunks per worker even out galaxies that cost more than others.
    bounds = np.linspace(0, len(sources), 4 * jobs + 1).astype(int)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunks = pool.map(
            _draw_chunk,
            [sources[begin:end] for begin, end in zip(bounds[:-1], bounds[1:])],
            [preset] * (len(bounds) - 1),
            [model] * (len(bounds) - 1),
        )
        return [stamp for chunk in chunks for stamp in chunk]


def _render_layers(scene: PatchScene, indices: np.ndarray) -> np.ndarray:
    """Noise-free patch image of some of the scene's objects: model-space layers, then one FFT per band."""
    half = scene.preset.psf_size // 2
    x_begin, y_begin, x_end, y_end = scene.bbox
    canvas_origin = (y_begin - half, x_begin - half)
    canvas = np.zeros((len(scene.bands), y_end - y_begin + 2 * half, x_end - x_begin + 2 * half))
    fluxes = band_fluxes(scene.sources, scene.bands)
    for index in indices:
        stamp = scene.stamps[index]
        paste(canvas, fluxes[index][:, None, None] * stamp, tuple(scene.stamp_origins[index]), canvas_origin)
    return np.stack(
        [fftconvolve(canvas[i], scene.kernels[b], mode="valid") for i, b in enumerate(scene.bands)]
    )


def render_scene(
    preset: SimPreset | str,
    tract: int,
    patch_x: int,
    patch_y: int,
    seed: int | None = None,
    jobs: int = 1,
) -> PatchScene:
    """Draw the noise-free scene of a patch.

    Parameters
    ----------
    preset : `SimPreset` or `str`
        The preset or its name.
    tract : `int`
        Tract id of the preset.
    patch_x, patch_y : `int`
        Patch indices.
    seed : `int`, optional
        Seed of the tract's scene; the preset's default seed for this tract if `None`.
    jobs : `int`
        Processes that draw the objects' stamps (the scene does not depend on it).

    Returns
    -------
    scene : `PatchScene`
        Sources, their model-space stamps, PSFs and the noise-free image.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    seed = preset.tract_spec(tract).seed if seed is None else int(seed)
    geometry = patch_geometry(preset, tract, patch_x, patch_y)
    start = time.perf_counter()
    conditions = _band_conditions(preset, tract, geometry.patch, seed)
    psf_rng = np.random.default_rng(np.random.SeedSequence([seed, tract, geometry.patch, STREAM_PSF]))
    model_psf, kernels, psf_images, fwhms = _make_psfs(preset, conditions, psf_rng)
    bbox = (geometry.x0, geometry.y0, geometry.x0 + geometry.width, geometry.y0 + geometry.height)
    sources = sources_near_patch(preset, tract, bbox, seed, reach=preset.psf_size // 2)
    fluxes = band_fluxes(sources, preset.bands)
    for i, band in enumerate(preset.bands):
        sources[f"flux_{band}"] = fluxes[:, i]
    model = galsim.Gaussian(sigma=preset.model_psf_sigma * preset.pixel_scale_arcsec, gsparams=_GSPARAMS)
    stamps = _draw_stamps(sources, preset, model, jobs)
    half = np.asarray(sources["stamp_half"], dtype=np.int64)
    origins = np.stack(
        [np.rint(sources["y"]).astype(np.int64) - half, np.rint(sources["x"]).astype(np.int64) - half], 1
    )
    timings = {"draw_objects": time.perf_counter() - start}
    scene = PatchScene(
        preset=preset,
        seed=seed,
        geometry=geometry,
        conditions=conditions,
        psf_images={b: psf_images[b].astype(np.float32) for b in preset.bands},
        psf_fwhm_arcsec=fwhms,
        kernels=kernels,
        model_psf=model_psf.astype(np.float32),
        sources=sources,
        stamps=stamps,
        stamp_origins=origins.reshape(-1, 2),
        noise_free=np.zeros((len(preset.bands), geometry.height, geometry.width)),
        timings=timings,
    )
    start = time.perf_counter()
    scene.noise_free = _render_layers(scene, np.arange(len(sources))).astype(np.float32)
    scene.timings["convolve"] = time.perf_counter() - start
    return scene


# ---------------------------------------------------------------------------------------------------------
# Noise and masks


def _tract_normals(seed: int, tract: int, bbox: tuple[int, int, int, int], n_bands: int) -> np.ndarray:
    """Standard normal deviates ``[C, H, W]`` that depend only on the tract pixel (blocks of NOISE_BLOCK)."""
    x_begin, y_begin, x_end, y_end = bbox
    out = np.empty((n_bands, y_end - y_begin, x_end - x_begin), dtype=np.float32)
    for block_y in range(y_begin // NOISE_BLOCK, (y_end - 1) // NOISE_BLOCK + 1):
        for block_x in range(x_begin // NOISE_BLOCK, (x_end - 1) // NOISE_BLOCK + 1):
            rng = np.random.default_rng(np.random.SeedSequence([seed, tract, block_y, block_x, STREAM_NOISE]))
            block = rng.standard_normal((n_bands, NOISE_BLOCK, NOISE_BLOCK), dtype=np.float32)
            by0, bx0 = block_y * NOISE_BLOCK, block_x * NOISE_BLOCK
            ys, ye = max(by0, y_begin), min(by0 + NOISE_BLOCK, y_end)
            xs, xe = max(bx0, x_begin), min(bx0 + NOISE_BLOCK, x_end)
            out[:, ys - y_begin : ye - y_begin, xs - x_begin : xe - x_begin] = block[
                :, ys - by0 : ye - by0, xs - bx0 : xe - bx0
            ]
    return out


def no_data_region(preset: SimPreset, tract: int, seed: int, bbox: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the tract's ``NO_DATA`` regions inside ``bbox``.

    A seeded choice of ``round(no_data_fraction x n_patches)`` patches each lose a corner triangle (legs
    20-45% of the patch side) or a strip along one edge (6-15% of the side) of their outer box; the regions
    are defined in tract coordinates, so overlapping patches agree.
    """
    x_begin, y_begin, x_end, y_end = bbox
    out = np.zeros((y_end - y_begin, x_end - x_begin), dtype=bool)
    n_chosen = int(round(preset.no_data_fraction * preset.n_patches))
    if n_chosen == 0:
        return out
    order = np.random.default_rng(np.random.SeedSequence([seed, tract, STREAM_NO_DATA])).permutation(
        preset.n_patches
    )
    yy, xx = np.ogrid[y_begin:y_end, x_begin:x_end]
    size = preset.patch_size
    for patch in np.sort(order[:n_chosen]):
        geometry = patch_geometry(preset, tract, *preset.patch_xy(int(patch)))
        rng = np.random.default_rng(np.random.SeedSequence([seed, tract, int(patch), STREAM_NO_DATA]))
        kind = rng.integers(2)
        corner_x, corner_y = rng.integers(2, size=2)
        # Local coordinates measured from the chosen corner of the anchor patch's outer box, inwards.
        u_coord = (xx - geometry.x0) if corner_x == 0 else (geometry.x0 + size - 1 - xx)
        v_coord = (yy - geometry.y0) if corner_y == 0 else (geometry.y0 + size - 1 - yy)
        inside = (u_coord >= 0) & (u_coord < size) & (v_coord >= 0) & (v_coord < size)
        if kind == 0:
            leg_u, leg_v = rng.uniform(0.2, 0.45, 2) * size
            region = u_coord / leg_u + v_coord / leg_v < 1.0
        else:
            width = rng.uniform(0.06, 0.15) * size
            region = u_coord < width if rng.integers(2) == 0 else v_coord < width
        out |= inside & region
    return out


def _saturate(image: np.ndarray, noise_free: np.ndarray, level: float) -> np.ndarray:
    """Clip saturated pixels and add bleed trails along columns; return the SAT mask (in place on image)."""
    saturated = noise_free > level
    if not saturated.any():
        return saturated
    labels, n_regions = ndimage.label(saturated)
    sat = saturated.copy()
    height = image.shape[0]
    for region, slices in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = slices
        sub = labels[slices] == region
        excess = np.where(sub, noise_free[slices] - level, 0.0).sum(axis=0)
        for j, column in enumerate(range(cols.start, cols.stop)):
            in_column = np.nonzero(sub[:, j])[0]
            if in_column.size == 0:
                continue
            # The charge above full well spills equally up and down the column.
            length = int(math.ceil(excess[j] / level / 2.0))
            top = max(0, rows.start + in_column.min() - length)
            bottom = min(height, rows.start + in_column.max() + length + 1)
            sat[top:bottom, column] = True
    image[sat] = level
    return sat


def truth_blends(
    footprints: list[np.ndarray], shape: tuple[int, int], xy0: tuple[int, int]
) -> list[list[int]]:
    """Group footprints that overlap, directly or through others.

    Parameters
    ----------
    footprints : `list` [`numpy.ndarray`]
        ``(N, 3)`` spans of each object (parent coordinates), possibly empty.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the image the spans lie in.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of the image's ``[0, 0]`` pixel.

    Returns
    -------
    groups : `list` [`list` [`int`]]
        Positions in ``footprints`` of each group's members; empty footprints belong to no group.
    """
    owner = np.full(shape, -1, dtype=np.int64)
    parent = list(range(len(footprints)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for position, spans in enumerate(footprints):
        if spans.shape[0] == 0:
            continue
        rows = spans[:, 0] - xy0[1]
        for row, x0, x1 in zip(rows, spans[:, 1] - xy0[0], spans[:, 2] - xy0[0]):
            segment = owner[row, x0 : x1 + 1]
            for other in np.unique(segment[segment >= 0]):
                root_a, root_b = find(position), find(int(other))
                if root_a != root_b:
                    parent[root_b] = root_a
            segment[:] = position
    groups: dict[int, list[int]] = {}
    for position, spans in enumerate(footprints):
        if spans.shape[0]:
            groups.setdefault(find(position), []).append(position)
    return sorted(groups.values(), key=lambda g: g[0])


def _cropped_banks(kernels: np.ndarray) -> list[tuple[float, KernelBank]]:
    """Kernel banks cropped to growing sizes, each with the largest kernel value it leaves out."""
    size = kernels.shape[1]
    banks = []
    for crop in (15, 25, 41, 61):
        if crop < size:
            start = (size - crop) // 2
            outside = kernels.copy()
            outside[:, start : start + crop, start : start + crop] = 0.0
            inner = kernels[:, start : start + crop, start : start + crop]
            banks.append((float(outside.max()), KernelBank(inner)))
    banks.append((0.0, KernelBank(kernels)))
    return banks


def _truth_table(scene: PatchScene, no_data: np.ndarray) -> tuple[Table, list[np.ndarray], list[tuple]]:
    """Truth rows, their footprints and model-space stamps (for exact models)."""
    preset, geometry = scene.preset, scene.geometry
    x_begin, y_begin, x_end, y_end = scene.bbox
    # The inverse-variance band sum in units of its own sky noise.
    weights = detection_weights(
        "inverse_variance",
        np.array([scene.conditions[b].sky_sigma_njy for b in scene.bands]),
        unit_noise=True,
    )
    threshold = preset.truth_threshold_sigma
    total = np.tensordot(weights, scene.noise_free, axes=1)
    fluxes = band_fluxes(scene.sources, scene.bands)
    kernel_stack = np.stack([scene.kernels[b] for b in scene.bands])
    banks = _cropped_banks(kernel_stack)
    half = kernel_stack.shape[1] // 2
    # Upper bound of an object's value in the detection image at the kernel crop edge: choose the smallest
    # crop whose neglected wing stays below 1% of the footprint threshold.
    weighted_flux = fluxes @ weights
    src_x = np.asarray(scene.sources["x"], dtype=float)
    src_y = np.asarray(scene.sources["y"], dtype=float)
    keep, spans_list, area, blendedness, snr, model_stamps = [], [], [], [], [], []
    for index in range(len(scene.sources)):
        stamp = scene.stamps[index]
        sy0, sx0 = (int(v) for v in scene.stamp_origins[index])
        oy0, ox0 = sy0 - half, sx0 - half
        # Clip the observed stamp to the patch.
        cy0, cx0 = max(oy0, y_begin), max(ox0, x_begin)
        cy1 = min(oy0 + stamp.shape[0] + 2 * half, y_end)
        cx1 = min(ox0 + stamp.shape[1] + 2 * half, x_end)
        centre_in = (
            x_begin - 0.5 <= src_x[index] < x_end - 0.5 and y_begin - 0.5 <= src_y[index] < y_end - 0.5
        )
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        # Observed image of the object in the detection image (S/N units per pixel), on the full kernel grid.
        bank = next(b for wing, b in banks if weighted_flux[index] * wing < 0.01 * threshold or wing == 0.0)
        observed = bank.convolve(stamp, fluxes[index] * weights)
        if bank.half < half:
            observed = np.pad(observed, half - bank.half)
        part = observed[cy0 - oy0 : cy1 - oy0, cx0 - ox0 : cx1 - ox0]
        patch_slice = (slice(cy0 - y_begin, cy1 - y_begin), slice(cx0 - x_begin, cx1 - x_begin))
        above = (part > threshold) & ~no_data[patch_slice]
        if not centre_in and not above.any():
            continue
        keep.append(index)
        spans_list.append(mask_to_spans(above, xy0=(cx0, cy0)))
        area.append(int(above.sum()))
        self_dot = float(np.sum(part * part))
        all_dot = float(np.sum(total[patch_slice] * part))
        blendedness.append(1.0 - self_dot / all_dot if all_dot > 0 else np.nan)
        snr.append(math.sqrt(self_dot))
        # Model-space stamp for exact models: not clipped, so that rendering it is exact up to the patch edge.
        model_stamps.append((sy0, sx0, stamp))

    rows = scene.sources[keep]
    x, y = np.asarray(rows["x"], dtype=float), np.asarray(rows["y"], dtype=float)
    ra, dec = geometry.wcs.pixel_to_world_values(x, y)
    ix0, iy0, ix1, iy1 = preset.inner_bbox(geometry.patch_x, geometry.patch_y)
    is_star = np.asarray(rows["is_star"], dtype=bool)
    truth = Table()
    _column(
        truth, "id", np.asarray(rows["id"], dtype=np.int64), None, "Truth id, unique in the tract (sim.ids)"
    )
    _column(truth, "ra", np.asarray(ra) % 360.0, u.deg, "Right ascension (ICRS)")
    _column(truth, "dec", np.asarray(dec), u.deg, "Declination (ICRS)")
    _column(truth, "x", x, u.pix, "Centre column, parent (tract) pixel coordinates")
    _column(truth, "y", y, u.pix, "Centre row, parent (tract) pixel coordinates")
    _column(truth, "type", np.where(is_star, "star", "galaxy").astype("U6"), None, "'star' or 'galaxy'")
    _column(truth, "is_star", is_star, None, "True for point sources")
    for band in scene.bands:
        flux = np.asarray(rows[f"flux_{band}"], dtype=float)
        _column(truth, f"flux_{band}", flux, u.nJy, f"True total flux in band {band}")
    for band in scene.bands:
        mag = np.asarray(njy_to_mag(np.asarray(rows[f"flux_{band}"], dtype=float)), dtype=float)
        _column(truth, f"mag_{band}", mag, u.ABmag, f"True AB magnitude in band {band}")
    _column(truth, "size", rows["size"], u.arcsec, "Half-light radius of the intrinsic profile (0 for stars)")
    _column(truth, "e1", rows["e1"], None, "Intrinsic ellipticity (reduced shear (a-b)/(a+b)), along x")
    _column(truth, "e2", rows["e2"], None, "Intrinsic ellipticity (reduced shear (a-b)/(a+b)), at 45 deg")
    _column(truth, "bulge_fraction", rows["bulge_fraction"], None, "Bulge (de Vaucouleurs) to total flux")
    if "morph_type" in rows.colnames:
        _column(truth, "morph_type", rows["morph_type"], None, "Hubble type (sim.morphology); '' for stars")
        _column(truth, "knot_fraction", rows["knot_fraction"], None, "Fraction of the flux in knots")
        _column(
            truth,
            "morph_asymmetry",
            rows["morph_asymmetry"],
            None,
            "Offset of the smooth light (half-light radii)",
        )
    _column(
        truth,
        "blendedness",
        blendedness,
        None,
        "BTK blendedness 1 - S_k.S_k / S_all.S_k on the noise-free detection image of the patch",
    )
    _column(truth, "snr_detection", snr, None, "Matched-filter S/N in the detection image (sky noise only)")
    inner = (x >= ix0 - 0.5) & (x < ix1 - 0.5) & (y >= iy0 - 0.5) & (y < iy1 - 0.5)
    _column(truth, "is_inner", inner, None, "Centre in the patch's inner region (each object in one patch)")
    _column(truth, "footprint_area", np.asarray(area, dtype=np.int32), u.pix, "Pixels in the truth footprint")
    spans_column = np.empty(len(keep), dtype=object)
    for i, spans in enumerate(spans_list):
        spans_column[i] = flatten_spans(spans)
    truth["spans"] = spans_column
    truth["spans"].description = (
        "Truth footprint, flattened int32 spans (y, x_begin, x_end inclusive) in parent coordinates: patch "
        f"pixels where the object's noise-free detection image exceeds {preset.truth_threshold_sigma:g} "
        "sigma of its per-pixel sky noise, NO_DATA excluded"
    )
    truth.meta["detection_weights"] = {b: float(w) for b, w in zip(scene.bands, weights)}
    truth.meta["truth_threshold_sigma"] = threshold
    return truth, spans_list, model_stamps


def _column(table: Table, name: str, values: Any, unit: Any, description: str) -> None:
    """Add a column with its unit and description."""
    table[name] = np.asarray(values, dtype=float) if np.asarray(values).dtype == object else values
    table[name].unit = unit
    table[name].description = description


def _exact_blends(
    truth: Table,
    spans_list: list[np.ndarray],
    model_stamps: list[tuple],
    groups: list[list[int]],
    scene: PatchScene,
) -> list[DeblendedBlend]:
    """Blends of exact models: truth objects with a footprint, grouped by footprint overlap."""
    geometry = scene.geometry
    flux_columns = [f"flux_{b}" for b in scene.bands]
    blends = []
    counter = 0
    for group in groups:
        children = []
        for position in group:
            my0, mx0, stamp = model_stamps[position]
            peak_value = float(stamp.max())
            fluxes = np.array([truth[c][position] for c in flux_columns], dtype=float)
            children.append(
                DeblendedSource(
                    source_id=int(truth["id"][position]),
                    parent_id=0,
                    peak=(float(truth["x"][position]), float(truth["y"][position])),
                    origin=(int(my0), int(mx0)),
                    spectrum=(fluxes * peak_value).astype(np.float32),
                    morph=(stamp / peak_value).astype(np.float32),
                    is_isolated=len(group) == 1,
                )
            )
        if len(group) == 1:
            parent_id = children[0].source_id
        else:
            counter += 1
            parent_id = pack_id(geometry.tract, geometry.patch, counter)
        for child in children:
            child.parent_id = parent_id
        spans = np.concatenate([spans_list[p] for p in group])
        x_min, y_min = int(spans[:, 1].min()), int(spans[:, 0].min())
        x_max, y_max = int(spans[:, 2].max()), int(spans[:, 0].max())
        mask = spans_to_mask(spans, (y_max - y_min + 1, x_max - x_min + 1), (x_min, y_min))
        blends.append(
            DeblendedBlend(
                parent_id=parent_id,
                origin=(y_min, x_min),
                shape=(y_max - y_min + 1, x_max - x_min + 1),
                spans=mask_to_spans(mask, (x_min, y_min)),
                children=children,
            )
        )
    return blends


def simulate_patch(
    preset: SimPreset | str,
    tract: int,
    patch_x: int,
    patch_y: int,
    seed: int | None = None,
    truth_models: bool = False,
    deblender_config: DeblenderConfig | None = None,
    jobs: int = 1,
    object_tables: bool = True,
) -> SimulatedPatch:
    """Simulate one coadd patch: pixels, truth, deblending and object tables.

    Parameters
    ----------
    preset : `SimPreset` or `str`
        The preset or its name.
    tract : `int`
        Tract id of the preset.
    patch_x, patch_y : `int`
        Patch indices.
    seed : `int`, optional
        Seed of the tract's scene (the preset's seed for the tract if `None`).  The same seed gives identical
        pixels, truth and catalogs.
    truth_models : `bool`
        Replace the deblender's output by exact models (each truth object with a footprint, its true
        model-space profile and spectrum, grouped into blends by footprint overlap).  Skips detection.
    deblender_config : `DeblenderConfig`, optional
        Deblender settings.
    jobs : `int`
        Processes that draw the objects (see `render_scene`; the patch does not depend on it).
    object_tables : `bool`
        Measure the object tables.  `False` leaves ``object_deblend`` and ``object_patch`` empty, for uses
        that need only the pixels and the truth (benchmarks): measuring is the slowest step.

    Returns
    -------
    patch : `SimulatedPatch`
        Everything the repository writer needs.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    scene = render_scene(preset, tract, patch_x, patch_y, seed, jobs=jobs)
    geometry = scene.geometry
    bbox = scene.bbox
    bands = preset.bands
    timings = dict(scene.timings)

    start = time.perf_counter()
    variance = np.empty(scene.noise_free.shape, dtype=np.float32)
    image = np.empty(scene.noise_free.shape, dtype=np.float32)
    mask = np.zeros(scene.noise_free.shape, dtype=np.int32)
    normals = _tract_normals(scene.seed, tract, bbox, len(bands))
    no_data = no_data_region(preset, tract, scene.seed, bbox)
    planes = DEFAULT_MASK_PLANES
    artifact_light, truth_artifacts = None, None
    if preset.has_artifacts:
        artifact_start = time.perf_counter()
        sky_sigmas = [scene.conditions[band].sky_sigma_njy for band in bands]
        artifact_light, truth_artifacts = render_patch_artifacts(
            preset, geometry, scene.seed, sky_sigmas, no_data
        )
        timings["artifacts"] = time.perf_counter() - artifact_start
    for i, band in enumerate(bands):
        cond = scene.conditions[band]
        # Artifacts add light (and its photon noise) but are not objects: the truth ignores them.
        signal = scene.noise_free[i] if artifact_light is None else scene.noise_free[i] + artifact_light[i]
        variance[i] = cond.sky_sigma_njy**2 + np.clip(signal, 0.0, None) * cond.njy_per_electron
        image[i] = signal + np.sqrt(variance[i]) * normals[i]
        sat = _saturate(image[i], scene.noise_free[i], cond.saturation_njy)
        mask[i][sat] |= 1 << planes["SAT"]
        sigma_px = scene.psf_fwhm_arcsec[band] / preset.pixel_scale_arcsec / _FWHM_PER_SIGMA
        edge = int(7.0 * sigma_px + 0.5)
        mask[i, :edge, :] |= 1 << planes["EDGE"]
        mask[i, -edge:, :] |= 1 << planes["EDGE"]
        mask[i, :, :edge] |= 1 << planes["EDGE"]
        mask[i, :, -edge:] |= 1 << planes["EDGE"]
    image[:, no_data] = np.nan
    variance[:, no_data] = np.nan
    mask[:, no_data] = 1 << planes["NO_DATA"]
    timings["noise_masks"] = time.perf_counter() - start

    start = time.perf_counter()
    truth, spans_list, model_stamps = _truth_table(scene, no_data)
    timings["truth"] = time.perf_counter() - start

    multiband = MultibandImage(
        bands=bands,
        image=image,
        variance=variance,
        mask=mask,
        mask_planes=dict(planes),
        wcs=geometry.wcs,
        xy0=(geometry.x0, geometry.y0),
        metadata={"BUNIT": "nJy", "psf_fwhm_arcsec": dict(scene.psf_fwhm_arcsec)},
    )

    start = time.perf_counter()
    groups = truth_blends(spans_list, (geometry.height, geometry.width), (geometry.x0, geometry.y0))
    group_sizes = np.zeros(len(truth), dtype=int)
    for group in groups:
        group_sizes[group] = len(group)
    if truth_models:
        blends = _exact_blends(truth, spans_list, model_stamps, groups, scene)
        parent_flags: dict[int, dict[str, Any]] = {}
        deblender_name = "truth models (exact model-space profiles and spectra)"
        n_detections = sum(len(b.children) for b in blends)
    else:
        config = deblender_config if deblender_config is not None else DeblenderConfig()
        result = deblend_patch(multiband, scene.psf_images, scene.model_psf, geometry, config)
        blends, parent_flags = result.blends, result.parent_flags
        deblender_name = DEBLENDER_NAME
        n_detections = result.n_detections
    timings["deblend"] = time.perf_counter() - start
    # DETECTED: the parent footprints, in every band.
    # One rasterisation of all spans (the union; overlaps are fine): a full-patch mask per blend cost
    # ~0.1 s x tens of thousands of blends on benchmark-size patches.
    all_spans = np.concatenate([blend.spans for blend in blends]) if blends else np.zeros((0, 3), np.int32)
    detected = spans_to_mask(all_spans, (geometry.height, geometry.width), (geometry.x0, geometry.y0))
    mask[:, detected & ~no_data] |= 1 << planes["DETECTED"]
    multiband.mask = mask

    start = time.perf_counter()
    object_deblend, object_patch = Table(), Table()
    if object_tables:
        object_deblend, object_patch = build_object_tables(
            blends,
            multiband,
            scene.psf_images,
            scene.model_psf,
            geometry,
            parent_flags=parent_flags,
            inner_bbox=preset.inner_bbox(patch_x, patch_y),
            footprint_threshold_sigma=preset.truth_threshold_sigma,
        )
    timings["measure"] = time.perf_counter() - start

    has_footprint = np.asarray(truth["footprint_area"]) > 0
    # For every child, the number of children of its parent.
    children_per_parent = np.array([len(b.children) for b in blends for _ in b.children], dtype=int)
    bright = has_footprint & (np.asarray(truth["snr_detection"]) >= 5.0)
    in_patch = np.asarray(truth["is_inner"])
    n_kernel = {b: 1.0 / float(np.sum(scene.psf_images[b].astype(float) ** 2)) for b in bands}
    metadata: dict[str, Any] = {
        "preset": preset.name,
        "seed": scene.seed,
        "tract": tract,
        "patch": geometry.patch,
        "patch_x": patch_x,
        "patch_y": patch_y,
        "bands": list(bands),
        "pixel_scale_arcsec": preset.pixel_scale_arcsec,
        "depth_5sigma_mag": {b: scene.conditions[b].point_source_depth(n_kernel[b]) for b in bands},
        "pixel_noise_njy": {b: scene.conditions[b].sky_sigma_njy for b in bands},
        "saturation_njy": {b: scene.conditions[b].saturation_njy for b in bands},
        "psf_fwhm_arcsec": dict(scene.psf_fwhm_arcsec),
        "model_psf_sigma_px": preset.model_psf_sigma,
        "truth_threshold_sigma": preset.truth_threshold_sigma,
        "detection_weights": dict(truth.meta["detection_weights"]),
        "n_truth_stars": int(np.sum(truth["is_star"] & in_patch)),
        "n_truth_galaxies": int(np.sum(~truth["is_star"] & in_patch)),
        "n_truth_with_footprint": int(has_footprint.sum()),
        "n_detections": int(n_detections),
        "n_parents": len(blends),
        "n_children": int(sum(len(b.children) for b in blends)),
        "blended_fraction": float(np.mean(group_sizes[has_footprint] > 1)) if has_footprint.any() else 0.0,
        "blended_fraction_snr5": float(np.mean(group_sizes[bright] > 1)) if bright.any() else 0.0,
        "detected_blended_fraction": float(np.mean(children_per_parent > 1))
        if children_per_parent.size
        else 0.0,
        "no_data_fraction": float(no_data.mean()),
        "deblender": deblender_name,
        "truth_models": bool(truth_models),
        "timing_s": timings,
    }
    if truth_artifacts is not None:
        metadata["n_artifacts"] = len(truth_artifacts)
        metadata["n_artifacts_inner"] = int(np.sum(truth_artifacts["is_inner"]))
    return SimulatedPatch(
        geometry=geometry,
        image=multiband,
        psf_images=scene.psf_images,
        psf_fwhm_arcsec=dict(scene.psf_fwhm_arcsec),
        model_psf=scene.model_psf,
        truth=truth,
        blends=blends,
        object_deblend=object_deblend,
        object_patch=object_patch,
        metadata=metadata,
        truth_artifacts=truth_artifacts,
    )
