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
"""Training labels from scarlet deblender models: one footprint, class and magnitude per source.

`build_labels` turns the scarlet models of a patch (`~.scarlet.ScarletModelData`), the coadd they were
fitted to (`~.multiband.MultibandImage`) and the object table into a label table, one row per source;
`labels_to_examples` cuts the patch into scaled, labelled training images (`~.training_data.TrainingExample`)
and `labels_to_coco` / `examples_to_coco` export COCO ground truth with RLE masks.

Footprints
----------
Every source model is rendered convolved to each band's observed PSF (`~.scarlet.ModelRenderer`) and
clipped to the patch; footprints are, by default, also clipped to the box of the scarlet blend the source
was fitted in (as ``meas_extensions_scarlet`` does).  Two rules turn the rendered model ``M_b`` into a mask;
the default is ``"background_sigma"`` at 1 sigma with inverse-variance weights, which keeps every deblended
source down to the detection limit and reproduces the simulation's truth footprints from exact models (the
label audit, ``bench/label_audit.py``, measures each rule):

``threshold_mode="model"``
    Pixels where ``max_b M_b > model_threshold``.  With the default threshold 0 this is the stack's rule
    (``footprint.scarletModelToHeavy``: every pixel where the convolved model is non-zero).
``threshold_mode="background_sigma"``
    DeepDISC's rule (Merz et al. 2023): pixels where the model's *detection image*
    ``D = sum_b w_b M_b`` reaches ``sigma_threshold`` times the background noise of ``D``,
    ``sigma_D = sqrt(sum_b w_b^2 sigma_b^2)``, where ``sigma_b^2`` is the median of band ``b``'s variance
    plane over pixels with data.  ``detection_weighting="sum"`` (``w_b = 1``) is DeepDISC's sum of bands;
    ``"inverse_variance"`` (``w_b = 1 / sigma_b^2``) is the optimal combination for a flat spectrum and is
    how the simulation (``sim.scene``) defines its truth footprints, so ``sigma_threshold`` equal to the
    simulation's ``truth_threshold_sigma`` reproduces them from exact models.

Pixels without data (``invalid_planes`` set in any band, or non-finite) are removed from every footprint;
sources left with fewer than ``min_area`` pixels are dropped.  Isolated sources whose archive stores no model
(upstream's ``IsolatedSourceData``) use the image inside their stored footprint instead: in ``"model"`` mode
the footprint is the stored one, in ``"background_sigma"`` mode the stored footprint pixels whose image value
passes the threshold (``flag_model_from_image`` marks them).

Object table join and classes
-----------------------------
A source joins the object table by ``id_column`` (``objectId``): in the Rubin pipelines the catalog id of a
deblended child *is* its scarlet source id and an isolated source is stored under its object's id; the
simulated repositories (``sim.repo``) follow the same rule, with and without exact ("truth") models.
Sources missing from the table are dropped and counted.  ``class_source="extendedness"`` classifies by
``refExtendedness``: galaxy when ``>= extendedness_threshold``, star below, no label when NaN.
``class_source="reference"`` implements DeepDISC's HSC->HST idea: each label takes the class of the nearest
object of an external reference catalog (e.g. HST/COSMOS, or a simulation's truth table) within
``reference_match_radius_arcsec``, optionally only when their magnitudes agree within
``reference_max_delta_mag``; unmatched sources get no label.  Sources without a valid class are dropped
and counted.  The magnitude is the AB magnitude of ``flux_column`` (nJy) in the reference band (the object
table's ``refBand`` per row, or ``ref_band``).

Blendedness is BTK's ``1 - (S_k . S_k) / (S_all . S_k)`` on the detection image of the rendered models
(``S_all`` is the sum of all sources' models), over the patch pixels of the source's rendered box.

Quality cut: a patch (or a training tile) in which more than ``max_no_data_fraction`` of the pixels have
no data (DeepDISC drops images with more than 30%) gives no labels; `build_labels` then returns an empty
table whose metadata says why (``skipped_reason``).

Label table columns
-------------------
``source_id``, ``parent_id`` (the top-level blend id; an isolated source's own id), ``centroid_x/y``
(detection-image flux-weighted, parent pixel coordinates), ``coord_ra/dec``, ``bbox_x0/y0/x1/y1``
(inclusive, parent coordinates), ``footprint`` (flattened ``int32`` spans, parent coordinates),
``footprint_area``, ``class_id``, ``class_name``, ``extendedness``, ``ref_separation_arcsec``, ``mag``,
``mag_band``, ``blendedness``, ``nodata_fraction``, ``is_primary`` and the flags ``flag_patch_edge``,
``flag_nodata``, ``flag_saturated``, ``flag_isolated``, ``flag_model_from_image``.  ``table.meta`` records
the configuration, the counts of dropped sources by reason, the patch's NO_DATA fraction and box, the bands
and the class names.
"""

