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
"""Import human artifact annotations (VGG Image Annotator, COCO) as footprints and label tables.

Two formats are read:

* VGG Image Annotator (VIA) JSON, as DeepGhostBusters (Tanoglidis et al. 2022) distributes its DES
  annotations: a list (or a mapping) of ``{"filename", "regions": [{"shape_attributes": {...},
  "region_attributes": {"Type": "Bright"}}]}`` records, or a VIA project file (``_via_img_metadata``).
  Shapes ``polygon``, ``polyline`` (closed, as DeepGhostBusters uses it), ``rect``, ``circle`` and ``ellipse``
  are supported.  VIA coordinates put pixel centres at integer positions (as ``skimage.draw`` does).
* COCO instance annotations (``images``, ``annotations``, ``categories``): ``segmentation`` polygons (a list
  of ``[x1, y1, x2, y2, ...]`` rings, their union) or run-length encoding.  COCO coordinates put pixel
  ``i`` on ``[i, i + 1)``, i.e. its centre at ``i + 0.5``.

`read_vgg_annotations` and `read_coco_annotations` return, per image file name, a list of
`AnnotationRecord`: the artifact class (one of `~.artifacts.ARTIFACT_CLASSES`, through a class map such as
`DEEPGHOSTBUSTERS_CLASS_MAP`), the annotator's class name, the footprint as spans (`~.footprints`) and its
bounding box.  A polygon covers the pixels whose centre lies inside it (even-odd rule, centres on an edge
included).

Placing annotations on a coadd: annotations are usually drawn on a PNG/JPEG rendering of the image, possibly
binned and flipped.  The annotated image's pixel-edge coordinates ``e`` map to parent pixel coordinates as
``X = xy0 + scale * e - 0.5`` after an optional vertical flip ``e_y -> flip_y_height - e_y`` (for a rendering
with ``origin="lower"``, where row 0 of the array is the bottom row of the picture).  ``clip_shape``
``(height, width)`` clips the footprints to the coadd ``[xy0, xy0 + shape)``.

`annotations_to_label_table` turns one image's records into a label table with the columns of
`~.labels.label_columns` (class ids among ``class_names``, default star, galaxy and the three
``artifact_*`` classes), so that annotated artifacts can be stored, tiled (`~.labels.labels_to_examples`)
and exported (`~.labels.labels_to_coco`) exactly like deblender labels, and concatenated with them.
"""

from __future__ import annotations

__all__ = [
    "DEEPGHOSTBUSTERS_CLASS_MAP",
    "AnnotationRecord",
    "annotations_to_label_table",
    "default_label_class_names",
    "map_class_name",
    "polygon_spans",
    "read_coco_annotations",
    "read_vgg_annotations",
]

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from .artifacts import ARTIFACT_CLASS_PREFIX, ARTIFACT_CLASSES, artifact_class_names
from .footprints import (
    SPAN_DTYPE,
    flatten_spans,
    mask_to_spans,
    spans_area,
    spans_bbox,
    spans_centroid,
    spans_union,
)
from .labels import label_columns

DEEPGHOSTBUSTERS_CLASS_MAP: dict[str, str] = {
    "bright": "ghost_bright",
    "faint": "ghost_faint",
    "rays": "rays",
    "ray": "rays",
}
"""DeepGhostBusters' classes (case-insensitive) to `~.artifacts.ARTIFACT_CLASSES`."""

_CLASS_KEYS = ("Type", "type", "class", "Class", "label", "Label", "category", "name")
_ROW_CHUNK_ELEMENTS = 4_000_000


def default_label_class_names() -> tuple[str, ...]:
    """``("star", "galaxy", "artifact_ghost_bright", "artifact_ghost_faint", "artifact_rays")``."""
    return ("star", "galaxy", *artifact_class_names())


def map_class_name(name: str, class_map: Mapping[str, str] | None = None) -> str | None:
    """The artifact class of an annotator's class name, or `None` if it has none.

    ``class_map`` (default `DEEPGHOSTBUSTERS_CLASS_MAP`) is matched case-insensitively; the artifact class
    names themselves, with or without the ``artifact_`` prefix, always map to themselves.
    """
    key = str(name).strip()
    lowered = key.lower()
    mapping = DEEPGHOSTBUSTERS_CLASS_MAP if class_map is None else class_map
    for source, target in mapping.items():
        if source.lower() == lowered:
            if target not in ARTIFACT_CLASSES:
                raise ValueError(f"class map sends {source!r} to {target!r}, not one of {ARTIFACT_CLASSES}")
            return target
    bare = lowered.removeprefix(ARTIFACT_CLASS_PREFIX)
    return bare if bare in ARTIFACT_CLASSES else None


