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

"""`LabelConfig`, the label table's columns, and the detection image's band weights."""

from __future__ import annotations

__all__ = [
    "CLASS_SOURCES",
    "DETECTION_WEIGHTINGS",
    "REFERENCE_UNMATCHED",
    "THRESHOLD_MODES",
    "LabelConfig",
    "background_sigmas",
    "detection_weights",
    "empty_labels",
    "label_columns",
]

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table

from ..multiband import MultibandImage

THRESHOLD_MODES = ("model", "background_sigma")
"""Footprint rules of `build_labels` (see the module docstring)."""

CLASS_SOURCES = ("extendedness", "reference")
"""Where `build_labels` takes classes from."""

DETECTION_WEIGHTINGS = ("sum", "inverse_variance")
"""Band weights of the detection image: DeepDISC's plain sum, or inverse-variance weights."""

REFERENCE_UNMATCHED = ("drop", "extendedness")
"""What `build_labels` does with sources that have no reference match (``class_source="reference"``)."""


@dataclass(frozen=True)
class LabelConfig:
    """Parameters of `build_labels` (see the module docstring for the rules).

    Parameters
    ----------
    threshold_mode : `str`
        ``"model"`` (rendered model above ``model_threshold``, the stack's rule) or ``"background_sigma"``
        (detection image of the model at least ``sigma_threshold`` background sigma, DeepDISC's rule).
    model_threshold : `float`
        Threshold on the rendered observed-PSF model, image units (nJy), for ``"model"``.
    sigma_threshold : `float`
        Threshold in units of the detection image's background noise, for ``"background_sigma"``.
    detection_weighting : `str`
        ``"sum"`` or ``"inverse_variance"`` band weights of the detection image (thresholds, blendedness,
        centroids).
    clip_to_blend_box : `bool`
        Clip footprints to the box of the scarlet blend the source was fitted in, as the stack does.
    class_source : `str`
        ``"extendedness"`` (object table) or ``"reference"`` (external catalog).
    extendedness_column : `str`
        Object-table column of the extendedness (``refExtendedness``).
    extendedness_threshold : `float`
        Extendedness at or above which a source is a galaxy.
    class_names : `tuple` [`str`, ...]
        Class names by class id; must contain ``"star"`` and ``"galaxy"``.
    reference_match_radius_arcsec : `float`
        Matching radius to the reference catalog.
    reference_max_delta_mag : `float`
        Largest magnitude difference of a reference match (``inf`` disables; skipped when either magnitude
        is unknown).
    reference_ra_column, reference_dec_column : `str`
        Reference catalog coordinate columns (degrees).
    reference_star_column : `str`
        Reference catalog column, true for stars (bool, or numeric non-zero).
    reference_mag_column : `str`
        Reference magnitude column, ``{band}`` replaced by the label's magnitude band; empty: no check.
    reference_unmatched : `str`
        What happens to a source without a (magnitude-consistent) reference match: ``"drop"`` it, or keep
        it with its ``"extendedness"`` class (counted as ``n_class_from_extendedness`` in the metadata).
        Dropping teaches the model that such sources are background; keeping them keeps every footprint
        the deblender found.
    min_area : `int`
        Smallest footprint (pixels, after removing pixels without data).
    max_no_data_fraction : `float`
        Skip the patch when more than this fraction of its pixels has no data.
    invalid_planes : `tuple` [`str`, ...]
        Mask planes of pixels without data.
    saturated_planes : `tuple` [`str`, ...]
        Mask planes that set ``flag_saturated``.
    edge_margin : `int`
        ``flag_patch_edge`` when a footprint comes within this many pixels of the image border.
    id_column : `str`
        Object-table id column joined to the scarlet source ids.
    ref_band : `str`
        Band of the magnitudes; empty: the object table's ``ref_band_column`` per row (else the first
        model band).
    ref_band_column : `str`
        Object-table column naming each object's reference band.
    flux_column : `str`
        Object-table flux column (nJy), ``{band}`` replaced by the band.
    primary_column : `str`
        Object-table column copied to ``is_primary`` (all true when absent).
    """

    threshold_mode: str = "background_sigma"
    model_threshold: float = 0.0
    sigma_threshold: float = 1.0
    detection_weighting: str = "inverse_variance"
    clip_to_blend_box: bool = True
    class_source: str = "extendedness"
    extendedness_column: str = "refExtendedness"
    extendedness_threshold: float = 0.5
    class_names: tuple[str, ...] = ("star", "galaxy")
    reference_match_radius_arcsec: float = 1.0
    reference_max_delta_mag: float = 1.0
    reference_ra_column: str = "ra"
    reference_dec_column: str = "dec"
    reference_star_column: str = "is_star"
    reference_mag_column: str = ""
    reference_unmatched: str = "drop"
    min_area: int = 1
    max_no_data_fraction: float = 0.3
    invalid_planes: tuple[str, ...] = ("NO_DATA",)
    saturated_planes: tuple[str, ...] = ("SAT",)
    edge_margin: int = 0
    id_column: str = "objectId"
    ref_band: str = ""
    ref_band_column: str = "refBand"
    flux_column: str = "{band}_cModelFlux"
    primary_column: str = "detect_isPrimary"

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise sequences to tuples through object.__setattr__.
        for name in ("class_names", "invalid_planes", "saturated_planes"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be one of {THRESHOLD_MODES}, got {self.threshold_mode!r}")
        if self.class_source not in CLASS_SOURCES:
            raise ValueError(f"class_source must be one of {CLASS_SOURCES}, got {self.class_source!r}")
        if self.detection_weighting not in DETECTION_WEIGHTINGS:
            raise ValueError(
                f"detection_weighting must be one of {DETECTION_WEIGHTINGS}, got {self.detection_weighting!r}"
            )
        if not math.isfinite(self.model_threshold):
            raise ValueError(f"model_threshold must be finite, got {self.model_threshold}")
        if not (math.isfinite(self.sigma_threshold) and self.sigma_threshold > 0):
            raise ValueError(f"sigma_threshold must be positive, got {self.sigma_threshold}")
        if not 0.0 <= self.max_no_data_fraction <= 1.0:
            raise ValueError(f"max_no_data_fraction must be in [0, 1], got {self.max_no_data_fraction}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be at least 1, got {self.min_area}")
        if self.edge_margin < 0:
            raise ValueError(f"edge_margin must be non-negative, got {self.edge_margin}")
        if not self.reference_match_radius_arcsec > 0:
            raise ValueError(
                f"reference_match_radius_arcsec must be positive, got {self.reference_match_radius_arcsec}"
            )
        if self.reference_unmatched not in REFERENCE_UNMATCHED:
            raise ValueError(
                f"reference_unmatched must be one of {REFERENCE_UNMATCHED}, got {self.reference_unmatched!r}"
            )
        if not self.reference_max_delta_mag > 0:
            raise ValueError(f"reference_max_delta_mag must be positive, got {self.reference_max_delta_mag}")
        missing = [name for name in ("star", "galaxy") if name not in self.class_names]
        if missing or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(
                f"class_names must be unique and include 'star' and 'galaxy', got {list(self.class_names)}"
            )
        if "{band}" not in self.flux_column:
            raise ValueError(f"flux_column must contain '{{band}}', got {self.flux_column!r}")

    @property
    def star_id(self) -> int:
        """Class id of stars."""
        return self.class_names.index("star")

    @property
    def galaxy_id(self) -> int:
        """Class id of galaxies."""
        return self.class_names.index("galaxy")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists for tuples), recorded in the label table's metadata."""
        items = asdict(self).items()
        return {key: list(value) if isinstance(value, tuple) else value for key, value in items}