from __future__ import annotations

__all__ = [
    "CLASS_SOURCES",
    "DETECTION_WEIGHTINGS",
    "REFERENCE_UNMATCHED",
    "THRESHOLD_MODES",
    "LabelConfig",
    "background_sigmas",
    "build_labels",
    "detection_weights",
    "empty_labels",
    "examples_to_coco",
    "label_columns",
    "labels_to_coco",
    "labels_to_examples",
    "tile_origins",
]

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from .augment import crop_spans
from .coco import CocoImage, coco_ground_truth
from .footprints import SPAN_DTYPE, flatten_spans, mask_to_spans, spans_area, unflatten_spans
from .matching import SourceArrays
from .multiband import MultibandImage
from .photometry import njy_to_mag
from .scaling import ScalingSpec
from .scarlet import (
    HierarchicalBlendData,
    IsolatedSourceData,
    ModelRenderer,
    ScarletBlendData,
    ScarletModelData,
    ScarletSourceData,
)
from .training_data import InstanceLabel, TrainingExample

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


@dataclass
class _SourceEntry:
    """One scarlet source with where it came from."""

    source_id: int
    parent_id: int
    source: ScarletSourceData | IsolatedSourceData
    blend_box: tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive, parent coordinates
    isolated: bool


def _iter_sources(models: ScarletModelData) -> Iterator[_SourceEntry]:
    for parent_id, blend in models.blends.items():
        leaves = blend.iter_blends() if isinstance(blend, HierarchicalBlendData) else [blend]
        for leaf in leaves:
            if not isinstance(leaf, ScarletBlendData):
                raise TypeError(f"blend {parent_id} holds a {type(leaf).__name__}, not a scarlet blend")
            (y0, x0), (height, width) = leaf.origin, leaf.shape
            for source_id, source in leaf.sources.items():
                yield _SourceEntry(
                    int(source_id), int(parent_id), source, (y0, x0, y0 + height, x0 + width), False
                )
    for source_id, isolated in models.isolated.items():
        y0, x0 = isolated.origin
        height, width = np.shape(isolated.span_array)
        yield _SourceEntry(int(source_id), int(source_id), isolated, (y0, x0, y0 + height, x0 + width), True)


def _has_stored_model(source: ScarletSourceData | IsolatedSourceData) -> bool:
    if isinstance(source, IsolatedSourceData):
        metadata = source.metadata or {}
        return "spectrum" in metadata and "morph" in metadata
    return True


@dataclass
class _Rendered:
    """A source's clipped detection-image stamp and footprint, in parent coordinates."""

    entry: _SourceEntry
    origin: tuple[int, int]  # (y0, x0) of the stamp
    detection: np.ndarray  # [h, w] float32 detection image of the model
    footprint: np.ndarray  # [h, w] bool, NO_DATA removed
    removed_no_data: int
    from_image: bool


