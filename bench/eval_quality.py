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

r"""Quality of a model on a simulated repository, per set of bands, against truth (and against sep).

For every band set, ``pipetask run`` of ``pipelines/DeepDiscCompare.yaml`` with ``detect.bands`` set to
that set (the model runs on those bands only; the deblender and sep keep all of the repository's bands),
then, from the Butler:

- completeness per truth i-magnitude bin and purity (all magnitudes), against truth;
- star and galaxy F1 over matched objects with truth i < 24, and the same for the object table's
  extendedness (the deblender);
- the fraction of sep's S/N > 20 detections that DeepDISC recovers (within 3 px), also counting only those
  within 3 px of a truth object (sep shreds large galaxies into bright fragments that are not objects),
  and DeepDISC's purity against sep's S/N > 5 detections plus truth (the foreign-instrument targets of
  issue 12);
- with ``--artifacts`` (a repository with ``truth_artifacts``), the artifact metrics of the comparison
  summary (issue 13) for every method: patch-level "has artifact" precision, recall and F1, artifact AP50
  per class and AP, pixel IoU of the artifact masks, purity with and without the artifact flags, and the
  fraction of each method's false positives inside truth artifacts that DeepDISC's artifacts flag.

Example (the demo's held-out tract, after ``make demo``)::

    python bench/eval_quality.py --repo demo_output/repo --input sim/small \
        --model models/deepdisc-compact-sim.zip --bands ugrizy gri grz riz i \
        --output bench/results/quality-bands.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAG_EDGES = (16.0, 22.0, 23.0, 24.0, 25.0, 26.0)


def _run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def _butler(repo: str):
    from lsst.daf.butler import Butler

    return Butler.from_config(repo)


def _get_all(butler, dataset_type: str, collection: str) -> list:
    refs = sorted(
        butler.registry.queryDatasets(dataset_type, collections=collection, findFirst=True),
        key=lambda ref: str(ref.dataId),
    )
    return [(ref, butler.get(ref, parameters={"strip_astropy_meta_yaml": False})) for ref in refs]


def _f1(truth_is: np.ndarray, pred_is: np.ndarray) -> float:
    tp = int(np.sum(truth_is & pred_is))
    fp = int(np.sum(~truth_is & pred_is))
    fn = int(np.sum(truth_is & ~pred_is))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def classification(match: Table, method: str, bright: float = 24.0) -> dict[str, float]:
    """Star and galaxy F1 of ``method`` over truth-matched objects brighter than ``bright``."""
    rows = match[
        (np.asarray(match["row_type"]) == "reference") & np.asarray(match[f"{method}_matched"], bool)
    ]
    rows = rows[np.asarray(rows["ref_mag"], float) < bright]
    truth_star = np.asarray(rows["ref_class_name"], str) == "star"
    pred_star = np.asarray(rows[f"{method}_class_id"]) == 0
    return {"star_f1": _f1(truth_star, pred_star), "galaxy_f1": _f1(~truth_star, ~pred_star)}


def completeness_by_mag(summary: Table, method: str = "deepdisc") -> dict[str, float]:
    """Completeness per bin of ``MAG_EDGES`` (summary bins merged), purity and median IoU (totals)."""
    block = summary[(np.asarray(summary["method"], str) == method)]
    binned = block[~np.asarray(block["is_total"], bool)]
    total = block[np.asarray(block["is_total"], bool)]
    out: dict[str, float] = {}
    for low, high in zip(MAG_EDGES[:-1], MAG_EDGES[1:]):
        inside = (np.asarray(binned["mag_min"]) >= low) & (np.asarray(binned["mag_max"]) <= high)
        n = int(np.sum(binned["n_ref"][inside]))
        out[f"C {low:g}-{high:g}"] = float(np.sum(binned["n_ref_matched"][inside])) / n if n else np.nan
    out["purity"] = float(total["purity"][0])
    out["median mask IoU"] = float(total["median_mask_iou"][0])
    return out


def sep_agreement(butler, collection: str, radius: float = 3.0) -> dict[str, float]:
    """DeepDISC against sep: recovery of sep's S/N > 20 detections, purity vs sep S/N > 5 plus truth."""
    from scipy.spatial import cKDTree

    from lsst.meas.extensions.deepdisc.butler.conversions import multiband_from_coadds
    from lsst.meas.extensions.deepdisc.core.baseline import run_sep_baseline

    recovered = n_bright = recovered_real = n_bright_real = kept = n_det = 0
    for ref, catalog in _get_all(butler, "object_deepdisc", collection):
        data_id = ref.dataId
        coadd_refs = butler.registry.queryDatasets("deep_coadd", collections=collection, dataId=data_id)
        coadds = {cref.dataId["band"]: butler.get(cref) for cref in coadd_refs}
        image = multiband_from_coadds(coadds, sorted(coadds))
        sep = run_sep_baseline(image)
        snr = np.asarray(sep["detection_snr"], float)
        sep_xy = np.column_stack([np.asarray(sep["x"], float), np.asarray(sep["y"], float)])  # parent
        truth = butler.get("truth_patch", dataId=data_id, collections=collection)
        truth_xy = np.column_stack([np.asarray(truth["x"], float), np.asarray(truth["y"], float)])
        # Whole patches on both sides (sep runs on the whole coadd, borders included).
        source = (
            ~np.asarray(catalog["is_artifact"], bool) if "is_artifact" in catalog.colnames else slice(None)
        )
        det_xy = np.column_stack(
            [
                np.asarray(catalog["centroid_x"], float)[source],
                np.asarray(catalog["centroid_y"], float)[source],
            ]
        )
        bright = sep_xy[snr > 20]
        real = np.zeros(len(bright), bool)
        if len(truth_xy) and len(bright):
            real = cKDTree(truth_xy).query(bright)[0] <= radius
        if len(det_xy) and len(bright):
            found = cKDTree(det_xy).query(bright)[0] <= radius
            recovered += int(np.sum(found))
            recovered_real += int(np.sum(found & real))
        n_bright += len(bright)
        n_bright_real += int(np.sum(real))
        known = np.vstack([sep_xy[snr > 5], truth_xy]) if len(truth_xy) else sep_xy[snr > 5]
        if len(det_xy) and len(known):
            distance, _ = cKDTree(known).query(det_xy)
            kept += int(np.sum(distance <= radius))
        n_det += len(det_xy)
    return {
        "sep S/N>20 recovered": recovered / n_bright if n_bright else np.nan,
        "sep S/N>20 on truth recovered": recovered_real / n_bright_real if n_bright_real else np.nan,
        "purity vs sep S/N>5 + truth": kept / n_det if n_det else np.nan,
    }


