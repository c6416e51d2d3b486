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
"""``deepdisc-morphology-report``: morphology results of a tract against its labels, with figures.

Reads ``object_deepdisc_morphology`` (the classifications) and ``deepdisc_morphology_labels`` (labels
matched to the same detections) of the chosen patches, joins them by ``id`` and writes, for the galaxies with
a labelled magnitude up to ``--max-magnitude``: the paper's metrics (top-1, top-2, top-3 accuracy, the
fraction of errors between neighbouring types, per-class recall) as ``morphology_metrics.json``, the
confusion matrix, accuracy against size and magnitude, and a gallery of labelled cutouts (PNG).
"""

from __future__ import annotations

__all__ = [
    "MorphologyReport",
    "format_report",
    "main",
    "morphology_report",
    "quantum_wall_seconds",
    "subtask_seconds",
]

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table, join, vstack

from ..core.morphology import MorphologyEvaluation, evaluate_classification

_LOG = logging.getLogger(__name__)


@dataclass
class MorphologyReport:
    """What `morphology_report` measured and wrote."""

    evaluation: MorphologyEvaluation
    matched: Table
    class_names: list[str]
    files: dict[str, Path]


def _patch_tables(butler, dataset_type: str, where: str) -> list[tuple[dict, Table]]:
    refs = sorted(
        butler.query_datasets(dataset_type, where=where), key=lambda r: (r.dataId["tract"], r.dataId["patch"])
    )
    return [(dict(ref.dataId.required), butler.get(ref)) for ref in refs]


def quantum_wall_seconds(butler, label: str, collections: Sequence[str], where: str) -> float:
    """Wall time of a task's quanta, summed (``<label>_metadata``: from input preparation to the end).

    This is what a task costs in a pipetask run, reading its inputs and writing its outputs included; the
    morphology stage's cost is quoted against the detection's this way.
    """
    from datetime import datetime

    total = 0.0
    for ref in butler.query_datasets(f"{label}_metadata", collections=list(collections), where=where):
        quantum = butler.get(ref)["quantum"]
        total += (
            datetime.fromisoformat(quantum["endUtc"]) - datetime.fromisoformat(quantum["prepUtc"])
        ).total_seconds()
    return total


def subtask_seconds(
    butler, label: str, subtask: str, key: str, collections: Sequence[str], where: str
) -> float:
    """Sum over quanta of a subtask's timing entry (``<label>_metadata``, ``<label>:<subtask>``, ``key``)."""
    total = 0.0
    for ref in butler.query_datasets(f"{label}_metadata", collections=list(collections), where=where):
        metadata = butler.get(ref)
        name = f"{label}:{subtask}"
        if name in metadata.keys() and key in metadata[name].keys():
            total += float(metadata[name][key])
    return total


