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

"""Figures of the comparison's metrics (completeness, purity, classification, IoU, artifacts)."""

from __future__ import annotations

__all__ = [
    "precision_recall_figure",
    "ARTIFACT_COLORS",
    "CLASS_COLORS",
    "METHOD_COLORS",
    "artifact_metrics_figure",
    "artifact_overlay_box",
    "blend_outcomes_figure",
    "classification_figure",
    "completeness_purity_figure",
    "figure_to_png_bytes",
    "iou_figure",
]

import io
from collections.abc import Sequence

import numpy as np
from astropy.table import Table
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..blend_outcomes import TRUTH_OUTCOMES

METHOD_COLORS: dict[str, str] = {
    "deepdisc": "#1f77b4",
    "scarlet": "#ff7f0e",
    "sep": "#2ca02c",
    "labels": "#9467bd",
    "truth": "#7f7f7f",
}
"""Line colour of each method (others cycle through `_EXTRA_COLORS`)."""

CLASS_COLORS: dict[str, str] = {"star": "#00ffff", "galaxy": "#ff8c00", "": "#ffffff"}
"""Footprint outline colour of each class name (``""``: unknown class)."""

ARTIFACT_COLORS: dict[str, str] = {
    "artifact_ghost_bright": "#ff00ff",
    "artifact_ghost_faint": "#ffb6ff",
    "artifact_rays": "#ffff00",
    "": "#ffffff",
}
"""Outline colour of each artifact class name (catalog names, with the ``artifact_`` prefix)."""