ARTIFACT_COLUMNS = (
    "artifact_presence_precision",
    "artifact_presence_recall",
    "artifact_presence_f1",
    "artifact_ap",
    "artifact_ap50",
    "artifact_pixel_iou",
    "purity",
    "purity_artifact_flagged",
    "n_fp_in_truth_artifact",
    "frac_fp_in_truth_artifact_flagged",
)


def artifact_table(summary: Table) -> Table:
    """The artifact columns of the comparison summary's total rows, one row per method."""
    totals = summary[np.asarray(summary["is_total"], dtype=bool)]
    per_class = [c for c in totals.colnames if c.startswith("artifact_ap50_")]
    names = ["method", *[c for c in (*ARTIFACT_COLUMNS, *per_class) if c in totals.colnames]]
    rows = [[str(row["method"]), *[float(row[name]) for name in names[1:]]] for row in totals]
    return Table(rows=rows, names=names)


def evaluate(args: argparse.Namespace) -> tuple[Table, Table | None]:
    """Detect and compare on the repository; the source-quality table and the artifact table (if asked)."""
    from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage

    package = ModelPackage.load(args.model)
    # One collection per package version, so that evaluating a new version never clashes with an old one.
    model_name = f"{package.name}-{package.version}"
    _run([str(BIN / "deepdisc-model"), "ingest", args.repo, args.model, "--name", model_name])
    butler = _butler(args.repo)
    skymap = args.skymap or next(iter(butler.registry.queryDimensionRecords("skymap"))).name
    rows = []
    artifacts = None
    for bands in args.bands:
        output = f"u/eval/{package.name}-{package.version}/{args.tag}{bands}"
        if not list(butler.registry.queryCollections(output + "*")):
            band_list = ",".join(repr(b) for b in bands)
            _run(
                [
                    str(BIN / "pipetask"),
                    "run",
                    "-b",
                    args.repo,
                    "-i",
                    f"{args.input},pretrained_models/{model_name}",
                    "-o",
                    output,
                    "-p",
                    str(ROOT / "pipelines" / "DeepDiscCompare.yaml"),
                    "-c",
                    f"detect:bands=[{band_list}]",
                    *[item for config in args.config for item in ("-c", config)],
                    "-d",
                    f"skymap='{skymap}'" + (f" AND ({args.where})" if args.where else ""),
                    "--register-dataset-types",
                    "-j",
                    str(args.jobs),
                ]
            )
            butler = _butler(args.repo)
        ((_, summary),) = _get_all(butler, "deepdisc_comparison_summary", output)
        match = vstack([table for _, table in _get_all(butler, "deepdisc_comparison", output)])
        if args.artifacts and artifacts is None:
            artifacts = artifact_table(summary)
        row = {"bands": bands, **completeness_by_mag(summary)}
        row.update({"star F1 (i<24)": classification(match, "deepdisc")["star_f1"]})
        row.update({"galaxy F1 (i<24)": classification(match, "deepdisc")["galaxy_f1"]})
        if args.sep:
            row.update(sep_agreement(butler, output))
        rows.append(row)
        if bands == args.bands[0]:
            reference = {"bands": "deblender (all bands)", **completeness_by_mag(summary, "scarlet")}
            reference["star F1 (i<24)"] = classification(match, "scarlet")["star_f1"]
            reference["galaxy F1 (i<24)"] = classification(match, "scarlet")["galaxy_f1"]
    rows.append(reference)
    table = Table(rows=[[row.get(name, np.nan) for name in rows[0]] for row in rows], names=list(rows[0]))
    return table, artifacts


