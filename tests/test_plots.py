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

"""The comparison figures: what they draw is what the tables say, and they render to PNG without pyplot."""

from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.table import Table
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans
from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage
from lsst.meas.extensions.deepdisc.core.plots import (
    CLASS_COLORS,
    METHOD_COLORS,
    OverlayPanel,
    blend_outcomes_figure,
    classification_figure,
    completeness_purity_figure,
    draw_footprint_outlines,
    figure_to_png_bytes,
    iou_figure,
    lupton_rgb,
    overlay_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _square(x0: int, y0: int, size: int) -> np.ndarray:
    return np.array([(y, x0, x0 + size - 1) for y in range(y0, y0 + size)], dtype=np.int32)


def _summary() -> Table:
    """Two methods, two bins, plus total rows that the figures must ignore."""
    return Table(
        {
            "method": ["deepdisc", "deepdisc", "deepdisc", "scarlet", "scarlet", "scarlet"],
            "reference": ["truth"] * 6,
            "is_total": [False, False, True, False, False, True],
            "mag_min": [20.0, 21.0, -np.inf, 20.0, 21.0, -np.inf],
            "mag_max": [21.0, 22.0, np.inf, 21.0, 22.0, np.inf],
            "completeness": [0.9, 0.5, 0.7, 1.0, 0.25, 0.6],
            "purity": [0.8, 0.4, 0.6, 1.0, 0.75, 0.9],
            "star_precision": [1.0, 0.5, 0.7, np.nan, np.nan, np.nan],
            "star_recall": [0.5, 0.5, 0.5, np.nan, np.nan, np.nan],
            "star_f1": [2 / 3, 0.5, 0.6, np.nan, np.nan, np.nan],
            "galaxy_precision": [0.9, 0.8, 0.85, 0.7, 0.6, 0.65],
            "galaxy_recall": [0.9, 0.8, 0.85, 0.7, 0.6, 0.65],
            "galaxy_f1": [0.9, 0.8, 0.85, 0.7, 0.6, 0.65],
            "frac_isolated_match": [0.5, 0.25, 0.4, 1.0, 0.0, 0.5],
            "frac_resolved_blend": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "frac_unrecognized_blend": [0.25, 0.25, 0.25, 0.0, 0.5, 0.25],
            "frac_shredded": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "frac_missed": [0.25, 0.5, 0.35, 0.0, 0.5, 0.25],
            "frac_complex": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        }
    )


def _png_shape(png: bytes) -> tuple[int, ...]:
    assert png.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(png), format="png").shape


def test_outlines_are_the_border_pixels_in_the_class_colour() -> None:
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    xy0 = (100, 200)
    painted = draw_footprint_outlines(rgb, xy0, [_square(102, 203, 4)], ["#00ffff"])
    mask = np.zeros((10, 12), dtype=bool)
    mask[3:7, 2:6] = True
    interior = np.zeros_like(mask)
    interior[4:6, 3:5] = True
    border = mask & ~interior
    assert np.all(painted[border] == (0, 255, 255))
    assert np.all(painted[~border] == 0)
    assert np.all(rgb == 0), "the input image must not be modified"


def test_outlines_of_overlapping_footprints_follow_the_later_one_and_clip_at_the_edge() -> None:
    rgb = np.full((6, 6, 3), 0.5)
    first = _square(0, 0, 4)
    second = _square(2, 2, 6)  # Runs past the image: clipped, its border at the image edge is an outline.
    painted = draw_footprint_outlines(rgb, (0, 0), [first, second], ["red", "blue"])
    assert tuple(painted[0, 0]) == to_rgb("red")
    assert tuple(painted[2, 2]) == to_rgb("blue")  # Corner of the later footprint.
    assert tuple(painted[5, 5]) == to_rgb("blue")  # On the image border.
    assert tuple(painted[3, 3]) == (0.5, 0.5, 0.5)  # Interior of the later footprint.
    assert tuple(painted[1, 1]) == (0.5, 0.5, 0.5)  # Interior of the first footprint.
    with pytest.raises(ValueError, match="colours"):
        draw_footprint_outlines(rgb, (0, 0), [first], [])


def test_lupton_rgb_maps_the_first_band_to_red_and_clips_the_box() -> None:
    image = np.zeros((3, 20, 30), dtype=np.float32)
    image[2, 5, 7] = 100.0  # Band i only.
    mb = MultibandImage(bands=("g", "r", "i"), image=image, xy0=(1000, 2000))
    rgb, xy0 = lupton_rgb(mb, ["i", "r", "g"], (1005, 2003, 100, 100), stretch=1.0)
    assert xy0 == (1005, 2003)
    assert rgb.shape == (17, 25, 3) and rgb.dtype == np.uint8
    assert rgb[5 - 3, 7 - 5, 0] > 0 and rgb[5 - 3, 7 - 5, 1] == 0 and rgb[5 - 3, 7 - 5, 2] == 0
    full, origin = lupton_rgb(mb)
    assert origin == (1000, 2000) and full.shape == (20, 30, 3)
    with pytest.raises(ValueError, match="does not overlap"):
        lupton_rgb(mb, box=(0, 0, 10, 10))
    with pytest.raises(ValueError, match="1 to 3 bands"):
        lupton_rgb(mb, ["g", "r", "i", "g"])