_EXTRA_COLORS = ("#d62728", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_OUTCOME_COLORS = {
    "isolated_match": "#2ca02c",
    "resolved_blend": "#98df8a",
    "unrecognized_blend": "#ff7f0e",
    "shredded": "#9467bd",
    "missed": "#d62728",
    "complex": "#7f7f7f",
}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _method_color(method: str, index: int) -> str:
    return METHOD_COLORS.get(method, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def figure_to_png_bytes(figure: Figure, dpi: float = 100) -> bytes:
    """Render a figure to PNG bytes (what the Butler's ``Plot`` storage class writes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _binned(summary: Table, methods: Sequence[str] | None) -> tuple[Table, list[str]]:
    """The per-bin rows of a summary (total rows dropped) and the methods to draw."""
    for name in ("method", "mag_min", "mag_max"):
        if name not in summary.colnames:
            raise KeyError(f"the summary table has no column {name!r}; it has {summary.colnames}")
    rows = summary
    if "is_total" in summary.colnames:
        rows = summary[~np.asarray(summary["is_total"], dtype=bool)]
    present = list(dict.fromkeys(np.asarray(rows["method"]).astype(str)))
    chosen = present if methods is None else [m for m in methods if m in present]
    return rows, chosen


def _method_rows(rows: Table, method: str) -> tuple[Table, np.ndarray]:
    selected = rows[np.asarray(rows["method"]).astype(str) == method]
    centres = 0.5 * (np.asarray(selected["mag_min"], float) + np.asarray(selected["mag_max"], float))
    return selected, centres


def _reference_label(table: Table) -> str:
    """The reference's name: the ``reference`` column, else the table metadata, else "reference"."""
    if "reference" in table.colnames and len(table):
        return str(table["reference"][0]) or "reference"
    return str(table.meta.get("reference", "") or "reference")


def completeness_purity_figure(
    summary: Table, methods: Sequence[str] | None = None, title: str = ""
) -> Figure:
    """Completeness and purity versus reference magnitude, one line per method.

    Parameters
    ----------
    summary : `astropy.table.Table`
        Output of `~.comparison.summarize_matches`.
    methods : `~collections.abc.Sequence` [`str`], optional
        Methods to draw, in this order (default all).
    title : `str`
        Figure title.
    """
    rows, methods = _binned(summary, methods)
    figure = _new_figure(10, 4.2)
    axes = figure.subplots(1, 2, sharex=True)
    reference = _reference_label(summary)
    for index, method in enumerate(methods):
        selected, centres = _method_rows(rows, method)
        color = _method_color(method, index)
        axes[0].plot(centres, selected["completeness"], "o-", color=color, label=method)
        axes[1].plot(centres, selected["purity"], "o-", color=color, label=method)
    for ax, name in zip(axes, ("Completeness", "Purity")):
        ax.set_xlabel(f"{reference} magnitude")
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
    if methods:
        axes[0].legend(loc="lower left")
    figure.suptitle(title or f"Detection versus {reference}")
    return figure


def classification_figure(
    summary: Table,
    class_names: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Per-class precision, recall and F1 of matched pairs versus reference magnitude.

    One row of panels per class (default: star and galaxy), columns
    precision, recall, F1; one line per method.  Methods without class information are absent (NaN).
    """
    rows, methods = _binned(summary, methods)
    class_names = list(class_names or ("star", "galaxy"))
    figure = _new_figure(12, 3.3 * len(class_names))
    axes = np.atleast_2d(figure.subplots(len(class_names), 3, sharex=True, squeeze=False))
    reference = _reference_label(summary)
    for index, method in enumerate(methods):
        selected, centres = _method_rows(rows, method)
        color = _method_color(method, index)
        for row, class_name in enumerate(class_names):
            for column, metric in enumerate(("precision", "recall", "f1")):
                name = f"{class_name}_{metric}"
                if name not in selected.colnames:
                    continue
                values = np.asarray(selected[name], dtype=float)
                if np.all(np.isnan(values)):
                    continue
                axes[row, column].plot(centres, values, "o-", color=color, label=method)
    for row, class_name in enumerate(class_names):
        for column, metric in enumerate(("Precision", "Recall", "F1")):
            ax = axes[row, column]
            ax.set_title(f"{class_name}: {metric}")
            ax.set_ylim(-0.02, 1.05)
            ax.grid(alpha=0.3)
            if row == len(class_names) - 1:
                ax.set_xlabel(f"{reference} magnitude")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, 0].legend(handles, labels, loc="lower left")
    figure.suptitle(title or f"Star/galaxy classification of matched pairs versus {reference}")
    return figure


def iou_figure(
    matches: Table, methods: Sequence[str] | None = None, bins: int = 20, title: str = ""
) -> Figure:
    """Distributions of the bounding-box and footprint IoU of the matched pairs, per method.

    Parameters
    ----------
    matches : `astropy.table.Table`
        Match table(s) of `~.comparison.compare_to_reference` (stacked patches are fine).
    methods : `~collections.abc.Sequence` [`str`], optional
        Methods to draw (default: those with ``<method>_matched`` columns).
    bins : `int`
        Histogram bins over ``[0, 1]``.
    """
    if methods is None:
        methods = [c[: -len("_matched")] for c in matches.colnames if c.endswith("_matched")]
    figure = _new_figure(10, 4.2)
    axes = figure.subplots(1, 2, sharey=False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    is_reference = np.ones(len(matches), dtype=bool)
    if "row_type" in matches.colnames:
        is_reference = np.asarray(matches["row_type"]).astype(str) == "reference"
    for index, method in enumerate(methods):
        if f"{method}_matched" not in matches.colnames:
            continue
        matched = is_reference & np.asarray(matches[f"{method}_matched"], dtype=bool)
        color = _method_color(method, index)
        for ax, kind in zip(axes, ("bbox", "mask")):
            values = np.asarray(matches[f"{method}_{kind}_iou"], dtype=float)[matched]
            values = values[np.isfinite(values)]
            if not values.size:
                continue
            ax.hist(
                values,
                bins=edges,
                histtype="step",
                linewidth=1.8,
                color=color,
                label=f"{method} (median {np.median(values):.2f}, N={values.size})",
            )
    for ax, name in zip(axes, ("Bounding-box IoU", "Footprint (mask) IoU")):
        ax.set_xlabel(name)
        ax.set_ylabel("Matched pairs")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize="small")
    figure.suptitle(title or f"Segmentation quality of matched pairs versus {_reference_label(matches)}")
    return figure


def precision_recall_figure(
    curves: Table, operating_points: dict[str, float] | None = None, title: str = ""
) -> Figure:
    """Precision (purity) against recall (completeness) over score thresholds, per scored method.

    Parameters
    ----------
    curves : `astropy.table.Table`
        Stacked `~.comparison.precision_recall_from_matches` tables with a ``method`` column.
    operating_points : `dict` [`str`, `float`], optional
        Per method, the score threshold its catalog was made with (marked on the curve).
    """
    figure = _new_figure(6.5, 5)
    ax = figure.subplots()
    methods = list(dict.fromkeys(np.asarray(curves["method"], dtype=str))) if len(curves) else []
    for index, method in enumerate(methods):
        rows = curves[np.asarray(curves["method"], dtype=str) == method]
        color = _method_color(method, index)
        recall = np.asarray(rows["recall"], dtype=float)
        precision = np.asarray(rows["precision"], dtype=float)
        thresholds = np.asarray(rows["threshold"], dtype=float)
        ax.plot(recall, precision, "-o", color=color, markersize=3, label=method)
        for x, y, t in zip(recall[::2], precision[::2], thresholds[::2]):
            ax.annotate(f"{t:.2f}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        if operating_points and method in operating_points:
            at = int(np.argmin(np.abs(thresholds - operating_points[method])))
            ax.plot(recall[at], precision[at], "*", color=color, markersize=14, label=f"{method} catalog")
    ax.set_xlabel("Recall (completeness)")
    ax.set_ylabel("Precision (purity)")
    ax.grid(alpha=0.3)
    if methods:
        ax.legend(loc="lower left", fontsize="small")
    figure.suptitle(title or "Precision-recall over score thresholds")
    return figure


def blend_outcomes_figure(summary: Table, methods: Sequence[str] | None = None, title: str = "") -> Figure:
    """Fractions of reference objects by blend outcome versus magnitude: one stacked-bar panel per method."""
    rows, methods = _binned(summary, methods)
    n_panels = max(1, len(methods))
    figure = _new_figure(4.2 * n_panels + 1.8, 4.2)
    axes = np.atleast_1d(figure.subplots(1, n_panels, sharey=True, squeeze=False)[0])
    reference = _reference_label(summary)
    for ax, method in zip(axes, methods):
        selected, centres = _method_rows(rows, method)
        width = 0.9 * (np.asarray(selected["mag_max"], float) - np.asarray(selected["mag_min"], float))
        bottom = np.zeros(len(selected))
        for outcome in TRUTH_OUTCOMES:
            column = f"frac_{outcome}"
            if column not in selected.colnames:
                continue
            values = np.nan_to_num(np.asarray(selected[column], dtype=float))
            ax.bar(centres, values, width=width, bottom=bottom, color=_OUTCOME_COLORS[outcome], label=outcome)
            bottom += values
        ax.set_title(method)
        ax.set_xlabel(f"{reference} magnitude")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("Fraction of reference objects")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    figure.suptitle(title or f"Blend outcomes versus {reference}")
    return figure


def artifact_metrics_figure(artifacts: Table, title: str = "", target: float = 0.9) -> Figure:
    """Artifact metrics of a tract.

    AP per class, purity with and without the artifact flags, and how many false positives inside truth
    artifacts the flags catch.

    Parameters
    ----------
    artifacts : `astropy.table.Table`
        `~.comparison.summarize_artifact_metrics` (one row per method).
    title : `str`
        Figure title.
    target : `float`
        Goal for the fraction of false positives inside truth artifacts that are flagged (dashed line).
    """
    figure = _new_figure(15, 4.6)
    ax_ap, ax_purity, ax_fp = figure.subplots(1, 3)
    methods = [str(m) for m in artifacts["method"]] if len(artifacts) else []
    x = np.arange(len(methods))

    # AP per class: the DeepDISC row (the only method that detects artifacts).
    classes = [c.removeprefix("artifact_ap50_") for c in artifacts.colnames if c.startswith("artifact_ap50_")]
    deepdisc = artifacts[np.asarray(artifacts["method"]).astype(str) == "deepdisc"] if len(artifacts) else []
    if len(deepdisc) and classes:
        row = deepdisc[0]
        positions = np.arange(len(classes) + 1)
        ap50 = [float(row[f"artifact_ap50_{c}"]) for c in classes] + [float(row["artifact_ap50"])]
        ap = [float(row[f"artifact_ap_{c}"]) for c in classes] + [float(row["artifact_ap"])]
        ax_ap.bar(positions - 0.2, np.nan_to_num(ap50), width=0.4, label="IoU 0.5", color="#1f77b4")
        ax_ap.bar(positions + 0.2, np.nan_to_num(ap), width=0.4, label="IoU 0.5:0.95", color="#aec7e8")
        ax_ap.set_xticks(positions, [*classes, "mean"], rotation=20)
        ax_ap.legend(fontsize="small")
        lines = []
        for key, label in (("precision", "P"), ("recall", "R"), ("f1", "F1")):
            column = f"artifact_presence_{key}"
            value = float(row[column]) if column in artifacts.colnames else float("nan")
            lines.append(f"{label} {value:.2f}")
        text = "has-artifact " + ", ".join(lines)
        if "artifact_pixel_iou" in artifacts.colnames:
            text += f"\npixel IoU {float(row['artifact_pixel_iou']):.2f}"
        ax_ap.text(0.02, 0.97, text, transform=ax_ap.transAxes, va="top", fontsize="small")
    else:
        ax_ap.text(0.5, 0.5, "no truth artifacts", ha="center", va="center", transform=ax_ap.transAxes)
    ax_ap.set_ylim(0, 1.15)
    ax_ap.set_ylabel("Mask AP (mean over patches with truth artifacts)")
    ax_ap.set_title("DeepDISC artifact AP per class")

    for column, offset, label, alpha in (
        ("purity_all_rows", -0.2, "every row a source", 0.5),
        ("purity_artifact_flagged", 0.2, "artifact rows and flagged sources removed", 1.0),
    ):
        if column in artifacts.colnames:
            values = np.nan_to_num(np.asarray(artifacts[column], dtype=float))
            colors = [_method_color(m, i) for i, m in enumerate(methods)]
            ax_purity.bar(x + offset, values, width=0.4, color=colors, alpha=alpha, label=label)
    ax_purity.set_xticks(x, methods)
    ax_purity.set_ylim(0, 1.05)
    ax_purity.set_ylabel("Purity")
    ax_purity.set_title("Purity without and with artifact flagging")
    if methods:
        ax_purity.legend(fontsize="small", loc="lower right")

    for column, offset, label, alpha in (
        ("frac_fp_in_truth_artifact", -0.2, "false positives inside truth artifacts", 0.5),
        ("frac_fp_in_truth_artifact_flagged", 0.2, "... of which flagged", 1.0),
    ):
        if column in artifacts.colnames:
            values = np.nan_to_num(np.asarray(artifacts[column], dtype=float))
            colors = [_method_color(m, i) for i, m in enumerate(methods)]
            ax_fp.bar(x + offset, values, width=0.4, color=colors, alpha=alpha, label=label)
    ax_fp.axhline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:.0%} flagged")
    ax_fp.set_xticks(x, methods)
    ax_fp.set_ylim(0, 1.05)
    ax_fp.set_ylabel("Fraction")
    ax_fp.set_title("False positives in truth artifacts")
    if methods:
        ax_fp.legend(fontsize="small", loc="upper left")
    figure.suptitle(title or "Artifact metrics")
    return figure


def artifact_overlay_box(
    footprints: Sequence[np.ndarray], image_box: tuple[int, int, int, int], margin: int = 16
) -> tuple[int, int, int, int] | None:
    """``(x0, y0, width, height)`` around the union of footprints plus ``margin``, inside ``image_box``.

    Returns `None` when there is no footprint pixel.
    """
    spans = [np.asarray(f, dtype=np.int64).reshape(-1, 3) for f in footprints]
    spans = [s for s in spans if s.shape[0]]
    if not spans:
        return None
    allspans = np.concatenate(spans)
    ix0, iy0, width, height = image_box
    x0 = max(int(allspans[:, 1].min()) - margin, ix0)
    y0 = max(int(allspans[:, 0].min()) - margin, iy0)
    x1 = min(int(allspans[:, 2].max()) + margin, ix0 + width - 1)
    y1 = min(int(allspans[:, 0].max()) + margin, iy0 + height - 1)
    if x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1
