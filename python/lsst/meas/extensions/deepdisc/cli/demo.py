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
"""``make demo``: the whole DeepDISC workflow on a simulated repository, with a summary and an HTML report.

Steps (each is skipped when its outputs already exist, so a re-run is quick):

1. build the ``small`` simulated DRP repository (8 patches of ~1 k pixels in ugrizy, truth, a deblending run
   with scarlet-format models, object tables);
2. obtain a model: the compact package shipped in ``models/`` (trained on *other* simulated patches by
   ``bin/train-demo-model.sh``), or with ``--train`` a short CPU training run through
   ``pipelines/DeepDiscTrain.yaml``;
3. ``pipetask run`` detection + comparison (``pipelines/DeepDiscCompare.yaml``);
4. galaxy morphology with the shipped classifier: inside detection on the demo tract (step 3,
   ``detect:doMorphology``; its cost against the detection's), and with ``pipelines/DeepDiscMorphology.yaml``
   on the held-out tract 3 of the ``morphology`` preset, whose galaxies have true Hubble types (confusion
   matrix, accuracy against size and magnitude, cutouts);
5. print the tract summary (DeepDISC vs the scarlet-style deblender vs sep, against truth) and write
   ``report.html`` with the plots from the Butler.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import html
import io
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from .._product import pipeline_path, shipped_model_path, shipped_morphology_path, task_config_path

PRESETS = ("artifacts", "small")
"""Simulation presets the demo runs on: ``artifacts`` (the default: the ``small`` tract, same seed and
objects, plus ghosts, scattered light and rays) or ``small`` (without artifacts)."""


def output_collection(preset: str) -> str:
    """The demo's detection + comparison collection for a preset."""
    return "u/demo/deepdisc" if preset == "small" else f"u/demo/{preset}/deepdisc"


def train_collection(preset: str) -> str:
    """The demo's training collection (``--train``) for a preset."""
    return "u/demo/train" if preset == "small" else f"u/demo/{preset}/train"


PLOTS = (
    ("deepdisc_completeness_purity_plot", "Completeness and purity vs magnitude"),
    ("deepdisc_classification_plot", "Star/galaxy precision, recall, F1 vs magnitude"),
    ("deepdisc_blend_outcomes_plot", "Blend outcomes vs magnitude"),
    ("deepdisc_iou_plot", "IoU of matched pairs"),
    ("deepdisc_precision_recall_plot", "DeepDISC precision-recall over score thresholds"),
    ("deepdisc_artifact_plot", "Artifacts: AP per class, purity with and without artifact flags"),
)
"""Tract plots of the report; those absent from the run (``deepdisc_artifact_plot`` without artifacts) are
skipped."""
METHOD_LABELS = {"deepdisc": "DeepDISC", "scarlet": "scarlet-style deblender", "sep": "sep baseline"}

_start = time.perf_counter()


def _say(message: str) -> None:
    print(f"[demo {time.perf_counter() - _start:6.0f} s] {message}", flush=True)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _run(args: list[str]) -> None:
    _say("$ " + " ".join(args))
    subprocess.run(args, check=True)


def _butler(repo: Path):
    from lsst.daf.butler import Butler

    return Butler.from_config(str(repo))


def _refs(butler, dataset_type: str, collection: str) -> list:
    """Refs of a dataset type in a collection; none when it is not registered."""
    from lsst.daf.butler import MissingDatasetTypeError

    try:
        return list(butler.query_datasets(dataset_type, collections=collection, explain=False))
    except MissingDatasetTypeError:
        return []


def _has(repo: Path, dataset_type: str, collection: str) -> bool:
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

    with _butler(repo) as butler:
        try:
            return bool(butler.query_datasets(dataset_type, collections=collection, explain=False, limit=1))
        except (MissingCollectionError, MissingDatasetTypeError):
            return False


def build_repo(repo: Path, jobs: int, preset: str) -> str:
    """Step 1: the simulated repository (idempotent); returns the skymap name."""
    from ..sim.repo import build_sim_repo

    _say(f"step 1/5: simulated repository '{preset}' at {repo} (existing patches are kept)")
    info = build_sim_repo(str(repo), preset=preset, jobs=jobs)
    _say(
        f"repository ready: {len(info.data_ids)} patches, bands {''.join(info.bands)}, "
        f"collection {info.collection}"
    )
    return info.skymap


