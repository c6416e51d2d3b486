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
"""Named simulation presets and the tract/patch geometry they define.

A preset fixes the bands, the tract layout (a grid of patches with an overlap border, as ``lsst.skymap``
builds them), the tracts to simulate and the knobs of the scene (source counts, PSF variation, masks).

Geometry, in *parent* (tract) pixel coordinates, for ``n_patches_x x n_patches_y`` patches of inner size
``S`` and border ``B``:

* the tract bounding box is ``[0, n_patches_x * S + 2 B) x [0, n_patches_y * S + 2 B)``;
* patch ``(i, j)`` has the inner box ``[B + i S, B + (i + 1) S)`` along x (likewise y) and the outer box, the
  pixels of its coadd, grown by ``B`` on every side, so neighbouring patches share ``2 B`` columns/rows;
* the sequential patch index is ``j * n_patches_x + i``;
* every tract has its own TAN projection centred on the tract, north up, east left, ``0.2"/px``.

Presets:

``tiny``
    Tests: 2 patches (2x1) of 256 px, bands g r i.
``small``
    Demo: 8 patches (4x2) of 1024 px, LSST bands u g r i z y.
``train``
    Training data at scale: 2 tracts of 4x4 patches of 1024 px (32 patches) in u g r i z y, with more
    patch-to-patch variety than ``small`` (seeing, depth, source density, NO_DATA) and a third tract,
    ``validation``, whose patches are held out for model selection.  Its seeds are disjoint from the demo's
    (``small``, 2024) and from the held-out ``benchmark`` tract.
``artifacts``
    ``small`` (same geometry, seed and objects) plus image artifacts (`..core.artifacts`): reflection
    ghosts and rays around the bright stars, scattered-light patches and streaks anywhere, recorded in the
    ``truth_artifacts`` table.  The other presets have no artifacts.
``morphology``
    Galaxies with Hubble types and truth (`.morphology`) and 150 extra bright galaxies per patch: 4 tracts of
    2x2 patches of 1024 px in u g r i z y (two train, one validates, one held out), for the morphology stage.
``morphology_foreign``
    The ``morphology`` galaxies under 1.0 arcsec seeing, 1 mag shallower, one tract of its own seed: a scene
    no morphology classifier trains on.
``benchmark``
    Full LSST-size patches, 4100 px (3900 inner + 100 border), 3x3 per tract, bands u g r i z y, with a
    training tract and a held-out tract (another sky position and its own seed).
"""

from __future__ import annotations

__all__ = [
    "PRESETS",
    "SimPreset",
    "TractSpec",
    "available_presets",
    "get_preset",
    "make_tract_wcs",
    "patch_geometry",
]

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS

from .types import PatchGeometry

LSST_BANDS = ("u", "g", "r", "i", "z", "y")


@dataclass(frozen=True)
class TractSpec:
    """One tract of a preset.

    Parameters
    ----------
    tract : `int`
        Tract id.
    ra, dec : `float`
        Tract centre (degrees).
    seed : `int`
        Default seed of the tract's scene.
    role : `str`
        ``"train"``, ``"held_out"`` or ``"test"`` (informational).
    """

    tract: int
    ra: float
    dec: float
    seed: int
    role: str = "train"


