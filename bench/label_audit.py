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
r"""Label audit: how many of the deblender's children each label rule keeps, and how true their footprints.

For every patch given, the deblender's scarlet models, the object table, the coadds and the truth table are
read from a Butler repository (a simulated one: the truth is needed).  Each label rule (the
``config/tasks/labels_*.py`` rules, applied through `~lsst.meas.extensions.deepdisc.core.labels.build_labels`)
turns the models into labels; per 1-mag bin of the object table's i-band cModel magnitude the audit reports

* ``kept``: the fraction of the deblender's sources (children and isolated sources: every model in the
  archive) that became a label;
* ``IoU``: the median footprint IoU of the labels against the truth object at the same position (one-to-one
  within 3 px, `~lsst.meas.extensions.deepdisc.core.matching.match_catalogs` with no IoU stage).

Usage (the training repository of ``bin/train-demo-model.sh``)::

    .venv/bin/python bench/label_audit.py REPO --collection sim/train --skymap deepdisc_sim_train \
        --patches 0:0 0:5 1:3 1:10 --out bench/results/

Writes ``<out>/<date>-label-audit-<commit>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

# The rules of config/tasks/labels_*.py, as LabelConfig overrides.
RULES: dict[str, dict[str, Any]] = {
    "stack (model > 0)": {"threshold_mode": "model", "model_threshold": 0.0},
    "DeepDISC 5 sigma (labels_deepdisc.py)": {
        "threshold_mode": "background_sigma",
        "sigma_threshold": 5.0,
        "detection_weighting": "sum",
    },
    "truth-aligned 1 sigma (default)": {
        "threshold_mode": "background_sigma",
        "sigma_threshold": 1.0,
        "detection_weighting": "inverse_variance",
    },
}
BIN_EDGES = (16.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0)
MATCH_RADIUS_PX = 3.0


def _mag(flux: np.ndarray) -> np.ndarray:
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 31.4 - 2.5 * np.log10(flux), np.nan)


def audit_patch(butler: Any, data_id: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Per rule: the i magnitudes of all deblender sources, which became labels, and the labels' IoUs."""
    from lsst.meas.extensions.deepdisc.butler.conversions import multiband_from_coadds
    from lsst.meas.extensions.deepdisc.butler.labels_io import scarlet_models_from_butler
    from lsst.meas.extensions.deepdisc.core.footprints import unflatten_spans
    from lsst.meas.extensions.deepdisc.core.labels import build_labels
    from lsst.meas.extensions.deepdisc.core.matching import SourceArrays, match_catalogs

    models = scarlet_models_from_butler(butler.get("object_scarlet_models", data_id))
    bands = list(models.bands)
    coadds = {band: butler.get("deep_coadd", data_id, band=band) for band in bands}
    image = multiband_from_coadds(coadds, bands)
    objects = butler.get("object_patch", data_id)
    truth = butler.get("truth_patch", data_id)
    source_ids = np.array(
        [int(source_id) for _, source_id, _ in models.iter_sources()] + [int(key) for key in models.isolated],
        dtype=np.int64,
    )
    object_mag = dict(zip(np.asarray(objects["objectId"], dtype=np.int64), _mag(objects["i_cModelFlux"])))
    mags = np.array([object_mag.get(int(sid), np.nan) for sid in source_ids])
    truth_arrays = SourceArrays(
        x=np.asarray(truth["x"]),
        y=np.asarray(truth["y"]),
        spans=[unflatten_spans(np.asarray(spans)) for spans in truth["spans"]],
    )
    out = {}
    for name, rule in RULES.items():
        labels = build_labels(image, models, objects, **rule)
        kept = np.isin(source_ids, np.asarray(labels["source_id"], dtype=np.int64))
        label_arrays = SourceArrays(
            x=np.asarray(labels["centroid_x"]),
            y=np.asarray(labels["centroid_y"]),
            spans=[unflatten_spans(np.asarray(spans)) for spans in labels["footprint"]],
        )
        match = match_catalogs(truth_arrays, label_arrays, iou_type="none", max_distance=MATCH_RADIUS_PX)
        label_mag = np.asarray(labels["mag"], dtype=np.float64)
        out[name] = {
            "source_mag": mags,
            "kept": kept,
            "pair_mag": label_mag[match.det_index],
            "pair_truth_mag": np.asarray(truth["mag_i"], dtype=np.float64)[match.truth_index],
            "pair_iou": match.mask_iou,
        }
    return out