def _intersect(*boxes: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    y0 = max(box[0] for box in boxes)
    x0 = max(box[1] for box in boxes)
    y1 = min(box[2] for box in boxes)
    x1 = min(box[3] for box in boxes)
    return y0, x0, max(y1, y0), max(x1, x0)


def _render(
    entry: _SourceEntry,
    renderer: ModelRenderer,
    image: MultibandImage,
    invalid: np.ndarray,
    weights: np.ndarray,
    threshold: float | None,
    config: LabelConfig,
) -> _Rendered | None:
    """Render one source, clip it and threshold it; `None` when nothing of it lies in the patch."""
    from_image = not _has_stored_model(entry.source)
    if from_image:
        cube, origin = ModelRenderer.render_isolated(entry.source, image)  # type: ignore[arg-type]
        cube = np.nan_to_num(cube, nan=0.0, posinf=0.0, neginf=0.0)
        stored = np.asarray(entry.source.span_array) != 0  # type: ignore[union-attr]
    else:
        cube, origin = renderer.render(entry.source, observed=True)
        stored = None
    height, width = cube.shape[1:]
    stamp_box = (origin[0], origin[1], origin[0] + height, origin[1] + width)
    patch_box = (image.xy0[1], image.xy0[0], image.xy0[1] + image.height, image.xy0[0] + image.width)
    y0, x0, y1, x1 = _intersect(stamp_box, patch_box)
    if y1 <= y0 or x1 <= x0:
        return None
    stamp_slice = (slice(y0 - origin[0], y1 - origin[0]), slice(x0 - origin[1], x1 - origin[1]))
    cube = cube[(slice(None), *stamp_slice)]
    # The whole model (in the patch) counts for blendedness and centroids; only footprints are clipped.
    detection = np.tensordot(weights, cube.astype(np.float64), axes=1)
    if from_image and config.threshold_mode == "model":
        footprint = stored[stamp_slice].copy()
    elif config.threshold_mode == "model":
        footprint = cube.max(axis=0) > config.model_threshold
    else:
        footprint = detection >= threshold
    if stored is not None:
        footprint &= stored[stamp_slice]
    if config.clip_to_blend_box:
        by0, bx0, by1, bx1 = entry.blend_box
        in_blend = np.zeros_like(footprint)
        in_blend[max(by0 - y0, 0) : max(by1 - y0, 0), max(bx0 - x0, 0) : max(bx1 - x0, 0)] = True
        footprint &= in_blend
    patch_slice = (slice(y0 - patch_box[0], y1 - patch_box[0]), slice(x0 - patch_box[1], x1 - patch_box[1]))
    no_data = footprint & invalid[patch_slice]
    removed = int(no_data.sum())
    footprint &= ~no_data
    return _Rendered(entry, (y0, x0), detection.astype(np.float32), footprint, removed, from_image)


def _mag(flux: float) -> float:
    return float(njy_to_mag(flux))


def _object_lookup(objects: Table | None, config: LabelConfig) -> dict[int, int]:
    if objects is None:
        return {}
    if config.id_column not in objects.colnames:
        raise KeyError(
            f"object table has no id column {config.id_column!r} to join on; it has {objects.colnames}"
        )
    ids = np.asarray(objects[config.id_column], dtype=np.int64)
    lookup = {int(value): index for index, value in enumerate(ids)}
    if len(lookup) != ids.size:
        raise ValueError(f"object table column {config.id_column!r} has duplicate ids")
    return lookup


def _reference_arrays(reference: Table, config: LabelConfig) -> tuple[SkyCoord, np.ndarray]:
    needed = [config.reference_ra_column, config.reference_dec_column, config.reference_star_column]
    missing = [name for name in needed if name not in reference.colnames]
    if missing:
        raise KeyError(f"reference catalog lacks column(s) {missing}; it has {reference.colnames}")
    coords = SkyCoord(
        np.asarray(reference[config.reference_ra_column], dtype=float) * u.deg,
        np.asarray(reference[config.reference_dec_column], dtype=float) * u.deg,
    )
    is_star = np.asarray(reference[config.reference_star_column])
    if is_star.dtype.kind in "US":
        raise TypeError(
            f"reference column {config.reference_star_column!r} must be boolean or numeric, not strings"
        )
    return coords, is_star.astype(bool)


def build_labels(
    image: MultibandImage,
    models: ScarletModelData,
    objects: Table | None,
    *,
    config: LabelConfig | None = None,
    reference: Table | None = None,
    **overrides: Any,
) -> Table:
    """Build training labels, one row per deblended source, from scarlet models.

    Parameters
    ----------
    image : `MultibandImage`
        The coadd patch the models were fitted to (every model band must be present; ``xy0`` honoured).
    models : `~.scarlet.ScarletModelData`
        The patch's scarlet models (bands and PSFs in their metadata).
    objects : `astropy.table.Table` or `None`
        Object table (``object_patch``) with ``id_column``, the extendedness and flux columns; `None` only
        with ``class_source="reference"`` (magnitudes are then unknown).
    config : `LabelConfig`, optional
        Parameters; keyword ``overrides`` replace individual fields (e.g. ``threshold_mode="model"``).
    reference : `astropy.table.Table`, optional
        Reference catalog for ``class_source="reference"``.

    Returns
    -------
    labels : `astropy.table.Table`
        One row per labelled source (columns in the module docstring), sorted by ``source_id``.  Metadata:
        ``label_config``, ``class_names``, ``bands``, ``image_bbox`` (x0, y0, width, height),
        ``no_data_fraction``, ``skipped_reason`` (empty unless the patch was skipped), ``n_sources`` and
        ``n_dropped`` (counts by reason: ``not_in_objects``, ``no_class``, ``too_small``,
        ``no_reference_match``, ``reference_mag_mismatch``).

    Raises
    ------
    MissingBandError
        If a model band is missing from the image.
    ValueError, KeyError
        For inconsistent inputs (no variance where it is needed, missing columns, duplicate ids).
    """
    config = LabelConfig(**{**asdict(config or LabelConfig()), **overrides})
    if objects is None and config.class_source == "extendedness":
        raise ValueError("class_source='extendedness' needs the object table")
    if config.class_source == "reference" and reference is None:
        raise ValueError("class_source='reference' needs a reference catalog")
    bands = models.bands
    image = image.select_bands(bands)
    invalid = image.invalid_pixels(config.invalid_planes).any(axis=0)
    no_data_fraction = float(invalid.mean()) if invalid.size else 1.0
    meta: dict[str, Any] = {
        "bands": list(bands),
        "image_bbox": [image.xy0[0], image.xy0[1], image.width, image.height],
        "no_data_fraction": no_data_fraction,
        "n_sources": sum(1 for _ in models.iter_sources()) + len(models.isolated),
        "n_dropped": {},
    }
    if no_data_fraction > config.max_no_data_fraction:
        reason = (
            f"{100 * no_data_fraction:.1f}% of the pixels have no data "
            f"(more than max_no_data_fraction={config.max_no_data_fraction:g})"
        )
        return empty_labels(config, **meta, skipped_reason=reason)

    needs_noise = config.threshold_mode == "background_sigma" or config.detection_weighting != "sum"
    sigmas = background_sigmas(image, invalid) if needs_noise else np.ones(len(bands))
    weights = detection_weights(config.detection_weighting, sigmas)
    threshold = None
    if config.threshold_mode == "background_sigma":
        threshold = config.sigma_threshold * math.sqrt(float(np.sum(weights**2 * sigmas**2)))
    meta["band_sigmas"] = [float(s) for s in sigmas] if needs_noise else None
    meta["detection_weights"] = [float(w) for w in weights]
    meta["detection_threshold"] = threshold

    renderer = models.renderer()
    rendered: list[_Rendered] = []
    x_begin, y_begin = image.xy0
    # The detection image of all models, for blendedness; float64 keeps the dot products exact enough.
    all_models = np.zeros(image.shape, dtype=np.float64)
    for entry in _iter_sources(models):
        result = _render(entry, renderer, image, invalid, weights, threshold, config)
        if result is None:
            continue
        (y0, x0), (height, width) = result.origin, result.detection.shape
        all_models[y0 - y_begin : y0 - y_begin + height, x0 - x_begin : x0 - x_begin + width] += (
            result.detection
        )
        rendered.append(result)

    lookup = _object_lookup(objects, config)
    reference_arrays = _reference_arrays(reference, config) if config.class_source == "reference" else None
    saturated_bits = image.plane_mask(config.saturated_planes)
    dropped = dict.fromkeys(
        ("not_in_objects", "no_class", "too_small", "no_reference_match", "reference_mag_mismatch"), 0
    )
    rows: list[dict[str, Any]] = []
    for result in sorted(rendered, key=lambda r: r.entry.source_id):
        entry = result.entry
        row_index = lookup.get(entry.source_id)
        if objects is not None and row_index is None:
            dropped["not_in_objects"] += 1
            continue
        area = int(result.footprint.sum())
        if area < config.min_area:
            dropped["too_small"] += 1
            continue
        row = _describe(result, image, all_models, saturated_bits, objects, row_index, config, bands)
        if config.class_source == "extendedness":
            value = row["extendedness"]
            if not math.isfinite(value):
                dropped["no_class"] += 1
                continue
            row["class_id"] = config.galaxy_id if value >= config.extendedness_threshold else config.star_id
        rows.append(row)

    if reference_arrays is not None and rows:
        fallback = {"n_class_from_extendedness": 0}
        rows = _classify_by_reference(rows, reference, reference_arrays, config, dropped, fallback)
        meta.update(fallback)
    meta["n_dropped"] = dropped
    if not rows:
        return empty_labels(config, **meta)
    return _rows_to_table(rows, config, meta)


def _describe(
    result: _Rendered,
    image: MultibandImage,
    all_models: np.ndarray,
    saturated: np.ndarray,
    objects: Table | None,
    row_index: int | None,
    config: LabelConfig,
    bands: Sequence[str],
) -> dict[str, Any]:
    """Every column of one label except the class."""
    entry = result.entry
    (y0, x0), (height, width) = result.origin, result.detection.shape
    ly0, lx0 = y0 - image.xy0[1], x0 - image.xy0[0]
    local = (slice(ly0, ly0 + height), slice(lx0, lx0 + width))
    spans = mask_to_spans(result.footprint, xy0=(x0, y0))
    rows_in, cols_in = np.nonzero(result.footprint)
    detection = result.detection.astype(np.float64)
    flux = np.clip(detection[rows_in, cols_in], 0.0, None)
    if flux.sum() > 0:
        centroid_x = float(np.sum(flux * cols_in) / flux.sum()) + x0
        centroid_y = float(np.sum(flux * rows_in) / flux.sum()) + y0
    else:
        centroid_x, centroid_y = float(cols_in.mean()) + x0, float(rows_in.mean()) + y0
    self_dot = float(np.sum(detection * detection))
    all_dot = float(np.sum(all_models[local] * detection))
    blendedness = 1.0 - self_dot / all_dot if all_dot > 0 else math.nan
    candidate = int(result.footprint.sum()) + result.removed_no_data
    margin = config.edge_margin
    touches_edge = (
        spans[:, 1].min() - image.xy0[0] <= margin
        or spans[:, 2].max() - image.xy0[0] >= image.width - 1 - margin
        or spans[:, 0].min() - image.xy0[1] <= margin
        or spans[:, 0].max() - image.xy0[1] >= image.height - 1 - margin
    )
    ra = dec = math.nan
    if image.wcs is not None:
        sky_ra, sky_dec = image.pixel_to_sky(np.array([centroid_x]), np.array([centroid_y]))
        ra, dec = float(sky_ra[0]), float(sky_dec[0])
    extendedness = math.nan
    mag_band = config.ref_band or bands[0]
    mag = math.nan
    is_primary = True
    if objects is not None and row_index is not None:
        obj = objects[row_index]
        if image.wcs is None and "coord_ra" in objects.colnames and "coord_dec" in objects.colnames:
            ra, dec = float(obj["coord_ra"]), float(obj["coord_dec"])
        if config.extendedness_column in objects.colnames:
            extendedness = float(obj[config.extendedness_column])
        elif config.class_source == "extendedness":
            raise KeyError(
                f"object table has no extendedness column {config.extendedness_column!r}; "
                f"it has {objects.colnames}"
            )
        if not config.ref_band and config.ref_band_column in objects.colnames:
            mag_band = str(obj[config.ref_band_column]).strip() or mag_band
        flux_name = config.flux_column.format(band=mag_band)
        if flux_name not in objects.colnames:
            raise KeyError(f"object table has no flux column {flux_name!r} for magnitudes")
        mag = _mag(float(obj[flux_name]))
        if config.primary_column in objects.colnames:
            is_primary = bool(obj[config.primary_column])
    x_min, y_min = int(spans[:, 1].min()), int(spans[:, 0].min())
    x_max, y_max = int(spans[:, 2].max()), int(spans[:, 0].max())
    return {
        "source_id": entry.source_id,
        "parent_id": entry.parent_id,
        "centroid_x": centroid_x,
        "centroid_y": centroid_y,
        "coord_ra": ra,
        "coord_dec": dec,
        "bbox_x0": x_min,
        "bbox_y0": y_min,
        "bbox_x1": x_max,
        "bbox_y1": y_max,
        "footprint_area": spans_area(spans),
        "class_id": -1,
        "extendedness": extendedness,
        "ref_separation_arcsec": math.nan,
        "mag": mag,
        "mag_band": mag_band,
        "blendedness": blendedness,
        "nodata_fraction": result.removed_no_data / candidate if candidate else 0.0,
        "is_primary": is_primary,
        "flag_patch_edge": bool(touches_edge),
        "flag_nodata": result.removed_no_data > 0,
        "flag_saturated": bool(np.any(saturated[local] & result.footprint)),
        "flag_isolated": entry.isolated,
        "flag_model_from_image": result.from_image,
        "footprint": flatten_spans(spans),
    }


def _classify_by_reference(
    rows: list[dict[str, Any]],
    reference: Table,
    reference_arrays: tuple[SkyCoord, np.ndarray],
    config: LabelConfig,
    dropped: dict[str, int],
    fallback: dict[str, int],
) -> list[dict[str, Any]]:
    """Class of the nearest reference object within the radius (and magnitude tolerance)."""
    coords, is_star = reference_arrays
    ra = np.array([row["coord_ra"] for row in rows])
    dec = np.array([row["coord_dec"] for row in rows])
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise ValueError("reference matching needs sky positions: give the image a WCS or coord_ra/dec")
    kept = []

    def unmatched(row: dict[str, Any], reason: str) -> None:
        value = row.get("extendedness", math.nan)
        if config.reference_unmatched == "extendedness" and math.isfinite(value):
            row["class_id"] = config.galaxy_id if value >= config.extendedness_threshold else config.star_id
            fallback["n_class_from_extendedness"] += 1
            kept.append(row)
        else:
            dropped[reason] += 1

    if len(coords) == 0:
        for row in rows:
            unmatched(row, "no_reference_match")
        return kept
    index, separation, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(coords)
    separation = separation.to_value(u.arcsec)
    for row, match, sep in zip(rows, np.atleast_1d(index), np.atleast_1d(separation)):
        if sep > config.reference_match_radius_arcsec:
            unmatched(row, "no_reference_match")
            continue
        if config.reference_mag_column and math.isfinite(config.reference_max_delta_mag):
            name = config.reference_mag_column.format(band=row["mag_band"])
            if name not in reference.colnames:
                raise KeyError(f"reference catalog has no magnitude column {name!r}")
            reference_mag = float(reference[name][match])
            if (
                math.isfinite(reference_mag)
                and math.isfinite(row["mag"])
                and abs(reference_mag - row["mag"]) > config.reference_max_delta_mag
            ):
                unmatched(row, "reference_mag_mismatch")
                continue
        row["class_id"] = config.star_id if is_star[match] else config.galaxy_id
        row["ref_separation_arcsec"] = float(sep)
        kept.append(row)
    return kept


def _rows_to_table(rows: list[dict[str, Any]], config: LabelConfig, meta: dict[str, Any]) -> Table:
    table = Table()
    for name, dtype, unit, description in label_columns(config.class_names):
        if name == "class_name":
            values = np.array([config.class_names[row["class_id"]] for row in rows], dtype=dtype)
        else:
            values = np.array([row[name] for row in rows], dtype=dtype)
        table[name] = values
        table[name].unit = unit
        table[name].description = description
    footprints = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        footprints[index] = row["footprint"]
    table["footprint"] = footprints
    table["footprint"].description = _FOOTPRINT_DESCRIPTION
    table.meta.update(_base_meta(config))
    table.meta.update(meta)
    return table


# ---------------------------------------------------------------------------------------------------------
# Training examples and COCO export
# ---------------------------------------------------------------------------------------------------------


def _as_spans(value: Any) -> np.ndarray:
    """Spans from a label-table cell: flattened ``int32`` (as stored) or ``(N, 3)``."""
    array = np.asarray(value)
    if array.ndim == 2:
        return np.asarray(array, dtype=SPAN_DTYPE).reshape(-1, 3)
    return unflatten_spans(array)


def tile_origins(length: int, tile_size: int, overlap: int = 0) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``: stride ``tile_size - overlap``, last tile flush.

    A length no larger than ``tile_size`` gives one tile at 0 (of the full length).
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile_size {tile_size}")
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size + 1, tile_size - overlap))
    if starts[-1] + tile_size < length:
        starts.append(length - tile_size)
    return starts