def obtain_model(repo: Path, skymap: str, train: bool, collection: str, preset: str) -> str:
    """Step 2: the model package collection to use as input."""
    if not train:
        try:
            shipped = shipped_model_path()
        except FileNotFoundError as error:
            _say(f"step 2/5: {error}; training a compact model on CPU instead")
        else:
            from ..core.model_package import ModelPackage

            package = ModelPackage.load(shipped)
            _say(
                f"step 2/5: shipped model {shipped.name}: {package.name} {package.version}, "
                f"bands {''.join(package.bands)}, reproduced by bin/train-demo-model.sh"
            )
            _run([_bin("deepdisc-model"), "ingest", str(repo), str(shipped), "--name", package.name])
            return f"pretrained_models/{package.name}"
    trained = train_collection(preset)
    if _has(repo, "deepdisc_model", trained):
        _say(f"step 2/5: reusing the model trained earlier in {trained}")
        return trained
    _say("step 2/5: training a compact model with pipelines/DeepDiscTrain.yaml (short CPU schedule)")
    _run(
        [
            _bin("pipetask"),
            "run",
            "-b",
            str(repo),
            "-i",
            collection,
            "-o",
            trained,
            "-p",
            str(pipeline_path("DeepDiscTrain")),
            "-C",
            f"labels:{task_config_path('labels_deepdisc')}",
            "-C",
            f"train:{task_config_path('train_cpu_demo')}",
            "-d",
            f"skymap='{skymap}'",
            "--register-dataset-types",
            "-j",
            "1",
        ]
    )
    return trained


def detect_and_compare(repo: Path, skymap: str, inputs: list[str], jobs: int, preset: str) -> None:
    """Step 3: detection (with the morphology subtask) and comparison with pipetask (skipped when done)."""
    output = output_collection(preset)
    if _has(repo, "deepdisc_comparison_summary", output):
        _say(
            f"step 3/5: detection and comparison already in {output}; delete the output folder to start over"
        )
        return
    _say(
        "step 3/5: detection (with galaxy morphology, detect:doMorphology=True) + comparison with "
        "pipelines/DeepDiscCompare.yaml"
    )
    args = [
        _bin("pipetask"),
        "run",
        "-b",
        str(repo),
        "-i",
        ",".join(inputs),
        "-o",
        output,
        "-p",
        str(pipeline_path("DeepDiscCompare")),
        "-c",
        "detect:doMorphology=True",
        "-d",
        f"skymap='{skymap}'",
        "--register-dataset-types",
        "-j",
        str(jobs),
    ]
    if _has(repo, "object_deepdisc", output):
        args += ["--extend-run", "--skip-existing", "--clobber-outputs"]  # finish an interrupted run
    _run(args)


MORPHOLOGY_PRESET = "morphology"
MORPHOLOGY_TRACT = 3
"""The labelled tract of the morphology step: the held-out tract of the ``morphology`` preset."""


def ingest_morphology_model(repo: Path) -> tuple[str, str]:
    """Step 2, second half: the shipped morphology classifier into ``pretrained_models/<name>``.

    Returns
    -------
    collection, description : `str`
        The collection and ``"<name> <version>"``.
    """
    from ..core.morphology import MorphologyPackage

    path = shipped_morphology_path()
    package = MorphologyPackage.load(path)
    _say(
        f"step 2/5: shipped morphology classifier {path.name}: {package.name} {package.version}, classes "
        f"{' '.join(package.class_names)}, reproduced by bin/train-morphology-model.sh"
    )
    _run([_bin("deepdisc-model"), "ingest", str(repo), str(path), "--name", package.name])
    return f"pretrained_models/{package.name}", f"{package.name} {package.version}"


