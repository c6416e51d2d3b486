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

"""Augmentations that make a training example look like another instrument's or another night's data.

The geometric augmentations of `.augment` move pixels around; these change what the sky looks like:

- **pixel scale**: the example is resampled as if observed with pixels of another size (0.17-0.27"/px
  around LSST's 0.2"/px covers HSC, DECam and others); sources shrink or grow, and their per-pixel
  signal-to-noise changes as the pixel area does;
- **seeing**: the example is convolved with a Gaussian so that its PSF is as wide as that of a worse night
  (only broader: a PSF cannot be sharpened);
- **artifacts**: ghosts, scattered-light patches and rays (`.artifacts`) are drawn into it and labelled
  with the artifact classes;

after which white noise restores the noise level of a real coadd (resampling and convolution smooth the
noise, a real image's noise is not smoothed).

They work on examples scaled with ``asinh_per_band`` (``asinh(x / (k sigma_b))``, the scaling of the
shipped models): ``k sinh(image)`` is the flux in units of each band's noise, so the transformations act on
fluxes and the result is scaled again exactly as the detection task would scale such data.
"""

from __future__ import annotations

__all__ = ["SkyAugmentConfig", "sky_augment_example"]

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .footprints import mask_to_spans, spans_bbox, spans_centroid, spans_to_mask
from .training_data import InstanceLabel, TrainingExample

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# Labels whose resampled footprint is smaller than this (pixels) are dropped.
_MIN_LABEL_PIXELS = 2