def labels_to_examples(
    image: MultibandImage,
    labels: Table,
    scaling: ScalingSpec,
    *,
    tile_size: int = 512,
    overlap: int = 0,
    min_fraction_inside: float = 0.5,
    max_no_data_fraction: float = 0.3,
    invalid_planes: Sequence[str] | None = None,
    skip_empty: bool = True,
    example_prefix: str = "",
) -> list[TrainingExample]:
    """Cut a labelled patch into scaled training images.

    The whole patch is scaled once (as inference does), then cut into square tiles of ``tile_size`` pixels
    (smaller when the patch is) laid out by `tile_origins`.  A label goes into a tile when at least
    ``min_fraction_inside`` of its footprint lies inside; its mask is clipped to the tile and shifted to
    the tile's local coordinates.  Labels mostly outside a tile are left out of it (the pixels they cover
    there are unlabelled).

    Parameters
    ----------
    image : `MultibandImage`
        The patch, with the bands (and their order) the model is trained on.
    labels : `astropy.table.Table`
        Output of `build_labels` (or the same table read back from the Butler).
    scaling : `~.scaling.ScalingSpec`
        Contrast scaling of the model.
    tile_size : `int`
        Side of the tiles (pixels).
    overlap : `int`
        Overlap of neighbouring tiles (0: non-overlapping, the last one flush with the border).
    min_fraction_inside : `float`
        Fraction of a footprint that must be inside a tile for the label to be kept there, in ``(0, 1]``.
    max_no_data_fraction : `float`
        Tiles with more pixels without data than this are skipped.
    invalid_planes : sequence of `str`, optional
        Planes of pixels without data (default: the scaling's ``invalid_planes``).
    skip_empty : `bool`
        Skip tiles without any label.
    example_prefix : `str`
        Prefix of the example ids (``<prefix>x<x0>_y<y0>``, parent coordinates of the tile corner).

    Returns
    -------
    examples : `list` [`TrainingExample`]
        Examples with ``valid`` maps and metadata ``xy0`` (parent coordinates of the tile) and ``tile``.
    """
    if not 0.0 < min_fraction_inside <= 1.0:
        raise ValueError(f"min_fraction_inside must be in (0, 1], got {min_fraction_inside}")
    if not 0.0 <= max_no_data_fraction <= 1.0:
        raise ValueError(f"max_no_data_fraction must be in [0, 1], got {max_no_data_fraction}")
    for name in ("footprint", "class_id", "source_id"):
        if name not in labels.colnames:
            raise KeyError(f"label table has no {name!r} column; it has {labels.colnames}")
    planes = tuple(scaling.invalid_planes if invalid_planes is None else invalid_planes)
    scaled, _ = scaling.apply(image)
    no_data = image.invalid_pixels(planes).any(axis=0)
    spans_list = [_as_spans(value) for value in labels["footprint"]]
    areas = np.array([spans_area(spans) for spans in spans_list], dtype=np.int64)
    boxes = np.array(
        [
            (s[:, 1].min(), s[:, 0].min(), s[:, 2].max(), s[:, 0].max()) if s.shape[0] else (0, 0, -1, -1)
            for s in spans_list
        ],
        dtype=np.int64,
    ).reshape(-1, 4)
    class_ids = np.asarray(labels["class_id"], dtype=np.int64)
    source_ids = np.asarray(labels["source_id"], dtype=np.int64)
    unknown = np.full(len(labels), np.nan)
    mags = np.asarray(labels["mag"], dtype=float) if "mag" in labels.colnames else unknown
    blend = np.asarray(labels["blendedness"], dtype=float) if "blendedness" in labels.colnames else unknown
    x_begin, y_begin = image.xy0
    examples = []
    tile_height = min(tile_size, image.height)
    tile_width = min(tile_size, image.width)
    for ty in tile_origins(image.height, tile_size, overlap):
        for tx in tile_origins(image.width, tile_size, overlap):
            tile_no_data = no_data[ty : ty + tile_height, tx : tx + tile_width]
            if tile_no_data.mean() > max_no_data_fraction:
                continue
            px0, py0 = x_begin + tx, y_begin + ty
            overlapping = np.flatnonzero(
                (boxes[:, 2] >= px0)
                & (boxes[:, 0] < px0 + tile_width)
                & (boxes[:, 3] >= py0)
                & (boxes[:, 1] < py0 + tile_height)
            )
            instances = []
            for index in overlapping:
                local = crop_spans(spans_list[index], px0, py0, tile_width, tile_height)
                inside = spans_area(local)
                if inside == 0 or inside < min_fraction_inside * areas[index]:
                    continue
                instances.append(
                    InstanceLabel(
                        spans=local,
                        class_id=int(class_ids[index]),
                        source_id=int(source_ids[index]),
                        magnitude=float(mags[index]),
                        blendedness=float(blend[index]),
                    )
                )
            if skip_empty and not instances:
                continue
            examples.append(
                TrainingExample(
                    image=scaled[:, ty : ty + tile_height, tx : tx + tile_width],
                    instances=instances,
                    example_id=f"{example_prefix}x{px0}_y{py0}",
                    bands=image.bands,
                    valid=~tile_no_data,
                    metadata={"xy0": (px0, py0), "tile": (tx, ty, tile_width, tile_height)},
                )
            )
    return examples