def to_markdown(table: Table) -> str:
    """The table as a Markdown table."""
    header = "| " + " | ".join(table.colnames) + " |"
    lines = [header, "|" + "---|" * len(table.colnames)]
    for row in table:
        cells = [f"{v:.3f}" if isinstance(v, float | np.floating) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", required=True)
    parser.add_argument("--input", required=True, help="input collection of the simulated repository")
    parser.add_argument("--model", required=True, help="model package (.zip)")
    parser.add_argument("--bands", nargs="+", default=["ugrizy"], help="band sets, e.g. ugrizy gri")
    parser.add_argument("--skymap", default="")
    parser.add_argument(
        "--where", default="", help='more of the data query, e.g. "tract=2 AND patch IN (5, 6, 9, 10)"'
    )
    parser.add_argument("--tag", default="", help="prefix of the output collections' last part")
    parser.add_argument("--sep", action="store_true", help="also measure agreement with sep (slower)")
    parser.add_argument(
        "--artifacts", action="store_true", help="also report the artifact metrics (needs truth_artifacts)"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--config", action="append", default=[], help="extra pipetask -c, e.g. compare:refBand=r (no i band)"
    )
    parser.add_argument("--output", help="markdown file to write")
    args = parser.parse_args(argv)
    os.environ.setdefault(
        "DAF_BUTLER_CONFIG_PATH", str(ROOT / "python/lsst/meas/extensions/deepdisc/butler/configs")
    )
    os.environ.setdefault("MEAS_EXTENSIONS_DEEPDISC_DIR", str(ROOT))
    start = time.perf_counter()
    table, artifacts = evaluate(args)
    text = to_markdown(table)
    if artifacts is not None:
        text += (
            f"\n\nArtifacts (bands {args.bands[0]}; AP: mean over patches with truth artifacts; the last "
            "column: fraction of the method's false positives inside truth artifacts that DeepDISC's "
            "artifact rows flag):\n\n" + to_markdown(artifacts)
        )
    print(text)
    if args.output:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        header = (
            f"# Model quality: {Path(args.model).name} on {args.repo} ({args.input})\n\n"
            f"Machine: {platform.machine()} {os.cpu_count()} cores; commit {commit}; "
            f"{time.strftime('%Y-%m-%d')}; {time.perf_counter() - start:.0f} s.\n\n"
            f"Command: `python bench/eval_quality.py {' '.join(argv or sys.argv[1:])}`\n\n"
            "C a-b: completeness against truth in truth i-magnitude bins (inner patch regions, 3 px); "
            "purity over all detections; F1 over truth-matched objects with i < 24.\n\n"
        )
        Path(args.output).write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