def morphology_report(
    repo: str,
    collections: Sequence[str],
    where: str,
    output: Path,
    max_magnitude: float = 22.0,
    magnitude_column: str = "ref_mag_i",
    size_column: str = "ref_size",
    n_cutouts: int = 18,
) -> MorphologyReport:
    """Evaluate the morphology stage on labelled patches and write metrics and figures into ``output``.

    Parameters
    ----------
    repo : `str`
        Butler repository.
    collections : sequence of `str`
        Collections holding the classifications, the labels and the coadds.
    where : `str`
        Butler query selecting the patches (e.g. ``"skymap='S' AND tract=3"``).
    output : `pathlib.Path`
        Folder for ``morphology_metrics.json``, ``morphology_confusion.png``, ``morphology_accuracy.png`` and
        ``morphology_cutouts.png``.
    max_magnitude : `float`
        Faintest labelled magnitude evaluated.
    magnitude_column, size_column : `str`
        Label columns for the cut and the binned accuracies (absent: no binned figure for them).
    n_cutouts : `int`
        Galaxies in the gallery (an even draw over the true classes).

    Raises
    ------
    RuntimeError
        If no classified galaxy carries a label.
    """
    from lsst.daf.butler import Butler

    from ..butler.conversions import multiband_from_coadds
    from ..core.morphology import CutoutConfig, catalog_cutouts, class_index
    from ..core.plots import (
        confusion_matrix_figure,
        figure_to_png_bytes,
        morphology_accuracy_figure,
        morphology_cutouts_figure,
    )

    output.mkdir(parents=True, exist_ok=True)
    with Butler.from_config(repo, collections=list(collections)) as butler:
        classified = _patch_tables(butler, "object_deepdisc_morphology", where)
        labelled = dict(
            (tuple(d.items()), t) for d, t in _patch_tables(butler, "deepdisc_morphology_labels", where)
        )
        parts = []
        class_names: list[str] = []
        for data_id, table in classified:
            labels = labelled.get(tuple(data_id.items()))
            if labels is None or len(table) == 0:
                continue
            class_names = [
                name[len("morph_prob_") :] for name in table.colnames if name.startswith("morph_prob_")
            ]
            merged = join(table, labels, keys="id", join_type="inner", metadata_conflicts="silent")
            merged["tract"] = data_id["tract"]
            merged["patch"] = data_id["patch"]
            parts.append(merged)
        if not parts:
            raise RuntimeError(f"no classified galaxy with a label in {list(collections)} where {where!r}")
        matched = vstack(parts, metadata_conflicts="silent")
        if magnitude_column in matched.colnames:
            matched = matched[np.asarray(matched[magnitude_column], dtype=float) <= max_magnitude]
        known = np.isin(np.asarray(matched["label"]).astype(str), class_names)
        matched = matched[known]
        truth = np.array(class_index(class_names, list(np.asarray(matched["label"]).astype(str))))
        probabilities = np.stack([np.asarray(matched[f"morph_prob_{name}"]) for name in class_names], axis=1)
        evaluation = evaluate_classification(
            probabilities,
            truth,
            class_names,
            size=np.asarray(matched[size_column], dtype=float) if size_column in matched.colnames else None,
            magnitude=np.asarray(matched[magnitude_column], dtype=float)
            if magnitude_column in matched.colnames
            else None,
        )
        files = {"metrics": output / "morphology_metrics.json"}
        summary = evaluation.summary()
        summary["max_magnitude"] = max_magnitude
        summary["confusion"] = evaluation.confusion.tolist()
        summary["class_names"] = class_names
        files["metrics"].write_text(json.dumps(summary, indent=1))
        files["confusion"] = output / "morphology_confusion.png"
        files["confusion"].write_bytes(
            figure_to_png_bytes(
                confusion_matrix_figure(
                    evaluation.confusion,
                    class_names,
                    title=f"{evaluation.n} galaxies with i <= {max_magnitude:g}: top-1 "
                    f"{evaluation.top1:.3f}, top-2 {evaluation.top2:.3f}",
                )
            )
        )
        bins = {}
        if evaluation.by_size is not None:
            bins["half-light radius (arcsec)"] = evaluation.by_size
        if evaluation.by_magnitude is not None:
            bins["i magnitude"] = evaluation.by_magnitude
        if bins:
            files["accuracy"] = output / "morphology_accuracy.png"
            files["accuracy"].write_bytes(figure_to_png_bytes(morphology_accuracy_figure(bins)))
        # A gallery from the first patch: a few galaxies of every true class.
        first = matched[(matched["tract"] == matched["tract"][0]) & (matched["patch"] == matched["patch"][0])]
        rng = np.random.default_rng(0)
        per_class = max(1, n_cutouts // len(class_names))
        chosen = []
        for name in class_names:
            rows = np.flatnonzero(np.asarray(first["label"]).astype(str) == name)
            chosen.extend(rng.permutation(rows)[:per_class].tolist())
        if chosen:
            gallery = first[chosen]
            tract, patch = int(first["tract"][0]), int(first["patch"][0])
            coadd_refs = butler.query_datasets(
                "deep_coadd", where=f"{where} AND tract={tract} AND patch={patch}"
            )
            coadds = {str(ref.dataId["band"]): butler.get(ref) for ref in coadd_refs}
            bands = [b for b in "ugrizy" if b in coadds]
            image = multiband_from_coadds(coadds, bands)
            cutouts, _ = catalog_cutouts(image, gallery, CutoutConfig())
            files["cutouts"] = output / "morphology_cutouts.png"
            files["cutouts"].write_bytes(
                figure_to_png_bytes(
                    morphology_cutouts_figure(
                        cutouts,
                        list(np.asarray(gallery["label"]).astype(str)),
                        list(np.asarray(gallery["morph_class"]).astype(str)),
                        bands,
                        title="true -> predicted (red: wrong); cyan: the object mask",
                    )
                )
            )
    return MorphologyReport(evaluation=evaluation, matched=matched, class_names=class_names, files=files)


def format_report(report: MorphologyReport) -> str:
    """Plain-text summary: the metrics and the confusion matrix."""
    e = report.evaluation
    names = report.class_names
    lines = [
        f"{e.n} galaxies: top-1 {e.top1:.3f}, top-2 {e.top2:.3f}, top-3 {e.top3:.3f}; "
        f"{100 * e.neighbour_fraction:.0f}% of the errors between neighbouring types",
        "confusion (rows: true, columns: predicted):",
        "      " + " ".join(f"{n:>5}" for n in names) + "  recall",
    ]
    for i, name in enumerate(names):
        row = " ".join(f"{v:5d}" for v in e.confusion[i])
        lines.append(f"{name:>5} {row}  {e.per_class_recall[name]:.3f}")
    if e.by_size is not None:
        lines.append(
            "accuracy by half-light radius (arcsec): "
            + ", ".join(
                f"{r['lo']:g}-{r['hi']:g}: {r['accuracy']:.2f} ({r['n']})" for r in e.by_size if r["n"]
            )
        )
    if e.by_magnitude is not None:
        lines.append(
            "accuracy by i magnitude: "
            + ", ".join(
                f"{r['lo']:g}-{r['hi']:g}: {r['accuracy']:.2f} ({r['n']})" for r in e.by_magnitude if r["n"]
            )
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="deepdisc-morphology-report", description=__doc__.splitlines()[0])
    parser.add_argument("repo", help="Butler repository")
    parser.add_argument("--collections", required=True, help="comma-separated input collections")
    parser.add_argument(
        "--where", required=True, help="Butler query of the patches, e.g. \"skymap='S' AND tract=3\""
    )
    parser.add_argument("--output", type=Path, default=Path("morphology_report"), help="output folder")
    parser.add_argument("--max-magnitude", type=float, default=22.0, help="faintest labelled i magnitude")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..butler.config_path import ensure_butler_config_path

    ensure_butler_config_path()
    report = morphology_report(
        args.repo, args.collections.split(","), args.where, args.output, args.max_magnitude
    )
    print(format_report(report))
    for name, path in report.files.items():
        print(f"{name}: {path}")
    return 0