def label_columns(class_names: Sequence[str]) -> list[tuple[str, Any, Any, str]]:
    """Schema of a label table: ``(name, dtype, unit, description)`` per column, in order."""
    names = ", ".join(f"{index}={name}" for index, name in enumerate(class_names))
    return [
        ("source_id", np.int64, None, "Scarlet source id (= objectId of the object table)"),
        ("parent_id", np.int64, None, "Id of the top-level scarlet blend; an isolated source's own id"),
        ("centroid_x", np.float64, u.pix, "Detection-image model-weighted centroid x, parent coordinates"),
        ("centroid_y", np.float64, u.pix, "Detection-image model-weighted centroid y, parent coordinates"),
        ("coord_ra", np.float64, u.deg, "Right ascension of the centroid (image WCS, else object table)"),
        ("coord_dec", np.float64, u.deg, "Declination of the centroid (image WCS, else object table)"),
        ("bbox_x0", np.int32, u.pix, "Footprint bounding box minimum x (inclusive), parent coordinates"),
        ("bbox_y0", np.int32, u.pix, "Footprint bounding box minimum y (inclusive), parent coordinates"),
        ("bbox_x1", np.int32, u.pix, "Footprint bounding box maximum x (inclusive), parent coordinates"),
        ("bbox_y1", np.int32, u.pix, "Footprint bounding box maximum y (inclusive), parent coordinates"),
        ("footprint_area", np.int32, u.pix, "Number of pixels in the footprint"),
        ("class_id", np.int32, None, f"Class index ({names})"),
        ("class_name", "U32", None, "Class name"),
        ("extendedness", np.float64, None, "Object-table extendedness (NaN when unavailable)"),
        (
            "ref_separation_arcsec",
            np.float64,
            u.arcsec,
            "Separation to the matched reference object (NaN unless classes come from a reference catalog)",
        ),
        ("mag", np.float64, u.ABmag, "AB magnitude of the object-table flux in mag_band (NaN if unknown)"),
        ("mag_band", "U8", None, "Band of mag"),
        ("blendedness", np.float64, None, "1 - S_k.S_k / S_all.S_k on the detection image of the models"),
        ("nodata_fraction", np.float64, None, "Fraction of the rendered footprint removed as NO_DATA"),
        ("is_primary", bool, None, "Object-table primary flag (true when the table has none)"),
        ("flag_patch_edge", bool, None, "Footprint within edge_margin pixels of the image border"),
        ("flag_nodata", bool, None, "Part of the rendered footprint had no data and was removed"),
        ("flag_saturated", bool, None, "Footprint has a saturated pixel in some band"),
        ("flag_isolated", bool, None, "Isolated source (not deblended)"),
        ("flag_model_from_image", bool, None, "No stored model: the image inside the stored footprint used"),
    ]


