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
r"""Record a training run's learning curve: validation F1, AP and recall per magnitude against iteration.

Reads ``deepdisc_training_history`` (one row per validation) and the package's operating point from a
training output collection and writes ``<out>/<date>-learning-curve-<name>.md``, ``.json`` and ``.png``::

    .venv/bin/python bench/training_curve.py train_work/repo u/deepdisc/train-demo --name compact-cpu \
        --note "2 CPU cores (AMD EPYC), config/tasks/train_cpu_scale.py"
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
COLUMNS = ("iteration", "train_loss", "val_loss", "precision", "recall", "f1", "ap", "ap50")


def _fmt(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo")
    parser.add_argument("collection")
    parser.add_argument("--name", required=True, help="short name of the run, used in the file names")
    parser.add_argument("--note", default="", help="machine and recipe, written into the report")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    from lsst.daf.butler import Butler

    from lsst.meas.extensions.deepdisc.butler.config_path import ensure_butler_config_path
    from lsst.meas.extensions.deepdisc.core.training import plot_training_history

    ensure_butler_config_path()
    butler = Butler.from_config(args.repo, collections=args.collection)
    history = butler.get("deepdisc_training_history")
    package = butler.get("deepdisc_model")
    recall_columns = [name for name in history.colnames if name.startswith("recall_mag_")]
    rows = [{name: float(row[name]) for name in history.colnames if name != "is_best"} for row in history]
    for row, best in zip(rows, history["is_best"]):
        row["is_best"] = bool(best)
    point = package.provenance.get("operating_point", {})
    date = datetime.date.today().isoformat()
    stem = args.out / f"{date}-learning-curve-{args.name}"
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Learning curve: {package.name} {package.version} ({args.name})",
        "",
        f"{date}; {args.note}",
        f"Training collection `{args.collection}`; validation patches "
        f"{package.provenance.get('validation_patches')}",
        "(labels of the validation patches; detections above score 0.5 matched at mask IoU >= 0.5).",
        "",
        "| "
        + " | ".join(COLUMNS + tuple(c.removeprefix("recall_mag_").replace("_", "-") for c in recall_columns))
        + " | best |",
        "|" + "---:|" * (len(COLUMNS) + len(recall_columns)) + "---|",
    ]
    for row in rows:
        values = [str(int(row["iteration"]))] + [_fmt(row.get(name, math.nan)) for name in COLUMNS[1:]]
        values += [_fmt(row.get(name, math.nan)) for name in recall_columns]
        lines.append("| " + " | ".join(values) + f" | {'*' if row['is_best'] else ''} |")
    if point:
        lines += [
            "",
            f"Operating point ({point.get('rule')}): score >= {point.get('threshold')}, validation "
            f"precision {_fmt(point.get('precision'))}, recall {_fmt(point.get('recall'))}, "
            f"F1 {_fmt(point.get('f1'))}.",
            "",
            "| threshold | precision | recall | F1 |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {entry['threshold']:.2f} | {_fmt(entry['precision'])} | {_fmt(entry['recall'])} | "
            f"{_fmt(entry['f1'])} |"
            for entry in point.get("curve", [])
        ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(
        json.dumps({"history": rows, "operating_point": point, "note": args.note}, indent=1, default=float)
    )
    plot_training_history([dict(row) for row in rows], stem.with_suffix(".png"), stage_boundary=0)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