def morphology_step(
    repo: Path, skymap: str, detection_model: str, morphology_model: str, jobs: int, preset: str, output: Path
) -> dict:
    """Step 4: the morphology classifier on a held-out tract with true Hubble types, and the stage's cost.

    The tract (tract 3 of the ``morphology`` preset) is detected, then the standalone stage
    (``DeepDiscMorphology.yaml``: ``labels`` and ``morphology``) runs on it; the demo tract's galaxies were
    classified inside detection in step 3.

    Returns
    -------
    summary : `dict`
        ``report`` (`~.morphology_report.MorphologyReport` of the held-out tract); ``in_detect_cost``
        (classification seconds inside detection over the rest of the detection quanta, demo tract);
        ``standalone_cost`` (standalone morphology quanta over detection quanta, held-out tract);
        ``n_demo`` (galaxies classified on the demo tract).
    """
    from ..sim.repo import build_sim_repo
    from .morphology_report import morphology_report, quantum_wall_seconds, subtask_seconds

    info = build_sim_repo(str(repo), preset=MORPHOLOGY_PRESET, tracts=[MORPHOLOGY_TRACT], jobs=jobs)
    _say(
        f"step 4/5: galaxy morphology on tract {MORPHOLOGY_TRACT} of the '{MORPHOLOGY_PRESET}' preset (true "
        "Hubble types): detection, then pipelines/DeepDiscMorphology.yaml (labels, morphology)"
    )
    labelled_output = "u/demo/morphology-held-out"
    where = f"skymap='{info.skymap}' AND tract={MORPHOLOGY_TRACT}"
    # One input list for both runs: the second extends the output chain of the first.
    inputs = ",".join([info.collection, detection_model, morphology_model])
    common = ["-i", inputs, "-o", labelled_output, "--register-dataset-types", "-j", str(jobs), "-d", where]
    if not _has(repo, "object_deepdisc_morphology", labelled_output):
        pipelines = [
            str(pipeline_path("DeepDisc")),
            f"{pipeline_path('DeepDiscMorphology')}#labels,morphology",
        ]
        for pipeline in pipelines:
            _run([_bin("pipetask"), "run", "-b", str(repo), "-p", pipeline, *common])
    report = morphology_report(str(repo), [labelled_output, info.collection], where, output / "report")
    demo_output, demo_where = output_collection(preset), f"skymap='{skymap}'"
    with _butler(repo) as butler:
        detect = quantum_wall_seconds(butler, "detect", [demo_output], demo_where)
        classify = subtask_seconds(butler, "detect", "morphology", "seconds", [demo_output], demo_where)
        held_out_detect = quantum_wall_seconds(butler, "detect", [labelled_output], where)
        standalone = quantum_wall_seconds(butler, "morphology", [labelled_output], where)
        n_demo = sum(len(butler.get(ref)) for ref in _refs(butler, "object_deepdisc_morphology", demo_output))
    return {
        "report": report,
        "in_detect_cost": classify / (detect - classify) if detect > classify else float("nan"),
        "classify_seconds": classify,
        "detect_seconds": detect - classify,
        "standalone_cost": standalone / held_out_detect if held_out_detect > 0 else float("nan"),
        "n_demo": n_demo,
    }


def summary_table(summary: Table) -> Table:
    """One row per method: the headline numbers (all magnitudes) with blend-outcome fractions."""
    totals = summary[np.asarray(summary["is_total"], dtype=bool)]
    rows = Table()
    rows["method"] = [METHOD_LABELS.get(str(m), str(m)) for m in totals["method"]]
    for column, label in (
        ("completeness", "completeness"),
        ("purity", "purity"),
        ("f1", "F1"),
        ("star_f1", "star F1"),
        ("galaxy_f1", "galaxy F1"),
        ("median_mask_iou", "median mask IoU"),
        ("purity_artifact_flagged", "purity (artifact flags)"),
        ("frac_fp_in_truth_artifact", "FP in artifacts"),
        ("frac_fp_in_truth_artifact_flagged", "of which flagged"),
    ):
        if column in totals.colnames:
            rows[label] = np.round(np.asarray(totals[column], dtype=float), 3)
    for column in [c for c in totals.colnames if c.startswith("frac_") and "artifact" not in c]:
        rows[column.removeprefix("frac_").replace("_", " ")] = np.round(np.asarray(totals[column], float), 3)
    rows.meta["reference"] = str(totals["reference"][0]) if "reference" in totals.colnames else "truth"
    rows.meta["n_ref"] = int(totals["n_ref"][0]) if "n_ref" in totals.colnames else 0
    return rows