_FOOTPRINT_DESCRIPTION = (
    "Footprint as flattened int32 spans (y, x_begin, x_end inclusive), parent coordinates, NO_DATA excluded"
)


def empty_labels(config: LabelConfig | None = None, **meta: Any) -> Table:
    """A label table without rows (every column present), with ``meta`` merged into its metadata."""
    config = config or LabelConfig()
    table = Table()
    for name, dtype, unit, description in label_columns(config.class_names):
        table[name] = np.zeros(0, dtype=dtype)
        table[name].unit = unit
        table[name].description = description
    table["footprint"] = np.empty(0, dtype=object)
    table["footprint"].description = _FOOTPRINT_DESCRIPTION
    table.meta.update(_base_meta(config))
    table.meta.update(meta)
    return table


def _base_meta(config: LabelConfig) -> dict[str, Any]:
    return {
        "label_config": config.to_dict(),
        "class_names": list(config.class_names),
        "skipped_reason": "",
    }


def detection_weights(weighting: str, band_sigmas: np.ndarray, unit_noise: bool = False) -> np.ndarray:
    """Band weights ``w_b`` of the detection image ``sum_b w_b I_b``.

    Parameters
    ----------
    weighting : `str`
        ``"sum"`` (all 1) or ``"inverse_variance"`` (``1 / sigma_b^2``, the optimal combination for a flat
        spectrum).
    band_sigmas : `numpy.ndarray`
        Background noise per band (used for ``"inverse_variance"`` and ``unit_noise``).
    unit_noise : `bool`
        Scale the weights so that the detection image's sky noise is 1 per pixel
        (``w_b / sqrt(sum_c w_c^2 sigma_c^2)``), making it an image in units of its own noise.
    """
    sigmas = np.asarray(band_sigmas, dtype=np.float64).reshape(-1)
    needs_sigmas = weighting == "inverse_variance" or unit_noise
    if needs_sigmas and not np.all(np.isfinite(sigmas) & (sigmas > 0)):
        raise ValueError(f"{weighting} weights need positive finite band noise, got {sigmas}")
    if weighting == "sum":
        weights = np.ones(sigmas.size)
    elif weighting == "inverse_variance":
        weights = 1.0 / sigmas**2
    else:
        raise ValueError(f"detection weighting must be one of {DETECTION_WEIGHTINGS}, got {weighting!r}")
    if unit_noise:
        weights = weights / np.sqrt(np.sum(weights**2 * sigmas**2))
    return weights


def background_sigmas(image: MultibandImage, invalid: np.ndarray | None = None) -> np.ndarray:
    """Background noise per band: square root of the median variance over pixels with data.

    Parameters
    ----------
    image : `MultibandImage`
        Image with a variance plane.
    invalid : `numpy.ndarray`, optional
        ``[H, W]`` pixels to ignore (in addition to non-finite or non-positive variances).

    Raises
    ------
    ValueError
        If the image has no variance plane or a band has no usable variance.
    """
    if image.variance is None:
        raise ValueError(
            "the background noise is taken from the variance plane, but this image has none; "
            "use threshold_mode='model' with detection_weighting='sum'"
        )
    sigmas = np.empty(len(image.bands))
    for index, band in enumerate(image.bands):
        variance = image.variance[index]
        usable = np.isfinite(variance) & (variance > 0)
        if invalid is not None:
            usable &= ~invalid
        if not usable.any():
            raise ValueError(f"band {band!r} has no pixel with a usable variance")
        sigmas[index] = math.sqrt(float(np.median(variance[usable])))
    return sigmas