def _class_mapping(labels: Table, class_names: Sequence[str] | Mapping[int, str] | None) -> dict[int, str]:
    if class_names is None:
        class_names = labels.meta.get("class_names", LabelConfig().class_names)
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    return dict(enumerate(str(name) for name in class_names))


def labels_to_coco(
    labels: Table,
    image: MultibandImage | CocoImage,
    *,
    image_id: int = 1,
    file_name: str = "",
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """COCO ground truth (JSON-ready dict, RLE masks) of one labelled patch.

    Parameters
    ----------
    labels : `astropy.table.Table`
        Output of `build_labels`.
    image : `MultibandImage` or `~.coco.CocoImage`
        The patch (its size and ``xy0``; COCO coordinates are relative to its corner).
    image_id : `int`
        COCO image id (ignored when ``image`` is a `~.coco.CocoImage`).
    file_name : `str`
        File name recorded for the image (ignored when ``image`` is a `~.coco.CocoImage`).
    class_names : sequence or mapping, optional
        Class names by id (default: the table's ``class_names`` metadata, else star/galaxy).

    Returns
    -------
    dataset : `dict`
        ``info, images, annotations, categories`` (``category_id = class_id + 1``); write it with
        `~.coco.write_coco_json`.  Annotations carry ``source_index`` (row) and ``mag``.
    """
    if isinstance(image, MultibandImage):
        image = CocoImage(
            width=image.width, height=image.height, xy0=image.xy0, image_id=image_id, file_name=file_name
        )
    sources = SourceArrays(
        x=np.asarray(labels["centroid_x"], dtype=float),
        y=np.asarray(labels["centroid_y"], dtype=float),
        spans=[_as_spans(value) for value in labels["footprint"]],
        class_id=np.asarray(labels["class_id"], dtype=np.int64),
        mag=np.asarray(labels["mag"], dtype=float) if "mag" in labels.colnames else None,
    )
    return coco_ground_truth([(image, sources)], class_names=_class_mapping(labels, class_names))


def examples_to_coco(
    examples: Sequence[TrainingExample], class_names: Sequence[str] | Mapping[int, str] | None = None
) -> dict[str, Any]:
    """COCO ground truth of training examples: one COCO image per example (``file_name`` = example id).

    Parameters
    ----------
    examples : sequence of `TrainingExample`
        Examples from `labels_to_examples` (instance spans in local coordinates).
    class_names : sequence or mapping, optional
        Class names by id (default star/galaxy).
    """
    entries = []
    for image_id, example in enumerate(examples, start=1):
        instances = example.instances
        spans = [label.spans for label in instances]
        centres = [((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0) for b in (label.bbox for label in instances)]
        sources = SourceArrays(
            x=np.array([c[0] for c in centres], dtype=float),
            y=np.array([c[1] for c in centres], dtype=float),
            bbox=np.array([label.bbox for label in instances], dtype=float).reshape(-1, 4),
            spans=spans,
            class_id=np.array([label.class_id for label in instances], dtype=np.int64),
            mag=np.array([label.magnitude for label in instances], dtype=float),
        )
        entries.append(
            (CocoImage(example.width, example.height, (0, 0), image_id, example.example_id), sources)
        )
    if class_names is None:
        class_names = LabelConfig().class_names
    mapping = (
        {int(k): str(v) for k, v in class_names.items()}
        if isinstance(class_names, Mapping)
        else dict(enumerate(str(name) for name in class_names))
    )
    return coco_ground_truth(entries, class_names=mapping)