@dataclass(frozen=True)
class SimPreset:
    """Everything that defines a simulated data set, except the seed.

    Parameters
    ----------
    name : `str`
        Preset name.
    bands : `tuple` [`str`, ...]
        LSST bands to simulate, in order.
    n_patches_x, n_patches_y : `int`
        Patch grid of a tract.
    patch_inner_size : `int`
        Side of a patch's inner region (pixels).
    patch_border : `int`
        Overlap border added on every side of the inner region (pixels).
    tracts : `tuple` [`TractSpec`, ...]
        Tracts of the data set.
    pixel_scale_arcsec : `float`
        Pixel scale.
    galaxy_density_i25_arcmin2 : `float`
        Cumulative galaxy counts ``N(i < 25)`` per arcmin^2.
    galaxy_count_slope : `float`
        Slope of the differential counts, ``d log10 N / d mag``.
    galaxy_mag_bright : `float`
        Brightest galaxy (i band).
    galaxy_mag_faint_offset : `float`
        Faintest galaxy, in magnitudes below the i-band 5-sigma point-source depth.
    star_density_deg2 : `float`
        Stars per deg^2 brighter than the r-band 5-sigma depth (moderate Galactic latitude).
    star_count_slope : `float`
        Slope of the differential star counts, ``d log10 N / d mag``.
    star_mag_bright : `float`
        Brightest star of the smooth star counts (r band).
    bright_stars_per_patch : `int`
        Saturated stars added to every patch cell (r between ``bright_star_mag_range``).
    bright_star_mag_range : `tuple` [`float`, `float`]
        r-band magnitude range of those stars.
    psf_fwhm_scatter : `float`
        Patch-to-patch log-normal scatter of the PSF FWHM (fraction).
    psf_ellipticity_scatter : `float`
        Patch-to-patch scatter of each PSF shear component.
    psf_moffat_beta : `float`
        Moffat index of the PSF.
    psf_size : `int`
        Side of the PSF images (odd).
    model_psf_sigma : `float`
        Sigma (pixels) of the deblender's Gaussian model PSF.
    depth_scatter_mag : `float`
        Patch-to-patch scatter of the coadd depth in each band (mag).
    depth_offset_mag : `float`
        Depth of every band relative to LSST's 10-year coadd (mag; negative: shallower, as another
        survey's coadds).
    seeing_fwhm_arcsec : `float` or `None`
        Median PSF FWHM of every band (arcsec), for another instrument's seeing; `None`: LSST's per-band
        medians.
    no_data_fraction : `float`
        Fraction of the patches of a tract that lose a region (corner or strip) to ``NO_DATA``.
    density_scatter : `float`
        Cell-to-cell log-normal scatter of the source density (galaxies and stars together; 0: the mean
        counts everywhere).  Drawn from a stream of its own, so 0 reproduces the scenes made without it.
    truth_threshold_sigma : `float`
        Truth footprints: the band-summed noise-free model above this many sigma of the per-pixel noise of
        the band-summed image.
    artifact_rate : `float`
        Mean number of artifacts (ghosts, rays) per bright star at r = 15, scaled by
        ``10**(-0.2 (r - 15))`` (`..core.artifacts.draw_artifacts`).  0 (the default) with
        ``artifact_anywhere_per_mpix`` 0: no artifacts, and the scene is exactly the one made without them.
    artifact_anywhere_per_mpix : `float`
        Mean number of artifacts tied to no star (scattered-light patches, streaks) per million pixels.
    artifact_star_mag_max : `float`
        Stars brighter than this r magnitude make artifacts.
    artifact_mask_fraction : `float`
        Fraction of the peak that bounds the truth footprint of patches, rays and streaks (discs and
        annuli use their geometric outline).
    morphology : `bool`
        Galaxies get Hubble types (E, S0, Sab, Sc, Sdm, Im) with bulges, discs, star-forming knots and
        lopsided irregulars (`.morphology`), recorded in the truth as ``morph_type``.  Off: the bulge plus
        disc galaxies of two colour populations, exactly as without the option.
    bright_galaxies_per_patch : `int`
        With ``morphology``: extra galaxies with ``17.5 < i < 22`` per cell, for morphology training sets.
    """

    name: str
    bands: tuple[str, ...]
    n_patches_x: int
    n_patches_y: int
    patch_inner_size: int
    patch_border: int
    tracts: tuple[TractSpec, ...]
    pixel_scale_arcsec: float = 0.2
    galaxy_density_i25_arcmin2: float = 60.0
    galaxy_count_slope: float = 0.31
    galaxy_mag_bright: float = 17.0
    galaxy_mag_faint_offset: float = 1.5
    star_density_deg2: float = 4000.0
    star_count_slope: float = 0.12
    star_mag_bright: float = 16.0
    bright_stars_per_patch: int = 1
    bright_star_mag_range: tuple[float, float] = (13.5, 15.8)
    psf_fwhm_scatter: float = 0.06
    psf_ellipticity_scatter: float = 0.02
    psf_moffat_beta: float = 3.0
    psf_size: int = 81
    model_psf_sigma: float = 0.8
    depth_scatter_mag: float = 0.05
    no_data_fraction: float = 0.3
    density_scatter: float = 0.0
    truth_threshold_sigma: float = 1.0
    depth_offset_mag: float = 0.0
    seeing_fwhm_arcsec: float | None = None
    artifact_rate: float = 0.0
    artifact_anywhere_per_mpix: float = 0.0
    artifact_star_mag_max: float = 16.0
    artifact_mask_fraction: float = 0.25
    morphology: bool = False
    bright_galaxies_per_patch: int = 0
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.bands or len(set(self.bands)) != len(self.bands):
            raise ValueError(f"preset {self.name!r}: bands must be distinct and non-empty, got {self.bands}")
        unknown = [b for b in self.bands if b not in LSST_BANDS]
        if unknown:
            raise ValueError(f"preset {self.name!r}: bands {unknown} are not LSST bands {LSST_BANDS}")
        if self.n_patches_x < 1 or self.n_patches_y < 1:
            raise ValueError(f"preset {self.name!r}: need at least one patch")
        if self.patch_border < 0 or self.patch_border * 2 >= self.patch_inner_size:
            raise ValueError(f"preset {self.name!r}: border must be >= 0 and < half the inner patch size")
        if self.density_scatter < 0:
            raise ValueError(f"preset {self.name!r}: density_scatter must be >= 0")
        if self.artifact_rate < 0 or self.artifact_anywhere_per_mpix < 0:
            raise ValueError(f"preset {self.name!r}: artifact rates must be >= 0")
        if not 0.0 < self.artifact_mask_fraction <= 1.0:
            raise ValueError(f"preset {self.name!r}: artifact_mask_fraction must be in (0, 1]")
        if self.bright_galaxies_per_patch < 0 or (self.bright_galaxies_per_patch and not self.morphology):
            raise ValueError(
                f"preset {self.name!r}: bright_galaxies_per_patch needs morphology and must be >= 0"
            )
        if self.psf_size % 2 == 0:
            raise ValueError(f"preset {self.name!r}: psf_size must be odd, got {self.psf_size}")
        if not self.tracts or len({t.tract for t in self.tracts}) != len(self.tracts):
            raise ValueError(f"preset {self.name!r}: tract ids must be distinct and non-empty")

    @property
    def has_artifacts(self) -> bool:
        """Whether the preset puts artifacts (ghosts, rays, scattered light, streaks) in its coadds."""
        return self.artifact_rate > 0 or self.artifact_anywhere_per_mpix > 0

    @property
    def patch_size(self) -> int:
        """Side of a patch including its overlap border (pixels)."""
        return self.patch_inner_size + 2 * self.patch_border

    @property
    def n_patches(self) -> int:
        """Patches per tract."""
        return self.n_patches_x * self.n_patches_y

    @property
    def tract_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the tract bounding box."""
        return (
            self.n_patches_y * self.patch_inner_size + 2 * self.patch_border,
            self.n_patches_x * self.patch_inner_size + 2 * self.patch_border,
        )

    @property
    def tract_ids(self) -> tuple[int, ...]:
        """Tract ids in definition order."""
        return tuple(t.tract for t in self.tracts)

    def tract_spec(self, tract: int) -> TractSpec:
        """The `TractSpec` of ``tract``; `ValueError` if the preset has no such tract."""
        for spec in self.tracts:
            if spec.tract == tract:
                return spec
        raise ValueError(f"preset {self.name!r} has no tract {tract}; its tracts are {list(self.tract_ids)}")

    def patch_index(self, patch_x: int, patch_y: int) -> int:
        """Sequential patch index; `ValueError` if outside the grid."""
        if not (0 <= patch_x < self.n_patches_x and 0 <= patch_y < self.n_patches_y):
            raise ValueError(
                f"patch ({patch_x}, {patch_y}) outside the {self.n_patches_x}x{self.n_patches_y} grid "
                f"of preset {self.name!r}"
            )
        return patch_y * self.n_patches_x + patch_x

    def patch_xy(self, patch: int) -> tuple[int, int]:
        """``(patch_x, patch_y)`` of a sequential patch index."""
        if not 0 <= patch < self.n_patches:
            raise ValueError(f"patch {patch} outside [0, {self.n_patches}) for preset {self.name!r}")
        return patch % self.n_patches_x, patch // self.n_patches_x

    def patches(self) -> Iterator[tuple[int, int]]:
        """All ``(patch_x, patch_y)`` of a tract, in sequential order."""
        for patch in range(self.n_patches):
            yield self.patch_xy(patch)

    def inner_bbox(self, patch_x: int, patch_y: int) -> tuple[int, int, int, int]:
        """Inner box ``(x_begin, y_begin, x_end, y_end)`` (end exclusive), tract pixels."""
        self.patch_index(patch_x, patch_y)
        x0 = self.patch_border + patch_x * self.patch_inner_size
        y0 = self.patch_border + patch_y * self.patch_inner_size
        return x0, y0, x0 + self.patch_inner_size, y0 + self.patch_inner_size

    def cell_bbox(self, patch_x: int, patch_y: int) -> tuple[int, int, int, int]:
        """Region whose sources belong to this patch's cell: the inner box, stretched to the tract edges.

        The cells tile the whole tract bounding box, so every tract pixel has sources.
        """
        x0, y0, x1, y1 = self.inner_bbox(patch_x, patch_y)
        height, width = self.tract_shape
        if patch_x == 0:
            x0 = 0
        if patch_x == self.n_patches_x - 1:
            x1 = width
        if patch_y == 0:
            y0 = 0
        if patch_y == self.n_patches_y - 1:
            y1 = height
        return x0, y0, x1, y1


PRESETS: dict[str, SimPreset] = {
    "tiny": SimPreset(
        name="tiny",
        bands=("g", "r", "i"),
        n_patches_x=2,
        n_patches_y=1,
        patch_inner_size=224,
        patch_border=16,
        tracts=(TractSpec(tract=0, ra=150.1, dec=2.2, seed=1234, role="test"),),
        psf_size=61,
        bright_stars_per_patch=1,
        no_data_fraction=0.5,
        description="Unit tests: 2 patches of 256 px in g, r, i.",
    ),
    "small": SimPreset(
        name="small",
        bands=LSST_BANDS,
        n_patches_x=4,
        n_patches_y=2,
        patch_inner_size=960,
        patch_border=32,
        tracts=(TractSpec(tract=0, ra=150.1, dec=2.2, seed=2024, role="train"),),
        bright_stars_per_patch=1,
        no_data_fraction=0.25,
        description="Demo: 8 patches (4x2) of 1024 px in u, g, r, i, z, y.",
    ),
    "decam": SimPreset(
        name="decam",
        bands=("g", "r", "z"),
        n_patches_x=2,
        n_patches_y=2,
        patch_inner_size=960,
        patch_border=32,
        tracts=(TractSpec(tract=0, ra=52.3, dec=-27.9, seed=4242, role="test"),),
        pixel_scale_arcsec=0.263,
        seeing_fwhm_arcsec=1.0,
        depth_offset_mag=-2.0,
        bright_stars_per_patch=1,
        no_data_fraction=0.0,
        description='Another instrument: 4 patches of 1024 px in g, r, z at 0.263"/px with 1.0" seeing, '
        "2 mag shallower than LSST (as DECam coadds); a test scene no model trains on.",
    ),
    "heldout": SimPreset(
        name="heldout",
        bands=LSST_BANDS,
        n_patches_x=2,
        n_patches_y=2,
        patch_inner_size=960,
        patch_border=32,
        tracts=(TractSpec(tract=0, ra=320.4, dec=-61.0, seed=5150, role="test"),),
        bright_stars_per_patch=1,
        psf_fwhm_scatter=0.12,
        density_scatter=0.35,
        no_data_fraction=0.25,
        description="Held-out test: 4 patches of 1024 px in ugrizy with a seed of its own (no model "
        "trains or validates on it, and the demo does not use it).",
    ),
    "train": SimPreset(
        name="train",
        bands=LSST_BANDS,
        n_patches_x=4,
        n_patches_y=4,
        patch_inner_size=960,
        patch_border=32,
        tracts=(
            TractSpec(tract=0, ra=35.7, dec=-4.8, seed=31001, role="train"),
            TractSpec(tract=1, ra=215.0, dec=52.7, seed=31002, role="train"),
            TractSpec(tract=2, ra=9.5, dec=-43.9, seed=31003, role="validation"),
        ),
        bright_stars_per_patch=2,
        psf_fwhm_scatter=0.18,
        psf_ellipticity_scatter=0.03,
        depth_scatter_mag=0.25,
        density_scatter=0.35,
        no_data_fraction=0.3,
        description="Training: 2x16 patches of 1024 px in ugrizy with varied seeing, depth, density and "
        "NO_DATA; tract 2 is the validation tract.",
    ),
    "artifacts": SimPreset(
        name="artifacts",
        bands=LSST_BANDS,
        n_patches_x=4,
        n_patches_y=2,
        patch_inner_size=960,
        patch_border=32,
        tracts=(TractSpec(tract=0, ra=150.1, dec=2.2, seed=2024, role="test"),),
        bright_stars_per_patch=1,
        no_data_fraction=0.25,
        artifact_rate=1.0,
        artifact_anywhere_per_mpix=0.2,
        artifact_star_mag_max=16.5,
        description="Artifacts: the small demo tract (same seed, same objects and noise) plus ghosts, rays, "
        "scattered light and streaks, with truth_artifacts.",
    ),
    "morphology": SimPreset(
        name="morphology",
        bands=LSST_BANDS,
        n_patches_x=2,
        n_patches_y=2,
        patch_inner_size=960,
        patch_border=32,
        tracts=(
            TractSpec(tract=0, ra=150.1, dec=2.2, seed=7001, role="train"),
            TractSpec(tract=1, ra=36.4, dec=-5.1, seed=7002, role="train"),
            TractSpec(tract=2, ra=215.3, dec=52.6, seed=7003, role="validation"),
            TractSpec(tract=3, ra=53.0, dec=-28.0, seed=7004, role="held_out"),
        ),
        bright_stars_per_patch=1,
        psf_fwhm_scatter=0.12,
        no_data_fraction=0.25,
        morphology=True,
        bright_galaxies_per_patch=150,
        description="Morphology: 4 tracts of 2x2 patches of 1024 px in ugrizy whose galaxies have Hubble "
        "types (E, S0, Sab, Sc, Sdm, Im) with truth, plus 150 extra galaxies with 17.5 < i < 22 per patch; "
        "tracts 0-1 train, 2 validates, 3 is held out.",
    ),
    "morphology_foreign": SimPreset(
        name="morphology_foreign",
        bands=LSST_BANDS,
        n_patches_x=2,
        n_patches_y=2,
        patch_inner_size=960,
        patch_border=32,
        tracts=(TractSpec(tract=0, ra=320.4, dec=-61.0, seed=7101, role="test"),),
        bright_stars_per_patch=1,
        psf_fwhm_scatter=0.12,
        seeing_fwhm_arcsec=1.0,
        depth_offset_mag=-1.0,
        density_scatter=0.35,
        no_data_fraction=0.25,
        morphology=True,
        bright_galaxies_per_patch=150,
        description="Morphology test scene no classifier trains on: the morphology preset's galaxies under "
        "1.0 arcsec seeing in every band, 1 mag shallower, with its own seed and varied source density.",
    ),
    "benchmark": SimPreset(
        name="benchmark",
        bands=LSST_BANDS,
        n_patches_x=3,
        n_patches_y=3,
        patch_inner_size=3900,
        patch_border=100,
        tracts=(
            TractSpec(tract=0, ra=150.1, dec=2.2, seed=9813, role="train"),
            TractSpec(tract=1, ra=53.1, dec=-28.1, seed=4711, role="held_out"),
        ),
        bright_stars_per_patch=4,
        no_data_fraction=0.2,
        description="Benchmark: 3x3 LSST-size patches (4100 px) per tract; tract 1 is held out.",
    ),
}


def available_presets() -> list[str]:
    """Names of the defined presets."""
    return list(PRESETS)


def get_preset(name: str) -> SimPreset:
    """The preset called ``name``.

    Raises
    ------
    ValueError
        If there is no such preset; the message lists the available ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown simulation preset {name!r}; available: {available_presets()}") from None