@dataclass(frozen=True, eq=False)
class AnnotationRecord:
    """One annotated artifact.

    Parameters
    ----------
    image : `str`
        File name of the annotated image.
    artifact_class : `str`
        One of `~.artifacts.ARTIFACT_CLASSES`.
    source_class : `str`
        The annotator's class name.
    spans : `numpy.ndarray`
        ``(N, 3)`` ``int32`` footprint spans, parent coordinates.
    shape : `str`
        Annotation shape (``polygon``, ``polyline``, ``rect``, ``circle``, ``ellipse``, ``coco_polygon``,
        ``coco_rle``).
    annotation_id : `int`
        Region index (VIA) or annotation id (COCO).
    """

    image: str
    artifact_class: str
    source_class: str
    spans: np.ndarray
    shape: str
    annotation_id: int

    @property
    def class_name(self) -> str:
        """Catalog/model class name, ``"artifact_" + artifact_class``."""
        return ARTIFACT_CLASS_PREFIX + self.artifact_class

    @property
    def area(self) -> int:
        """Number of pixels."""
        return spans_area(self.spans)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Inclusive ``(x_min, y_min, x_max, y_max)``, parent coordinates."""
        return spans_bbox(self.spans)


# ---------------------------------------------------------------------------------------------------------
# Rasterisation


def polygon_spans(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    clip_shape: tuple[int, int] | None = None,
    xy0: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Footprint of a polygon: the pixels whose centre (integer coordinates) lies inside.

    Parameters
    ----------
    x, y : sequence of `float`
        Vertices (at least 3; the polygon closes itself), in the pixel coordinates of the footprint.
    clip_shape : `tuple` [`int`, `int`], optional
        ``(height, width)``: keep only pixels in ``[xy0, xy0 + shape)``.
    xy0 : `tuple` [`int`, `int`]
        Origin of ``clip_shape``.

    Returns
    -------
    spans : `numpy.ndarray`
        Canonical ``(N, 3)`` ``int32`` spans (even-odd rule; centres on an edge are inside).
    """
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    if xs.size != ys.size or xs.size < 3:
        raise ValueError(
            f"a polygon needs at least 3 vertices with x and y each, got {xs.size} and {ys.size}"
        )
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("polygon vertices must be finite")
    row_lo, row_hi = math.ceil(ys.min()), math.floor(ys.max())
    if clip_shape is not None:
        row_lo, row_hi = max(row_lo, xy0[1]), min(row_hi, xy0[1] + clip_shape[0] - 1)
    if row_hi < row_lo:
        return np.zeros((0, 3), dtype=SPAN_DTYPE)
    x1, y1 = xs, ys
    x2, y2 = np.roll(xs, -1), np.roll(ys, -1)
    dy = np.where(y2 != y1, y2 - y1, 1.0)
    slope = (x2 - x1) / dy
    pieces = []
    chunk = max(1, _ROW_CHUNK_ELEMENTS // xs.size)
    lower, upper = np.minimum(y1, y2), np.maximum(y1, y2)
    for start in range(row_lo, row_hi + 1, chunk):
        rows = np.arange(start, min(start + chunk, row_hi + 1), dtype=np.float64)[:, None]
        # Each half-open rule on the edges' y extent counts every crossing once; their union also keeps the
        # rows through the polygon's lowest and highest vertices (centres on the outline are inside).
        for crosses in ((lower <= rows) & (rows < upper), (lower < rows) & (rows <= upper)):
            pieces.extend(_scanline_runs(rows[:, 0], crosses, x1 + (rows - y1) * slope))
    if not pieces:
        return np.zeros((0, 3), dtype=SPAN_DTYPE)
    spans = np.concatenate(pieces).astype(np.int64)
    if clip_shape is not None:
        x_lo, x_hi = xy0[0], xy0[0] + clip_shape[1] - 1
        spans = spans[(spans[:, 2] >= x_lo) & (spans[:, 1] <= x_hi)]
        spans[:, 1] = np.maximum(spans[:, 1], x_lo)
        spans[:, 2] = np.minimum(spans[:, 2], x_hi)
    return spans_union([spans])


def _scanline_runs(rows: np.ndarray, crosses: np.ndarray, x_cross: np.ndarray) -> list[np.ndarray]:
    """``(row, x_begin, x_end)`` runs between successive pairs of edge crossings of each row."""
    xc = np.where(crosses, x_cross, np.inf)
    xc.sort(axis=1)
    counts = crosses.sum(axis=1)
    runs = []
    for k in range(0, int(counts.max(initial=0)) - 1, 2):
        valid = counts > k + 1
        begin = np.ceil(xc[valid, k])
        end = np.floor(xc[valid, k + 1])
        keep = begin <= end
        runs.append(np.stack([rows[valid][keep], begin[keep], end[keep]], axis=1))
    return runs


def _ellipse_vertices(
    cx: float, cy: float, rx: float, ry: float, theta: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of an ellipse, about one per output pixel of perimeter (sub-0.01 px error)."""
    if rx <= 0 or ry <= 0:
        raise ValueError(f"ellipse radii must be positive, got {rx}, {ry}")
    n = int(min(max(64, math.ceil(2.0 * math.pi * max(rx, ry) * scale)), 20_000))
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    cos, sin = math.cos(theta), math.sin(theta)
    u, v = rx * np.cos(t), ry * np.sin(t)
    return cx + u * cos - v * sin, cy + u * sin + v * cos


@dataclass(frozen=True)
class _Placement:
    """Annotation pixel coordinates to parent pixel coordinates (see the module docstring)."""

    centre_offset: float  # where the annotation format puts pixel centres: 0 (VIA) or 0.5 (COCO)
    scale: float
    xy0: tuple[int, int]
    flip_y_height: float | None
    clip_shape: tuple[int, int] | None

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        edge_x = np.asarray(x, dtype=float) + 0.5 - self.centre_offset
        edge_y = np.asarray(y, dtype=float) + 0.5 - self.centre_offset
        if self.flip_y_height is not None:
            edge_y = self.flip_y_height - edge_y
        return self.xy0[0] + self.scale * edge_x - 0.5, self.xy0[1] + self.scale * edge_y - 0.5

    def polygon(self, x: Sequence[float], y: Sequence[float]) -> np.ndarray:
        px, py = self.apply(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        return polygon_spans(px, py, clip_shape=self.clip_shape, xy0=self.xy0)


def _placement(
    centre_offset: float,
    scale: float,
    xy0: tuple[int, int],
    flip_y_height: float | None,
    clip_shape: tuple[int, int] | None,
) -> _Placement:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return _Placement(centre_offset, float(scale), (int(xy0[0]), int(xy0[1])), flip_y_height, clip_shape)


# ---------------------------------------------------------------------------------------------------------
# VGG Image Annotator


def _load_json(source: str | Path | Mapping | Sequence) -> Any:
    if isinstance(source, (str, Path)):
        with open(source, encoding="utf-8") as stream:
            return json.load(stream)
    return source


def _via_records(data: Any) -> list[Mapping[str, Any]]:
    if isinstance(data, Mapping) and "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    if isinstance(data, Mapping):
        data = list(data.values())
    if not isinstance(data, Sequence) or not all(isinstance(r, Mapping) and "filename" in r for r in data):
        raise ValueError("not a VGG Image Annotator export: expected records with 'filename' and 'regions'")
    return list(data)


def _region_class(attributes: Mapping[str, Any], class_attribute: str | None) -> str:
    """The class name in a VIA region's ``region_attributes``."""
    if class_attribute is not None:
        if class_attribute not in attributes:
            raise ValueError(f"region attributes {dict(attributes)} have no {class_attribute!r}")
        value = attributes[class_attribute]
    else:
        keys = [k for k in _CLASS_KEYS if k in attributes]
        if keys:
            value = attributes[keys[0]]
        elif len(attributes) == 1:
            value = next(iter(attributes.values()))
        else:
            raise ValueError(
                f"cannot tell the class from region attributes {dict(attributes)}; pass class_attribute"
            )
    if isinstance(value, Mapping):  # VIA checkbox/dropdown: {"Bright": true}
        chosen = [k for k, v in value.items() if v]
        if len(chosen) != 1:
            raise ValueError(f"region attribute {value} does not name exactly one class")
        value = chosen[0]
    return str(value)


def _via_shape_spans(shape: Mapping[str, Any], placement: _Placement) -> np.ndarray:
    name = shape.get("name")
    if name in ("polygon", "polyline"):
        return placement.polygon(shape["all_points_x"], shape["all_points_y"])
    if name == "rect":
        x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
        # A VIA rectangle covers the pixel centres x..x+w (skimage.draw.rectangle's extent).
        return placement.polygon([x, x + w, x + w, x], [y, y, y + h, y + h])
    if name in ("circle", "ellipse"):
        cx, cy = float(shape["cx"]), float(shape["cy"])
        if name == "circle":
            rx = ry = float(shape["r"])
            theta = 0.0
        else:
            rx, ry, theta = float(shape["rx"]), float(shape["ry"]), float(shape.get("theta", 0.0))
        x, y = _ellipse_vertices(cx, cy, rx, ry, theta, placement.scale)
        return placement.polygon(x, y)
    raise ValueError(f"unsupported VIA region shape {name!r} (polygon, polyline, rect, circle, ellipse)")


def _keep_class(
    source_class: str, class_map: Mapping[str, str] | None, on_unknown: str, where: str
) -> str | None:
    artifact_class = map_class_name(source_class, class_map)
    if artifact_class is None and on_unknown == "raise":
        raise ValueError(
            f"{where}: class {source_class!r} maps to no artifact class {ARTIFACT_CLASSES}; "
            "extend class_map or pass on_unknown='skip'"
        )
    return artifact_class


def _check_on_unknown(on_unknown: str) -> None:
    if on_unknown not in ("raise", "skip"):
        raise ValueError(f"on_unknown must be 'raise' or 'skip', got {on_unknown!r}")


def read_vgg_annotations(
    source: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    class_map: Mapping[str, str] | None = None,
    class_attribute: str | None = None,
    scale: float = 1.0,
    xy0: tuple[int, int] = (0, 0),
    flip_y_height: float | None = None,
    clip_shape: tuple[int, int] | None = None,
    on_unknown: str = "raise",
) -> dict[str, list[AnnotationRecord]]:
    """Read a VGG Image Annotator (VIA) export into footprints.

    Parameters
    ----------
    source : `str`, `pathlib.Path`, mapping or sequence
        JSON file, or its parsed content: a list of image records (DeepGhostBusters), a mapping of them
        (VIA 2 export) or a VIA project (``_via_img_metadata``).
    class_map : mapping, optional
        Annotator class name (case-insensitive) to artifact class; default `DEEPGHOSTBUSTERS_CLASS_MAP`.
    class_attribute : `str`, optional
        Region attribute holding the class; default the first of ``Type``, ``type``, ``class``, ``label``,
        ``category``, ``name`` present, else the only attribute.
    scale : `float`
        Parent pixels per annotated pixel (e.g. the binning of the annotated rendering).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of the annotated image's pixel ``[0, 0]`` corner region (see the module docstring).
    flip_y_height : `float`, optional
        Height of the annotated image (annotated pixels) when its rows run opposite to the array's.
    clip_shape : `tuple` [`int`, `int`], optional
        ``(height, width)`` of the coadd: footprints are clipped to ``[xy0, xy0 + shape)``.
    on_unknown : `str`
        ``"raise"`` on a class without artifact class, or ``"skip"`` such regions.

    Returns
    -------
    records : `dict` [`str`, `list` [`AnnotationRecord`]]
        Per image file name (in file order, images without regions included), its non-empty footprints.
    """
    _check_on_unknown(on_unknown)
    placement = _placement(0.0, scale, xy0, flip_y_height, clip_shape)
    out: dict[str, list[AnnotationRecord]] = {}
    for record in _via_records(_load_json(source)):
        filename = str(record["filename"])
        regions = record.get("regions") or []
        if isinstance(regions, Mapping):  # VIA 1: {"0": region, ...}
            regions = [regions[k] for k in sorted(regions, key=lambda k: int(k) if str(k).isdigit() else k)]
        entries = out.setdefault(filename, [])
        for index, region in enumerate(regions):
            source_class = _region_class(region.get("region_attributes") or {}, class_attribute)
            artifact_class = _keep_class(source_class, class_map, on_unknown, f"{filename} region {index}")
            if artifact_class is None:
                continue
            shape = region["shape_attributes"]
            spans = _via_shape_spans(shape, placement)
            if spans.shape[0]:
                entries.append(
                    AnnotationRecord(filename, artifact_class, source_class, spans, str(shape["name"]), index)
                )
    return out


# ---------------------------------------------------------------------------------------------------------
# COCO


def _rle_spans(segmentation: Mapping[str, Any], placement: _Placement) -> np.ndarray:
    """Footprint of a COCO RLE mask, resampled (nearest pixel) onto the parent grid."""
    from pycocotools import mask as mask_utils

    height, width = (int(v) for v in segmentation["size"])
    rle = segmentation
    if isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(dict(segmentation), height, width)
    mask = np.asarray(mask_utils.decode(rle), dtype=bool)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.zeros((0, 3), dtype=SPAN_DTYPE)
    # Parent pixels whose centres fall in the mask's box, mapped back to annotated pixels.
    corners_x, corners_y = placement.apply(
        np.array([cols.min(), cols.max() + 1.0]) - 0.5, np.array([rows.min(), rows.max() + 1.0]) - 0.5
    )
    x_lo, x_hi = math.floor(corners_x.min()), math.ceil(corners_x.max())
    y_lo, y_hi = math.floor(corners_y.min()), math.ceil(corners_y.max())
    grid_x = np.arange(x_lo, x_hi + 1)
    grid_y = np.arange(y_lo, y_hi + 1)
    # Invert the placement for pixel centres: edge coordinate e = (X + 0.5 - xy0) / scale.
    edge_x = (grid_x + 0.5 - placement.xy0[0]) / placement.scale
    edge_y = (grid_y + 0.5 - placement.xy0[1]) / placement.scale
    if placement.flip_y_height is not None:
        edge_y = placement.flip_y_height - edge_y
    src_x, src_y = np.floor(edge_x).astype(int), np.floor(edge_y).astype(int)
    ok_x = (src_x >= 0) & (src_x < width)
    ok_y = (src_y >= 0) & (src_y < height)
    sampled = np.zeros((grid_y.size, grid_x.size), dtype=bool)
    sampled[np.ix_(ok_y, ok_x)] = mask[np.ix_(src_y[ok_y], src_x[ok_x])]
    spans = mask_to_spans(sampled, (x_lo, y_lo)).astype(np.int64)
    if placement.clip_shape is not None:
        height_c, width_c = placement.clip_shape
        x0, y0 = placement.xy0
        spans = spans[(spans[:, 0] >= y0) & (spans[:, 0] < y0 + height_c)]
        spans = spans[(spans[:, 2] >= x0) & (spans[:, 1] < x0 + width_c)]
        spans[:, 1] = np.maximum(spans[:, 1], x0)
        spans[:, 2] = np.minimum(spans[:, 2], x0 + width_c - 1)
    return spans_union([spans])


def read_coco_annotations(
    source: str | Path | Mapping[str, Any],
    *,
    class_map: Mapping[str, str] | None = None,
    scale: float = 1.0,
    xy0: tuple[int, int] = (0, 0),
    flip_y_height: float | None = None,
    clip_shape: tuple[int, int] | None = None,
    on_unknown: str = "raise",
) -> dict[str, list[AnnotationRecord]]:
    """Read COCO instance annotations (polygons or RLE) into footprints.

    Category names go through ``class_map`` like VIA classes (`map_class_name`), so a COCO file written
    with this package's ``artifact_*`` category names reads back without a map.  The other parameters and
    the result are those of `read_vgg_annotations`; COCO coordinates put pixel centres at ``i + 0.5``.
    """
    _check_on_unknown(on_unknown)
    data = _load_json(source)
    if not isinstance(data, Mapping) or "annotations" not in data:
        raise ValueError("not a COCO annotation file: expected 'images', 'annotations' and 'categories'")
    placement = _placement(0.5, scale, xy0, flip_y_height, clip_shape)
    categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    images = {int(i["id"]): str(i.get("file_name", i["id"])) for i in data.get("images", [])}
    out: dict[str, list[AnnotationRecord]] = {name: [] for name in images.values()}
    for index, annotation in enumerate(data["annotations"]):
        image = images.get(int(annotation["image_id"]), str(annotation["image_id"]))
        category = int(annotation["category_id"])
        source_class = categories.get(category, str(category))
        annotation_id = int(annotation.get("id", index))
        artifact_class = _keep_class(
            source_class, class_map, on_unknown, f"{image} annotation {annotation_id}"
        )
        if artifact_class is None:
            continue
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, Mapping):
            spans = _rle_spans(segmentation, placement)
            kind = "coco_rle"
        elif isinstance(segmentation, Sequence) and segmentation:
            rings = [np.asarray(ring, dtype=float).reshape(-1, 2) for ring in segmentation if len(ring) >= 6]
            spans = spans_union([placement.polygon(ring[:, 0], ring[:, 1]) for ring in rings])
            kind = "coco_polygon"
        else:
            raise ValueError(f"{image} annotation {annotation_id} has no polygon or RLE segmentation")
        if spans.shape[0]:
            out.setdefault(image, []).append(
                AnnotationRecord(image, artifact_class, source_class, spans, kind, annotation_id)
            )
    return out


# ---------------------------------------------------------------------------------------------------------
# Label tables


def annotations_to_label_table(
    records: Sequence[AnnotationRecord],
    *,
    class_names: Sequence[str] | None = None,
    first_id: int = 1,
    wcs: Any = None,
    **meta: Any,
) -> Table:
    """One image's annotations as a label table (`~.labels.label_columns` plus ``footprint``).

    Parameters
    ----------
    records : sequence of `AnnotationRecord`
        Annotations of a single image (one entry of `read_vgg_annotations` / `read_coco_annotations`).
    class_names : sequence of `str`, optional
        Class names by class id; must contain ``"artifact_" + class`` of every record.  Default
        `default_label_class_names` (star, galaxy, then the artifact classes).
    first_id : `int`
        ``source_id`` of the first row (then consecutive); choose ids that do not collide with the other
        labels of the patch.
    wcs : optional
        Object with ``pixel_to_world_values(x, y)`` (e.g. `astropy.wcs.WCS` of the coadd, parent pixel
        coordinates) for ``coord_ra/dec``; NaN without it.
    **meta
        Merged into the table's metadata.

    Returns
    -------
    labels : `astropy.table.Table`
        One row per record: its footprint, bounding box, centroid, class; ``parent_id`` is the row's own
        id; ``extendedness``, ``mag``, ``blendedness``, ``ref_separation_arcsec`` are NaN, the flags false,
        ``is_primary`` true.  ``meta`` holds ``class_names``, ``skipped_reason`` (empty) and
        ``label_source`` (``"annotations"``).
    """
    names = tuple(default_label_class_names() if class_names is None else (str(c) for c in class_names))
    images = {record.image for record in records}
    if len(images) > 1:
        raise ValueError(f"records of {len(images)} images given; a label table holds one image's labels")
    n = len(records)
    class_ids = []
    for record in records:
        if record.class_name not in names:
            raise ValueError(f"class {record.class_name!r} is not among class_names {list(names)}")
        class_ids.append(names.index(record.class_name))
    centroids = np.array([spans_centroid(r.spans) for r in records], dtype=float).reshape(-1, 2)
    boxes = np.array([r.bbox for r in records], dtype=np.int32).reshape(-1, 4)
    if wcs is not None and n:
        ra, dec = wcs.pixel_to_world_values(centroids[:, 0], centroids[:, 1])
        ra, dec = np.asarray(ra, dtype=float) % 360.0, np.asarray(dec, dtype=float)
    else:
        ra = dec = np.full(n, np.nan)
    ids = first_id + np.arange(n, dtype=np.int64)
    values: dict[str, Any] = {
        "source_id": ids,
        "parent_id": ids,
        "centroid_x": centroids[:, 0],
        "centroid_y": centroids[:, 1],
        "coord_ra": ra,
        "coord_dec": dec,
        "bbox_x0": boxes[:, 0],
        "bbox_y0": boxes[:, 1],
        "bbox_x1": boxes[:, 2],
        "bbox_y1": boxes[:, 3],
        "footprint_area": [r.area for r in records],
        "class_id": class_ids,
        "class_name": [r.class_name for r in records],
        "nodata_fraction": np.zeros(n),
        "is_primary": np.ones(n, dtype=bool),
        "mag_band": [""] * n,
    }
    table = Table()
    for name, dtype, unit, description in label_columns(names):
        if name in values:
            column = np.asarray(values[name], dtype=dtype)
        elif np.dtype(dtype) == np.dtype(bool):
            column = np.zeros(n, dtype=bool)
        else:
            column = np.full(n, np.nan, dtype=dtype)
        table[name] = column
        table[name].unit = unit
        table[name].description = description
    footprints = np.empty(n, dtype=object)
    for index, record in enumerate(records):
        footprints[index] = flatten_spans(record.spans)
    table["footprint"] = footprints
    table["footprint"].description = "Annotated footprint, flattened int32 spans (y, x_begin, x_end), parent"
    table.meta.update({"class_names": list(names), "skipped_reason": "", "label_source": "annotations"})
    table.meta.update(meta)
    return table