def test_completeness_purity_figure_draws_the_binned_rows() -> None:
    figure = completeness_purity_figure(_summary())
    completeness_axes, purity_axes = figure.axes
    lines = {line.get_label(): line for line in completeness_axes.get_lines()}
    assert set(lines) == {"deepdisc", "scarlet"}
    np.testing.assert_allclose(lines["deepdisc"].get_xdata(), [20.5, 21.5])
    np.testing.assert_allclose(lines["deepdisc"].get_ydata(), [0.9, 0.5])
    np.testing.assert_allclose(purity_axes.get_lines()[1].get_ydata(), [1.0, 0.75])
    assert to_rgb(lines["scarlet"].get_color()) == to_rgb(METHOD_COLORS["scarlet"])
    assert "truth" in completeness_axes.get_xlabel()
    height, width, _ = _png_shape(figure_to_png_bytes(figure, dpi=50))
    assert height > 100 and width > 200


def test_figures_draw_only_the_requested_methods() -> None:
    figure = completeness_purity_figure(_summary(), methods=["scarlet", "sep"])
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["scarlet"]


def test_classification_figure_skips_methods_without_classes() -> None:
    figure = classification_figure(_summary())
    star_precision, galaxy_f1 = figure.axes[0], figure.axes[5]
    assert [line.get_label() for line in star_precision.get_lines()] == ["deepdisc"]
    np.testing.assert_allclose(star_precision.get_lines()[0].get_ydata(), [1.0, 0.5])
    assert [line.get_label() for line in galaxy_f1.get_lines()] == ["deepdisc", "scarlet"]
    np.testing.assert_allclose(galaxy_f1.get_lines()[1].get_ydata(), [0.7, 0.6])


def test_iou_figure_histograms_the_matched_reference_rows() -> None:
    matches = Table(
        {
            "row_type": ["reference"] * 4 + ["detection"],
            "reference": ["truth"] * 5,
            "deepdisc_matched": [True, True, True, False, False],
            "deepdisc_bbox_iou": [0.55, 0.65, 0.95, np.nan, 0.99],
            "deepdisc_mask_iou": [0.5, 0.6, 0.7, np.nan, 0.99],
        }
    )
    figure = iou_figure(matches, bins=10)
    bbox_axes, mask_axes = figure.axes
    labels = [text.get_text() for text in mask_axes.get_legend().get_texts()]
    assert labels == ["deepdisc (median 0.60, N=3)"]
    bbox_label = bbox_axes.get_legend().get_texts()[0].get_text()
    assert bbox_label == "deepdisc (median 0.65, N=3)"


def test_blend_outcome_bars_stack_the_fractions() -> None:
    figure = blend_outcomes_figure(_summary())
    deepdisc_axes = figure.axes[0]
    assert deepdisc_axes.get_title() == "deepdisc"
    heights = np.array([patch.get_height() for patch in deepdisc_axes.patches]).reshape(-1, 2)
    # Bars in outcome order (isolated, resolved, unrecognized, shredded, missed, complex), two bins each.
    np.testing.assert_allclose(heights[:, 0], [0.5, 0.0, 0.25, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(heights.sum(axis=0), [1.0, 1.0])


def test_overlay_figure_shows_each_catalog_on_the_same_image() -> None:
    rgb = np.zeros((32, 40, 3), dtype=np.uint8)
    mask = np.zeros((32, 40), dtype=bool)
    mask[10:20, 5:12] = True
    spans = mask_to_spans(mask, xy0=(50, 60))
    panels = [
        OverlayPanel("truth", [spans], ["galaxy"]),
        OverlayPanel("deepdisc", [spans], ["star"]),
        OverlayPanel("sep", [spans], [""]),
    ]
    figure = overlay_figure(rgb, (50, 60), panels, title="test")
    image_axes = [ax for ax in figure.axes if ax.images]
    assert [ax.get_title() for ax in image_axes] == ["truth", "deepdisc", "sep"]
    shown = image_axes[1].images[0].get_array()
    assert tuple(shown[10, 5]) == tuple(int(255 * v) for v in to_rgb(CLASS_COLORS["star"]))
    assert tuple(image_axes[2].images[0].get_array()[10, 5]) == (255, 255, 255)
    assert image_axes[0].images[0].get_extent() == [49.5, 89.5, 59.5, 91.5]
    assert figure_to_png_bytes(figure, dpi=40).startswith(PNG_SIGNATURE)


def test_missing_summary_columns_are_named() -> None:
    with pytest.raises(KeyError, match="mag_min"):
        completeness_purity_figure(Table({"method": ["a"], "mag_max": [1.0]}))