def summarise(per_patch: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict[str, list[dict[str, Any]]]:
    """Pool the patches: per rule and magnitude bin, the kept fraction and the median IoU against truth."""
    summary = {}
    for name in RULES:
        mags = np.concatenate([patch[name]["source_mag"] for patch in per_patch])
        kept = np.concatenate([patch[name]["kept"] for patch in per_patch])
        pair_mag = np.concatenate([patch[name]["pair_truth_mag"] for patch in per_patch])
        pair_iou = np.concatenate([patch[name]["pair_iou"] for patch in per_patch])
        rows = []
        for low, high in zip(BIN_EDGES[:-1], BIN_EDGES[1:]):
            in_bin = (mags >= low) & (mags < high)
            pairs = (pair_mag >= low) & (pair_mag < high)
            rows.append(
                {
                    "bin": f"{low:g}-{high:g}",
                    "n_sources": int(in_bin.sum()),
                    "kept": float(kept[in_bin].mean()) if in_bin.any() else math.nan,
                    "n_pairs": int(pairs.sum()),
                    "median_iou": float(np.nanmedian(pair_iou[pairs])) if pairs.any() else math.nan,
                }
            )
        brighter = mags < 25.0
        bright_pairs = pair_mag < 25.0
        rows.append(
            {
                "bin": "all < 25",
                "n_sources": int(brighter.sum()),
                "kept": float(kept[brighter].mean()) if brighter.any() else math.nan,
                "n_pairs": int(bright_pairs.sum()),
                "median_iou": float(np.nanmedian(pair_iou[bright_pairs])) if bright_pairs.any() else math.nan,
            }
        )
        summary[name] = rows
    return summary


def markdown(summary: dict[str, list[dict[str, Any]]], header: dict[str, Any]) -> str:
    """The audit as Markdown tables (one per quantity)."""
    bins = [row["bin"] for row in next(iter(summary.values()))]
    lines = [
        "# Label audit",
        "",
        f"- date: {header['date']}, commit `{header['commit']}`",
        f"- repository collection `{header['collection']}`, patches {', '.join(header['patches'])}",
        f"- command: `{header['command']}`",
        f"- {header['seconds']:.0f} s",
        "",
        "Fraction of the deblender's sources (all models in `object_scarlet_models`) that become labels, by",
        "the object table's i-band cModel magnitude:",
        "",
        "| rule | " + " | ".join(bins) + " |",
        "|---|" + "---:|" * len(bins),
    ]
    for name, rows in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['kept']:.3f}" for row in rows) + " |")
    lines += [
        "",
        "Median footprint IoU of the labels against truth (matched one-to-one within "
        f"{MATCH_RADIUS_PX:g} px), by truth i magnitude:",
        "",
        "| rule | " + " | ".join(bins) + " |",
        "|---|" + "---:|" * len(bins),
    ]
    for name, rows in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['median_iou']:.2f}" for row in rows) + " |")
    counts = next(iter(summary.values()))
    lines += ["", "Sources per bin: " + ", ".join(f"{row['bin']}: {row['n_sources']}" for row in counts), ""]
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--skymap", required=True)
    parser.add_argument("--patches", nargs="+", required=True, metavar="TRACT:PATCH")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    from lsst.daf.butler import Butler

    start = time.perf_counter()
    butler = Butler.from_config(args.repo, collections=args.collection)
    per_patch = []
    for spec in args.patches:
        tract, patch = (int(part) for part in spec.split(":"))
        t0 = time.perf_counter()
        per_patch.append(audit_patch(butler, {"skymap": args.skymap, "tract": tract, "patch": patch}))
        print(f"patch {spec}: {time.perf_counter() - t0:.1f} s", flush=True)
    summary = summarise(per_patch)
    date = datetime.date.today().isoformat()
    header = {
        "date": date,
        "commit": _commit(),
        "collection": args.collection,
        "patches": list(args.patches),
        "command": "python bench/label_audit.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": time.perf_counter() - start,
    }
    text = markdown(summary, header)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{date}-label-audit-{header['commit']}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"header": header, "summary": summary}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