@dataclass(frozen=True)
class SkyAugmentConfig:
    """Which instrument and observing-condition augmentations to apply.

    Parameters
    ----------
    probability : `float`
        Fraction of examples that get a pixel-scale and seeing change (the rest keep the training data's).
    native_pixel_scale : `float`
        Pixel scale of the training data (arcsec).
    pixel_scale_range : `tuple` [`float`, `float`] or `None`
        Range of simulated pixel scales (arcsec), drawn uniformly; `None` keeps the native scale.
    native_seeing : `float`
        Typical PSF FWHM of the training data (arcsec).
    seeing_range : `tuple` [`float`, `float`] or `None`
        Range of simulated PSF FWHM (arcsec), drawn uniformly; values below ``native_seeing`` leave the PSF
        as it is.  `None`: no seeing change.
    softening_sigma : `float`
        ``softening_sigma`` of the examples' ``asinh_per_band`` scaling.
    artifact_rate : `float`
        Mean number of artifacts drawn into an example away from any source (Poisson), and per bright
        labelled source (ghosts and rays, `.artifacts.draw_artifacts`); 0 disables them.
    artifact_class_ids : `tuple` [`int`, ...]
        Class index of each of `.artifacts.ARTIFACT_CLASSES` (needed when ``artifact_rate > 0``).
    bright_magnitude : `float`
        Labelled sources brighter than this seed ghosts and rays (`.artifacts.draw_artifacts`).
    binned_artifact_rate : `float`
        Mean number of bright stars of ``ArtifactConfig.reference_mag`` at random places that seed ghosts
        and rays (one each on average) in a binned example (metadata ``binning`` > 1, see `.binning`),
        besides its own bright sources and one artifact tied to no source; all drawn at the binned scale
        (`.artifacts.ArtifactConfig.binned`).  Binned examples get no pixel-scale or seeing change.
    binned_min_radius : `float`
        Smallest ghost radius drawn into a binned example (binned pixels): smaller ghosts look like the
        binned galaxies, so they are left to the unbinned examples (and the unbinned detection pass).
    """

    probability: float = 0.5
    native_pixel_scale: float = 0.2
    pixel_scale_range: tuple[float, float] | None = None
    native_seeing: float = 0.75
    seeing_range: tuple[float, float] | None = None
    softening_sigma: float = 1.0
    artifact_rate: float = 0.0
    artifact_class_ids: tuple[int, ...] = ()
    bright_magnitude: float = 18.0
    binned_artifact_rate: float = 3.0
    binned_min_radius: float = 6.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        for name in ("native_pixel_scale", "native_seeing", "softening_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("pixel_scale_range", "seeing_range"):
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        if self.artifact_rate < 0 or self.binned_artifact_rate < 0:
            raise ValueError(
                f"artifact rates must be >= 0, got {self.artifact_rate} and {self.binned_artifact_rate}"
            )
        object.__setattr__(self, "artifact_class_ids", tuple(int(v) for v in self.artifact_class_ids))
        if self.artifact_rate > 0:
            from .artifacts import ARTIFACT_CLASSES

            if len(self.artifact_class_ids) != len(ARTIFACT_CLASSES):
                raise ValueError(
                    f"artifact_class_ids needs one class index for each of {ARTIFACT_CLASSES}, "
                    f"got {self.artifact_class_ids}"
                )

    @property
    def enabled(self) -> bool:
        """Whether this configuration changes anything."""
        changes = self.pixel_scale_range is not None or self.seeing_range is not None
        return (changes and self.probability > 0) or self.artifact_rate > 0


def _resample_spans(spans: np.ndarray, factor: float, shape: tuple[int, int]) -> np.ndarray:
    """A footprint on the grid resampled by ``factor`` (nearest pixel centre), clipped to ``shape``."""
    x0, y0, x1, y1 = spans_bbox(spans)
    local = spans_to_mask(spans, (y1 - y0 + 1, x1 - x0 + 1), xy0=(x0, y0))
    # Output pixels whose centre maps into the footprint's bounding box.
    ox0, oy0 = int(math.floor(x0 * factor)), int(math.floor(y0 * factor))
    ox1, oy1 = int(math.ceil((x1 + 1) * factor)), int(math.ceil((y1 + 1) * factor))
    ox0, oy0 = max(ox0, 0), max(oy0, 0)
    ox1, oy1 = min(ox1, shape[1]), min(oy1, shape[0])
    if ox1 <= ox0 or oy1 <= oy0:
        return np.empty((0, 3), dtype=np.int32)
    src_x = np.floor((np.arange(ox0, ox1) + 0.5) / factor).astype(np.int64) - x0
    src_y = np.floor((np.arange(oy0, oy1) + 0.5) / factor).astype(np.int64) - y0
    inside_x = (src_x >= 0) & (src_x < local.shape[1])
    inside_y = (src_y >= 0) & (src_y < local.shape[0])
    grid = np.zeros((oy1 - oy0, ox1 - ox0), dtype=bool)
    grid[np.ix_(inside_y, inside_x)] = local[np.ix_(src_y[inside_y], src_x[inside_x])]
    return mask_to_spans(grid, xy0=(ox0, oy0))


def _restore_noise(flux: np.ndarray, valid: np.ndarray | None, rng: np.random.Generator) -> None:
    """Bring each band's robust noise back to 1 (white noise added, or the band scaled down), in place."""
    for plane in flux:
        values = plane[valid] if valid is not None and valid.any() else plane.ravel()
        sample = values[:: max(1, values.size // 20000)]
        sigma = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
        if not sigma > 0:
            continue
        if sigma < 1.0:
            plane += rng.normal(0.0, math.sqrt(1.0 - sigma**2), size=plane.shape).astype(plane.dtype)
        else:
            plane /= sigma


def sky_augment_example(
    example: TrainingExample, config: SkyAugmentConfig, rng: np.random.Generator
) -> TrainingExample:
    """Apply a random pixel-scale change, seeing change and artifacts, as configured.

    Parameters
    ----------
    example : `TrainingExample`
        An ``asinh_per_band``-scaled example (not modified).
    config : `SkyAugmentConfig`
        What to apply.
    rng : `numpy.random.Generator`
        Source of randomness; the same state gives the same result.

    Returns
    -------
    augmented : `TrainingExample`
        A new example (or ``example`` itself when nothing was drawn), whose image is scaled as the
        input's and whose labels follow the resampled pixels; artifacts come as extra labels.
    """
    binning = int(example.metadata.get("binning", 1))
    change = rng.random() < config.probability and binning == 1
    factor = 1.0
    blur_sigma = 0.0
    if change and config.pixel_scale_range is not None:
        scale = float(rng.uniform(*config.pixel_scale_range))
        factor = config.native_pixel_scale / scale
    if change and config.seeing_range is not None:
        fwhm = float(rng.uniform(*config.seeing_range))
        if fwhm > config.native_seeing:
            extra = math.sqrt(fwhm**2 - config.native_seeing**2)
            blur_sigma = extra / (config.native_pixel_scale / factor) / _FWHM_PER_SIGMA
    shape = (
        (max(8, int(round(example.height * factor))), max(8, int(round(example.width * factor))))
        if factor != 1.0
        else (example.height, example.width)
    )
    artifacts = (
        _random_artifacts(example, shape, factor, binning, config, rng) if config.artifact_rate > 0 else []
    )
    if factor == 1.0 and blur_sigma < 0.3 and not artifacts:
        return example

    soft = config.softening_sigma
    flux = soft * np.sinh(example.image.astype(np.float32))
    valid = example.valid
    instances = list(example.instances)
    if factor != 1.0:
        height, width = shape
        zoom = (height / example.height, width / example.width)
        # Per-pixel signal-to-noise grows with the pixel area; the noise is restored below.
        flux = np.stack([ndimage.zoom(plane, zoom, order=1) for plane in flux]) / np.float32(factor)
        if valid is not None:
            valid = ndimage.zoom(valid.astype(np.uint8), zoom, order=0).astype(bool)
        resampled = []
        for label in instances:
            spans = _resample_spans(label.spans, zoom[0], (height, width))
            if spans.shape[0] and int(np.sum(spans[:, 2] - spans[:, 1] + 1)) >= _MIN_LABEL_PIXELS:
                resampled.append(
                    InstanceLabel(spans, label.class_id, label.source_id, label.magnitude, label.blendedness)
                )
        instances = resampled
    if blur_sigma >= 0.3:
        flux = np.stack([ndimage.gaussian_filter(plane, blur_sigma, mode="nearest") for plane in flux])
    if factor != 1.0 or blur_sigma >= 0.3:
        # Resampling and blurring change the noise; the artifacts are signal and come after (measured with
        # them, the noise of a ghost-filled or crowded binned example would be scaled away).
        _restore_noise(flux, valid, rng)
    if artifacts:
        instances += _paint_artifacts(flux, artifacts, config)
    if valid is not None:
        flux[:, ~valid] = 0.0
    image = np.arcsinh(flux / np.float32(soft)).astype(np.float32)
    return TrainingExample(
        image=image,
        instances=instances,
        example_id=example.example_id,
        bands=example.bands,
        valid=valid,
        metadata=dict(example.metadata),
    )


def _random_artifacts(
    example: TrainingExample,
    shape: tuple[int, int],
    factor: float,
    binning: int,
    config: SkyAugmentConfig,
    rng: np.random.Generator,
) -> list:
    """Artifacts for an example.

    Ghosts and rays of its bright labelled sources, others anywhere; on a binned example
    (``binning > 1``), as they look at that binning.
    """
    from .artifacts import ArtifactConfig, draw_artifacts

    artifact_config = ArtifactConfig().binned(binning)
    bright = [label for label in example.instances if label.magnitude < config.bright_magnitude]
    anchors = [(*(np.array(spans_centroid(label.spans)) * factor), label.magnitude) for label in bright]
    rate, anywhere = config.artifact_rate, config.artifact_rate
    if binning > 1:
        low, high = artifact_config.ghost_radius_range
        radius = (min(max(low, config.binned_min_radius), high), high)
        artifact_config = dataclasses.replace(artifact_config, ghost_radius=radius)
        # A binned example covers binning**2 times the sky: besides its own bright sources, stars of the
        # reference magnitude at random places (off the example too, as the star of a ghost may be) seed
        # binned_artifact_rate ghosts and rays on average, and one artifact is tied to no source.
        height, width = shape
        for _ in range(int(rng.poisson(config.binned_artifact_rate))):
            x, y = rng.uniform(-0.25, 1.25) * width, rng.uniform(-0.25, 1.25) * height
            anchors.append((float(x), float(y), artifact_config.reference_mag))
        rate, anywhere = 1.0, 1.0
    sources = np.array(anchors, dtype=float) if anchors else None
    # Where the optical axis lies is unknown for a cutout: anywhere around it.
    centre = (float(rng.uniform(-1, 2) * shape[1]), float(rng.uniform(-1, 2) * shape[0]))
    return draw_artifacts(
        rng,
        shape,
        example.image.shape[0],
        sources=sources,
        rate=rate,
        anywhere_rate=anywhere,
        field_centre=centre,
        config=artifact_config,
    )


def _paint_artifacts(flux: np.ndarray, artifacts: Sequence, config: SkyAugmentConfig) -> list[InstanceLabel]:
    """Add the artifacts to ``flux`` (noise units, in place) and return their labels."""
    from .artifacts import ARTIFACT_CLASSES, render_artifact_stamp

    labels = []
    for artifact in artifacts:
        x0, y0, stamp, mask = render_artifact_stamp(artifact, flux.shape[1:], flux.shape[0])
        if not mask.any():
            continue
        height, width = mask.shape
        flux[:, y0 : y0 + height, x0 : x0 + width] += stamp
        class_id = config.artifact_class_ids[ARTIFACT_CLASSES.index(artifact.artifact_class)]
        labels.append(InstanceLabel(mask_to_spans(mask, xy0=(x0, y0)), class_id))
    return labels
