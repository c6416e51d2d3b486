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


"""Choose the score threshold of the binned artifact pass on a simulated validation tract with artifacts.

The model's binned artifact pass (``DeepDiscDetectTask``, ``artifactBinning``) runs on every patch of the
tract at a low threshold; each detection is matched to the truth artifacts (``truth_artifacts``) by
footprint IoU (>= 0.5, greedy by score, one truth each), then, per candidate threshold, the instance
precision, recall and F1 and the patch-level "has artifact" F1 are printed, and the threshold with the
best instance F1 (the highest on ties) is proposed.  Use a tract of its own seed, neither the demo's nor
the one the results are reported on::

    deepdisc-sim-repo --preset artifacts --seed 4242 --patches 0 1 2 3 4 5 artval/repo
    python bench/choose_artifact_threshold.py --repo artval/repo --model models/deepdisc-compact-sim.zip
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from lsst.daf.butler import Butler

from lsst.meas.extensions.deepdisc.core.footprints import Footprint
from lsst.meas.extensions.deepdisc.core.metrics import presence_scores
from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
from lsst.meas.extensions.deepdisc.tasks.coadd_inputs import read_coadds
from lsst.meas.extensions.deepdisc.tasks.detect import DeepDiscDetectConfig, DeepDiscDetectTask

THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def patch_matches(task, package, butler, skymap: str, tract: int, patch: int):
    """Score the binned artifacts of one patch against its truth artifacts.

    Returns the scores, whether each matches a truth artifact, and the number of truth artifacts.
    """
    where = f"skymap='{skymap}' AND tract={tract} AND patch={patch}"
    refs = list(butler.query_datasets("deep_coadd", where=where))
    bands = [band for band in package.bands if band in {str(r.dataId["band"]) for r in refs}]
    image = read_coadds(butler, refs, bands, "MaskedImageV2", "the model")
    catalog = task.run(image, package, tract=tract, patch=patch).catalog
    rows = catalog[np.asarray(catalog["tile_index"]) == -1]
    truth = butler.get("truth_artifacts", tract=tract, patch=patch, skymap=skymap)
    truth_footprints = [Footprint.from_flat(np.asarray(s)) for s in truth["spans"]]
    order = np.argsort(-np.asarray(rows["score"], dtype=float))
    used = np.zeros(len(truth_footprints), dtype=bool)
    scores, matched = [], []
    for index in order:
        found = Footprint.from_flat(np.asarray(rows["footprint"][index]))
        ious = np.array([found.iou(t) if not u else 0.0 for t, u in zip(truth_footprints, used)])
        hit = bool(ious.size and ious.max() >= 0.5)
        if hit:
            used[int(np.argmax(ious))] = True
        scores.append(float(rows["score"][index]))
        matched.append(hit)
    return np.array(scores), np.array(matched, dtype=bool), len(truth_footprints)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--collection", default="sim/artifacts")
    parser.add_argument("--skymap", default="deepdisc_sim_artifacts")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    package = ModelPackage.load(args.model)
    config = DeepDiscDetectConfig()
    config.artifactScoreThreshold = min(THRESHOLDS)
    task = DeepDiscDetectTask(config=config)
    butler = Butler(args.repo, collections=args.collection)
    keys = sorted(
        {(int(r.dataId["tract"]), int(r.dataId["patch"])) for r in butler.query_datasets("truth_artifacts")}
    )
    results = [patch_matches(task, package, butler, args.skymap, *key) for key in keys]
    n_truth = sum(r[2] for r in results)
    print(f"{len(keys)} patches, {n_truth} truth artifacts")
    print("| threshold | precision | recall | F1 | has-artifact F1 |\n|---:|---:|---:|---:|---:|")
    best = (-1.0, None)
    for threshold in THRESHOLDS:
        kept = [(s >= threshold, m) for s, m, _ in results]
        tp = sum(int(np.sum(k & m)) for k, m in kept)
        n_det = sum(int(np.sum(k)) for k, _ in kept)
        precision = tp / n_det if n_det else float("nan")
        recall = tp / n_truth if n_truth else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        present = presence_scores(
            np.array([r[2] > 0 for r in results]), np.array([bool(np.any(k)) for k, _ in kept])
        )
        print(f"| {threshold:.2f} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {present['f1']:.3f} |")
        if f1 >= best[0]:
            best = (f1, threshold)
    print(f"proposed artifact score threshold: {best[1]} (instance F1 {best[0]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