def make_tract_wcs(preset: SimPreset, tract: int) -> WCS:
    """TAN WCS of a tract: centred on the tract centre, north up, east left, parent pixel coordinates.

    Parameters
    ----------
    preset : `SimPreset`
        The preset.
    tract : `int`
        Tract id (must belong to the preset).

    Returns
    -------
    wcs : `astropy.wcs.WCS`
        Maps 0-based tract pixel coordinates ``(x, y)`` to ICRS ``(ra, dec)`` degrees.
    """
    spec = preset.tract_spec(tract)
    height, width = preset.tract_shape
    scale_deg = preset.pixel_scale_arcsec / 3600.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.crval = [spec.ra, spec.dec]
    # FITS pixels are 1-based: the 0-based centre (width - 1) / 2 is CRPIX (width + 1) / 2.
    wcs.wcs.crpix = [(width + 1) / 2.0, (height + 1) / 2.0]
    wcs.wcs.cd = np.array([[-scale_deg, 0.0], [0.0, scale_deg]])
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.set()
    return wcs


def patch_geometry(preset: SimPreset, tract: int, patch_x: int, patch_y: int) -> PatchGeometry:
    """Placement of patch ``(patch_x, patch_y)`` of ``tract`` (outer box, i.e. with the overlap border)."""
    patch = preset.patch_index(patch_x, patch_y)
    return PatchGeometry(
        tract=tract,
        patch=patch,
        patch_x=patch_x,
        patch_y=patch_y,
        x0=patch_x * preset.patch_inner_size,
        y0=patch_y * preset.patch_inner_size,
        width=preset.patch_size,
        height=preset.patch_size,
        wcs=make_tract_wcs(preset, tract),
        pixel_scale_arcsec=preset.pixel_scale_arcsec,
    )
