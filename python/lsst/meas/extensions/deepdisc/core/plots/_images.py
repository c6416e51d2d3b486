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

"""Image figures: Lupton RGB composites with footprint outlines (`overlay_figure`)."""

from __future__ import annotations

__all__ = ["OverlayPanel", "draw_footprint_outlines", "lupton_rgb", "overlay_figure"]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.visualization import make_lupton_rgb
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..multiband import MultibandImage
from ._metrics import CLASS_COLORS, _new_figure


def lupton_rgb(
    image: MultibandImage,
    bands: Sequence[str] | None = None,
    box: tuple[int, int, int, int] | None = None,
    *,
    stretch: float | None = None,
    q: float = 8.0,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Lupton et al. (2004) asinh colour composite of three bands of a region.

    Parameters
    ----------
    image : `~.multiband.MultibandImage`
        The coadd.
    bands : `~collections.abc.Sequence` [`str`], optional
        Red, green and blue bands (default: the last three bands, reddest first); one or two bands are
        repeated.
    box : `tuple` [`int`, `int`, `int`, `int`], optional
        ``(x0, y0, width, height)`` in parent coordinates, clipped to the image (default: whole image).
    stretch : `float`, optional
        Linear stretch in image units (default: 5 times the robust noise of the summed bands).
    q : `float`
        Asinh softening.

    Returns
    -------
    rgb : `numpy.ndarray`
        ``uint8`` array ``[H, W, 3]`` (row 0 = lowest y).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of ``rgb[0, 0]``.
    """
    if bands is None:
        bands = list(image.bands[::-1][:3])
    bands = list(bands)
    if not 1 <= len(bands) <= 3:
        raise ValueError(f"a colour composite takes 1 to 3 bands, got {bands}")
    while len(bands) < 3:
        bands.append(bands[-1])
    x_img, y_img = image.xy0
    if box is None:
        box = (x_img, y_img, image.width, image.height)
    x0, y0 = max(int(box[0]), x_img), max(int(box[1]), y_img)
    x1 = min(int(box[0]) + int(box[2]), x_img + image.width)
    y1 = min(int(box[1]) + int(box[3]), y_img + image.height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} does not overlap the image at xy0={image.xy0}, shape={image.shape}")
    planes = [
        np.nan_to_num(image.image[image.band_index(band), y0 - y_img : y1 - y_img, x0 - x_img : x1 - x_img])
        for band in bands
    ]
    if stretch is None or stretch <= 0:
        total = np.sum(planes, axis=0)
        deviation = np.median(np.abs(total - np.median(total)))
        stretch = float(5.0 * 1.4826 * deviation) if deviation > 0 else float(np.max(np.abs(total)) or 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # Black pixels divide 0 by 0 inside astropy.
        rgb = make_lupton_rgb(planes[0], planes[1], planes[2], stretch=stretch, Q=q)
    return rgb, (x0, y0)


def draw_footprint_outlines(
    rgb: np.ndarray,
    xy0: tuple[int, int],
    footprints: Sequence[np.ndarray],
    colors: Sequence[str],
) -> np.ndarray:
    """Paint the outline pixels of footprints on a copy of an RGB image.

    A pixel is on an outline when it belongs to a footprint and one of its four neighbours does not
    belong to the same footprint (or lies outside the image).  Footprints are painted in order, so where
    footprints overlap the later one decides the outline.

    Parameters
    ----------
    rgb : `numpy.ndarray`
        ``[H, W, 3]`` image (``uint8`` or float).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of ``rgb[0, 0]``.
    footprints : `~collections.abc.Sequence` [`numpy.ndarray`]
        ``(N, 3)`` spans or flattened spans, parent coordinates; parts outside the image are ignored.
    colors : `~collections.abc.Sequence` [`str`]
        Matplotlib colour of each footprint.

    Returns
    -------
    painted : `numpy.ndarray`
        Copy of ``rgb`` with the outlines drawn.
    """
    if len(colors) != len(footprints):
        raise ValueError(f"{len(colors)} colours for {len(footprints)} footprints")
    height, width = rgb.shape[:2]
    label = np.zeros((height, width), dtype=np.int64)
    for k, footprint in enumerate(footprints):
        spans = np.asarray(footprint, dtype=np.int64).reshape(-1, 3)
        y = spans[:, 0] - xy0[1]
        x_begin = np.clip(spans[:, 1] - xy0[0], 0, None)
        x_end = np.clip(spans[:, 2] - xy0[0], None, width - 1)
        inside = (y >= 0) & (y < height) & (x_end >= x_begin)
        for row, first, last in zip(y[inside], x_begin[inside], x_end[inside]):
            label[row, first : last + 1] = k + 1
    padded = np.pad(label, 1, constant_values=0)
    edge = np.zeros_like(label, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + height, dx : dx + width] != label
    edge &= label > 0
    painted = np.array(rgb, copy=True)
    scale = 255 if np.issubdtype(painted.dtype, np.integer) else 1.0
    palette = np.array([to_rgb(c) for c in colors], dtype=float).reshape(-1, 3) * scale
    rows, cols = np.nonzero(edge)
    if rows.size:
        painted[rows, cols] = palette[label[rows, cols] - 1].astype(painted.dtype)
    return painted


@dataclass
class OverlayPanel:
    """One panel of `overlay_figure`: a catalog's footprints and class names.

    Parameters
    ----------
    title : `str`
        Panel title (method name and counts, say).
    footprints : `list` [`numpy.ndarray`]
        Spans (or flattened spans) in parent coordinates.
    class_names : `list` [`str`]
        Class name of each footprint (``""`` unknown).
    """

    title: str
    footprints: list[np.ndarray]
    class_names: list[str]


def overlay_figure(
    rgb: np.ndarray,
    xy0: tuple[int, int],
    panels: Sequence[OverlayPanel],
    *,
    class_colors: Mapping[str, str] | None = None,
    title: str = "",
) -> Figure:
    """The same colour image once per catalog, with its footprints outlined in the colour of their class.

    Parameters
    ----------
    rgb : `numpy.ndarray`
        ``[H, W, 3]`` colour image (e.g. `lupton_rgb`).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of ``rgb[0, 0]``; the axes are labelled in parent pixel coordinates.
    panels : `~collections.abc.Sequence` [`OverlayPanel`]
        One panel per catalog.
    class_colors : `~collections.abc.Mapping` [`str`, `str`], optional
        Outline colour per class name (default `CLASS_COLORS`; unknown names are white).
    """
    colors = dict(CLASS_COLORS if class_colors is None else class_colors)
    n_panels = max(1, len(panels))
    n_columns = min(n_panels, 2)
    n_rows = (n_panels + n_columns - 1) // n_columns
    figure = _new_figure(5.2 * n_columns, 5.2 * n_rows)
    axes = np.atleast_1d(figure.subplots(n_rows, n_columns, squeeze=False).ravel())
    height, width = rgb.shape[:2]
    extent = (xy0[0] - 0.5, xy0[0] + width - 0.5, xy0[1] - 0.5, xy0[1] + height - 0.5)
    for ax, panel in zip(axes, panels):
        outline = [colors.get(name, colors.get("", "#ffffff")) for name in panel.class_names]
        ax.imshow(draw_footprint_outlines(rgb, xy0, panel.footprints, outline), origin="lower", extent=extent)
        ax.set_title(panel.title)
        ax.set_xlabel("x (parent pixels)")
        ax.set_ylabel("y (parent pixels)")
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    handles = [
        Line2D([], [], color=color, linewidth=3, label=name or "unknown") for name, color in colors.items()
    ]
    if panels:
        axes[0].legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.6)
    figure.suptitle(title or "Footprints by class")
    return figure
