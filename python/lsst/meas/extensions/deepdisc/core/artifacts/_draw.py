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

"""Drawing random artifacts around bright stars and anywhere (`ArtifactConfig`, `draw_artifacts`)."""

from __future__ import annotations

__all__ = ["ArtifactConfig", "draw_artifacts"]

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ._model import Artifact


@dataclass(frozen=True)
class ArtifactConfig:
    """Distributions of `draw_artifacts` (ranges are ``(low, high)``; brightness and sizes log-uniform).

    Parameters
    ----------
    psf_fwhm : `float`
        PSF FWHM (pixels): the scale of the smallest ghosts, of edges and of ray widths.
    reference_mag : `float`
        Magnitude at which a source makes ``rate`` artifacts on average.
    mag_slope : `float`
        The rate scales as ``10**(-mag_slope (mag - reference_mag))``, clipped to ``[0.2, 5]`` times.
    ray_fraction : `float`
        Fraction of the source artifacts that are rays (the rest are ghosts).
    bright_fraction : `float`
        Fraction of the ghosts that are bright.
    annulus_fraction : `float`
        Fraction of the ghosts that are annuli (the rest are discs).
    streak_fraction : `float`
        Fraction of the artifacts tied to no source that are streaks (the rest are scattered patches).
    ghost_radius : `tuple` [`float`, `float`], optional
        Ghost semi-major axis (pixels); default ``(3 psf_fwhm, 200)``.
    ghost_offset : `tuple` [`float`, `float`]
        Distance of a ghost from its star (pixels), along the radial direction from the field centre.
    ghost_axis_ratio : `tuple` [`float`, `float`]
        Ghost axis ratio (uniform).
    ghost_inner_fraction : `tuple` [`float`, `float`]
        Inner over outer radius of an annulus (uniform).
    ghost_edge : `tuple` [`float`, `float`]
        Edge logistic scale in units of ``psf_fwhm`` (uniform).
    bright_sb, faint_sb : `tuple` [`float`, `float`]
        Peak brightness (noise sigma per pixel, brightest band) of bright and faint ghosts.
    ray_sb, streak_sb, patch_sb : `tuple` [`float`, `float`]
        Peak brightness of rays, streaks and scattered patches.
    ray_length : `tuple` [`float`, `float`]
        Ray length (pixels).
    ray_width, streak_width : `tuple` [`float`, `float`]
        Cross-section FWHM in units of ``psf_fwhm`` (uniform).
    streak_length : `tuple` [`float`, `float`]
        Streak length in units of the image diagonal (uniform), so streaks cross the image.
    patch_radius : `tuple` [`float`, `float`]
        Scattered-patch Gaussian sigma along the major axis (pixels).
    patch_axis_ratio : `tuple` [`float`, `float`]
        Scattered-patch axis ratio (uniform).
    colour_scatter : `float`
        Log-normal scatter of the per-band brightness (the brightest band keeps the drawn peak).
    """

    psf_fwhm: float = 3.5
    reference_mag: float = 15.0
    mag_slope: float = 0.2
    ray_fraction: float = 0.3
    bright_fraction: float = 0.4
    annulus_fraction: float = 0.5
    streak_fraction: float = 0.3
    ghost_radius: tuple[float, float] | None = None
    ghost_offset: tuple[float, float] = (20.0, 300.0)
    ghost_axis_ratio: tuple[float, float] = (0.8, 1.0)
    ghost_inner_fraction: tuple[float, float] = (0.3, 0.7)
    ghost_edge: tuple[float, float] = (0.2, 0.6)
    bright_sb: tuple[float, float] = (0.5, 3.0)
    faint_sb: tuple[float, float] = (0.1, 0.5)
    ray_sb: tuple[float, float] = (0.5, 4.0)
    streak_sb: tuple[float, float] = (0.3, 2.0)
    patch_sb: tuple[float, float] = (0.1, 0.5)
    ray_length: tuple[float, float] = (40.0, 400.0)
    ray_width: tuple[float, float] = (1.0, 2.5)
    streak_width: tuple[float, float] = (1.0, 2.0)
    streak_length: tuple[float, float] = (1.0, 2.0)
    patch_radius: tuple[float, float] = (30.0, 150.0)
    patch_axis_ratio: tuple[float, float] = (0.4, 1.0)
    colour_scatter: float = 0.25

    def __post_init__(self) -> None:
        if self.psf_fwhm <= 0:
            raise ValueError(f"psf_fwhm must be positive, got {self.psf_fwhm}")
        for name in ("ray_fraction", "bright_fraction", "annulus_fraction", "streak_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                if len(value) != 2 or not 0 < value[0] <= value[1]:
                    raise ValueError(
                        f"{field.name} must be a (low, high) range of positive values, got {value}"
                    )

    @property
    def ghost_radius_range(self) -> tuple[float, float]:
        """Ghost radius range, with the default resolved."""
        if self.ghost_radius is not None:
            return self.ghost_radius
        return (min(3.0 * self.psf_fwhm, 200.0), 200.0)

    def binned(self, factor: int) -> ArtifactConfig:
        """The same artifacts seen on the image binned ``factor x factor`` (`.binning.bin_image`).

        Lengths (PSF, radii, offsets, ray lengths, patch sizes) shrink ``factor``-fold; surface brightnesses,
        in units of the pixel noise, grow ``factor``-fold, as the noise of a block mean falls that much.
        """
        if int(factor) != factor or factor < 1:
            raise ValueError(f"the binning factor must be a positive integer, got {factor}")
        if factor == 1:
            return self

        def shrink(bounds: tuple[float, float]) -> tuple[float, float]:
            return (bounds[0] / factor, bounds[1] / factor)

        def brighten(bounds: tuple[float, float]) -> tuple[float, float]:
            return (bounds[0] * factor, bounds[1] * factor)

        return dataclasses.replace(
            self,
            psf_fwhm=self.psf_fwhm / factor,
            ghost_radius=shrink(self.ghost_radius_range),
            ghost_offset=shrink(self.ghost_offset),
            ray_length=shrink(self.ray_length),
            patch_radius=shrink(self.patch_radius),
            bright_sb=brighten(self.bright_sb),
            faint_sb=brighten(self.faint_sb),
            ray_sb=brighten(self.ray_sb),
            streak_sb=brighten(self.streak_sb),
            patch_sb=brighten(self.patch_sb),
        )


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _brightness(rng: np.random.Generator, bounds: tuple[float, float], n_bands: int, scatter: float):
    """Per-band peak brightness: a log-uniform level for the brightest band, log-normal colours."""
    level = _log_uniform(rng, bounds)
    colour = np.exp(rng.normal(0.0, scatter, n_bands)) if scatter > 0 else np.ones(n_bands)
    return tuple(float(v) for v in level * colour / colour.max())


def _ghost(
    rng: np.random.Generator,
    star: tuple[float, float],
    centre: tuple[float, float],
    n_bands: int,
    config: ArtifactConfig,
    index: int,
) -> Artifact:
    radial = np.array([star[0] - centre[0], star[1] - centre[1]], dtype=float)
    norm = float(np.hypot(*radial))
    if norm > 1e-6:
        direction = radial / norm
    else:  # A star on the optical axis: any direction.
        phi = rng.uniform(0.0, 2.0 * math.pi)
        direction = np.array([math.cos(phi), math.sin(phi)])
    offset = rng.uniform(*config.ghost_offset) * (1.0 if rng.uniform() < 0.5 else -1.0)
    bright = rng.uniform() < config.bright_fraction
    annulus = rng.uniform() < config.annulus_fraction
    radius = _log_uniform(rng, config.ghost_radius_range)
    inner = radius * rng.uniform(*config.ghost_inner_fraction) if annulus else 0.0
    return Artifact(
        kind="ghost_annulus" if annulus else "ghost_disc",
        artifact_class="ghost_bright" if bright else "ghost_faint",
        x=float(star[0] + offset * direction[0]),
        y=float(star[1] + offset * direction[1]),
        surface_brightness=_brightness(
            rng, config.bright_sb if bright else config.faint_sb, n_bands, config.colour_scatter
        ),
        radius=radius,
        inner_radius=inner,
        angle=float(rng.uniform(0.0, math.pi)),
        axis_ratio=float(rng.uniform(*config.ghost_axis_ratio)),
        edge=float(config.psf_fwhm * rng.uniform(*config.ghost_edge)),
        source_index=index,
    )


def _ray(
    rng: np.random.Generator, star: tuple[float, float], n_bands: int, config: ArtifactConfig, index: int
) -> Artifact:
    return Artifact(
        kind="ray",
        artifact_class="rays",
        x=float(star[0]),
        y=float(star[1]),
        surface_brightness=_brightness(rng, config.ray_sb, n_bands, config.colour_scatter),
        width=float(config.psf_fwhm * rng.uniform(*config.ray_width)),
        length=_log_uniform(rng, config.ray_length),
        angle=float(rng.uniform(0.0, 2.0 * math.pi)),
        source_index=index,
    )


def _anywhere(
    rng: np.random.Generator, shape: tuple[int, int], n_bands: int, config: ArtifactConfig
) -> Artifact:
    height, width = shape
    x, y = float(rng.uniform(-0.5, width - 0.5)), float(rng.uniform(-0.5, height - 0.5))
    angle = float(rng.uniform(0.0, math.pi))
    if rng.uniform() < config.streak_fraction:
        return Artifact(
            kind="streak",
            artifact_class="rays",
            x=x,
            y=y,
            surface_brightness=_brightness(rng, config.streak_sb, n_bands, config.colour_scatter),
            width=float(config.psf_fwhm * rng.uniform(*config.streak_width)),
            length=float(math.hypot(height, width) * rng.uniform(*config.streak_length)),
            angle=angle,
        )
    return Artifact(
        kind="scattered_patch",
        artifact_class="ghost_faint",
        x=x,
        y=y,
        surface_brightness=_brightness(rng, config.patch_sb, n_bands, config.colour_scatter),
        radius=_log_uniform(rng, config.patch_radius),
        angle=angle,
        axis_ratio=float(rng.uniform(*config.patch_axis_ratio)),
    )


def draw_artifacts(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_bands: int,
    *,
    sources: np.ndarray | None = None,
    rate: float = 1.0,
    anywhere_rate: float = 0.0,
    field_centre: tuple[float, float] | None = None,
    config: ArtifactConfig | None = None,
) -> list[Artifact]:
    """Draw random artifacts for an image.

    Every source (a bright star) makes ``Poisson(rate x w)`` artifacts, ``w = 1`` without magnitudes and
    ``10**(-mag_slope (mag - reference_mag))`` (clipped to ``[0.2, 5]``) with them: a ray from the star
    (``ray_fraction``) or a reflection ghost, displaced from the star along the line through the notional
    optical axis ``field_centre`` (towards or away from it), as internal reflections are.  Then
    ``Poisson(anywhere_rate)`` artifacts tied to no source are placed uniformly in the image: straight
    streaks that cross it (``streak_fraction``) or diffuse scattered-light patches.

    Parameters
    ----------
    rng : `numpy.random.Generator`
        Random generator; the same state gives the same artifacts.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the image.
    n_bands : `int`
        Number of bands (brightness per band).
    sources : `numpy.ndarray`, optional
        ``(N, 2)`` source positions ``x, y`` (pixels), or ``(N, 3)`` with a magnitude.
    rate : `float`
        Mean number of artifacts per source (at ``config.reference_mag``).
    anywhere_rate : `float`
        Mean number of artifacts tied to no source, per image.
    field_centre : `tuple` [`float`, `float`], optional
        ``(x, y)`` of the optical axis for the ghost directions; default the image centre.
    config : `ArtifactConfig`, optional
        Size, brightness and mixture distributions.

    Returns
    -------
    artifacts : `list` [`Artifact`]
        Source artifacts in source order (``source_index`` set), then the others.
    """
    config = config or ArtifactConfig()
    if rate < 0 or anywhere_rate < 0:
        raise ValueError(f"rates must be non-negative, got rate={rate}, anywhere_rate={anywhere_rate}")
    height, width = shape
    centre = ((width - 1) / 2.0, (height - 1) / 2.0) if field_centre is None else field_centre
    artifacts: list[Artifact] = []
    if sources is not None and rate > 0:
        sources = np.asarray(sources, dtype=float)
        if sources.ndim != 2 or sources.shape[1] not in (2, 3):
            raise ValueError(f"sources must be (N, 2) or (N, 3), got shape {sources.shape}")
        weights = np.ones(len(sources))
        if sources.shape[1] == 3:
            weights = np.clip(10.0 ** (-config.mag_slope * (sources[:, 2] - config.reference_mag)), 0.2, 5.0)
        counts = rng.poisson(rate * weights)
        for index, count in enumerate(counts):
            star = (float(sources[index, 0]), float(sources[index, 1]))
            for _ in range(int(count)):
                if rng.uniform() < config.ray_fraction:
                    artifacts.append(_ray(rng, star, n_bands, config, index))
                else:
                    artifacts.append(_ghost(rng, star, centre, n_bands, config, index))
    for _ in range(int(rng.poisson(anywhere_rate))):
        artifacts.append(_anywhere(rng, shape, n_bands, config))
    return artifacts