MAGNITUDE_EDGES = (16.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0)
"""Truth i-magnitude bins of the per-magnitude table (the summary's 1-mag bins, merged below 22)."""


def per_magnitude_table(summary: Table, edges: tuple[float, ...] = MAGNITUDE_EDGES) -> Table:
    """Completeness and purity per magnitude bin and method, next to the all-magnitude values.

    Bins of the comparison summary that fall inside a wider bin are merged by adding their counts (matched
    and total references for completeness, matched and total detections for purity).
    """
    binned = summary[~np.asarray(summary["is_total"], dtype=bool)]
    totals = summary[np.asarray(summary["is_total"], dtype=bool)]
    rows = Table()
    methods = [str(m) for m in totals["method"]]
    rows["method"] = [METHOD_LABELS.get(m, m) for m in methods]
    for quantity, matched, count in (
        ("completeness", "n_ref_matched", "n_ref"),
        ("purity", "n_det_matched", "n_det"),
    ):
        for low, high in zip(edges[:-1], edges[1:]):
            values = []
            for method in methods:
                block = binned[np.asarray(binned["method"], dtype=str) == method]
                inside = (np.asarray(block["mag_min"]) >= low) & (np.asarray(block["mag_max"]) <= high)
                total = int(np.sum(block[count][inside]))
                values.append(round(float(np.sum(block[matched][inside])) / total, 3) if total else np.nan)
            rows[f"{quantity[0].upper()} {low:g}-{high:g}"] = values
        rows[f"{quantity[0].upper()} all"] = np.round(np.asarray(totals[quantity], dtype=float), 3)
    return rows


def write_report(repo: Path, skymap: str, output: Path, preset: str, morphology: dict | None = None) -> Table:
    """Step 4: summary table (printed) and report.html with the plots."""
    collection = output_collection(preset)
    _say("step 5/5: summary and report")
    figures = output / "report"
    figures.mkdir(parents=True, exist_ok=True)
    with _butler(repo) as butler:
        summary_refs = list(
            butler.query_datasets(
                "deepdisc_comparison_summary", collections=collection, where=f"skymap='{skymap}'"
            )
        )
        summary = butler.get(summary_refs[0])
        images = []
        for dataset_type, title in PLOTS:
            for ref in _refs(butler, dataset_type, collection):
                target = figures / f"{dataset_type}_tract{ref.dataId['tract']}.png"
                target.write_bytes(butler.getURI(ref).read())
                images.append((title, target))
        overlays = sorted(
            butler.query_datasets("deepdisc_overlay_plot", collections=collection, explain=False),
            key=lambda ref: int(ref.dataId["patch"]),
        )
        for ref in overlays[:2]:
            target = figures / f"overlay_tract{ref.dataId['tract']}_patch{ref.dataId['patch']}.png"
            target.write_bytes(butler.getURI(ref).read())
            images.append((f"Overlay, tract {ref.dataId['tract']} patch {ref.dataId['patch']}", target))
        # Truth artifacts against DeepDISC's artifact detections, written only for patches with artifacts.
        artifact_overlays = sorted(
            _refs(butler, "deepdisc_artifact_overlay_plot", collection),
            key=lambda ref: int(ref.dataId["patch"]),
        )
        for ref in artifact_overlays[:2]:
            tract, patch = ref.dataId["tract"], ref.dataId["patch"]
            target = figures / f"artifact_overlay_tract{tract}_patch{patch}.png"
            target.write_bytes(butler.getURI(ref).read())
            images.append((f"Artifacts (truth vs DeepDISC), tract {tract} patch {patch}", target))
    table = summary_table(summary)
    print()
    print(
        f"DeepDISC vs the scarlet-style deblender vs sep on the '{preset}' simulated tract "
        f"(reference: {table.meta['reference']}, {table.meta['n_ref']} objects):"
    )
    table.pprint(max_width=-1, max_lines=-1)
    print()
    by_magnitude = per_magnitude_table(summary)
    print(
        "Completeness (C) and purity (P) per truth i-magnitude bin (an unmatched detection counts at its "
        "measured magnitude):"
    )
    by_magnitude.pprint(max_width=-1, max_lines=-1)
    print()
    rows_html = ""
    for part in (table, by_magnitude):
        buffer = io.StringIO()
        part.write(buffer, format="ascii.html")
        rows_html += buffer.getvalue().split("<body>")[-1].split("</body>")[0]
    if morphology is not None:
        from .morphology_report import format_report

        report = morphology["report"]
        cost = (
            f"Cost: on the demo tract, {morphology['n_demo']} galaxies were classified inside detection "
            f"(detect:doMorphology=True) in {morphology['classify_seconds']:.1f} s, "
            f"{100 * morphology['in_detect_cost']:.0f}% of the other "
            f"{morphology['detect_seconds']:.1f} s of the detection quanta; the standalone stage, which "
            f"reads the coadds again, took {100 * morphology['standalone_cost']:.0f}% of the detection "
            "quanta's time on the held-out tract."
        )
        text = format_report(report)
        print(
            f"Galaxy morphology ({morphology['package']}) on the held-out tract {MORPHOLOGY_TRACT} of the "
            f"'{MORPHOLOGY_PRESET}' preset, true Hubble types, i <= 22:"
        )
        print(text)
        print(cost)
        print()
        rows_html += (
            f"<h2>Galaxy morphology ({html.escape(morphology['package'])})</h2>"
            f"<p>Held-out tract {MORPHOLOGY_TRACT} of the '{MORPHOLOGY_PRESET}' simulation preset, whose "
            "galaxies have true Hubble types; galaxies with i &le; 22.</p>"
            f"<pre>{html.escape(text)}</pre><p>{html.escape(cost)}</p>"
        )
        for key, title in (
            ("confusion", "Morphology: confusion matrix"),
            ("accuracy", "Morphology: accuracy against size and magnitude"),
            ("cutouts", "Morphology: labelled cutouts"),
        ):
            if key in report.files:
                images.append((title, report.files[key]))
    body = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>DeepDISC demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto} img{max-width:100%}"
        " table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
        "<h1>DeepDISC on a simulated Rubin tract</h1>",
        f"<p>Repository <code>{html.escape(str(repo))}</code>, outputs in collection "
        f"<code>{collection}</code>. Reference: {html.escape(table.meta['reference'])}.</p>",
        rows_html,
    ]
    for title, path in images:
        body.append(f"<h2>{html.escape(title)}</h2><img src='report/{path.name}' alt='{html.escape(title)}'>")
    body.append("</body></html>")
    report = output / "report.html"
    report.write_text("\n".join(body))
    _say(f"report written: {report} ({len(images)} figures)")
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the demo; see the module docstring."""
    parser = argparse.ArgumentParser(description="Run the DeepDISC workflow on a simulated repository.")
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="working directory")
    parser.add_argument(
        "--train", action="store_true", help="train a compact model instead of the shipped one"
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes for the simulation and for pipetask")
    parser.add_argument("--clean", action="store_true", help="delete the output directory first")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=PRESETS[0],
        help="simulated tract: 'artifacts' (default; with ghosts, scattered light and rays) or 'small'",
    )
    args = parser.parse_args(argv)
    # Progress lines of the simulation (per patch, with rate and ETA) come through logging.
    logging.basicConfig(format="[%(name)s] %(message)s")
    logging.getLogger("lsst.meas.extensions.deepdisc").setLevel(logging.INFO)
    if args.clean and args.output.exists():
        shutil.rmtree(args.output)
    args.output.mkdir(parents=True, exist_ok=True)
    repo = (args.output / "repo").resolve()
    from ..butler.config_path import ensure_butler_config_path

    ensure_butler_config_path()  # our storage classes, also for the pipetask child processes
    skymap = build_repo(repo, args.jobs, args.preset)
    from ..sim.repo import default_collection

    collection = default_collection(args.preset)
    model_collection = obtain_model(repo, skymap, args.train, collection, args.preset)
    morphology_model, morphology_package = ingest_morphology_model(repo)
    detect_and_compare(repo, skymap, [collection, model_collection, morphology_model], args.jobs, args.preset)
    morphology = morphology_step(
        repo, skymap, model_collection, morphology_model, args.jobs, args.preset, args.output.resolve()
    )
    morphology["package"] = morphology_package
    write_report(repo, skymap, args.output.resolve(), args.preset, morphology)
    _say("done: open " + str((args.output / "report.html").resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
