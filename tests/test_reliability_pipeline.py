"""Integration: training the reliability classifier and detecting with it, through real pipetask processes.

`DeepDiscReliability.yaml` detects the candidates with the shipped model at a low score threshold and trains
a small classifier against the truth positions; ``deepdisc-model reliability`` puts it into a new version of
the package; the detection pipeline then runs the network at the classifier's candidate threshold and keeps
what the classifier accepts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import vstack
from lsst.daf.butler import Butler

from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
from lsst.meas.extensions.deepdisc.core.star_galaxy import ReliabilityClassifier, judge_reliability

from pipetask_helpers import BIN, pipetask, run
from sim_fixtures import TinyRepo

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tiny_repo_pipetask")]

TRAIN = "u/test/reliability_train"
DETECT = "u/test/reliability_detect"
TILES = ["-c", "detect:tileSize=256", "-c", "detect:tileOverlap=64"]


@pytest.fixture(scope="module")
def reliability_run(
    tiny_repo: TinyRepo, package_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    shipped = package_root / "models" / "deepdisc-compact-sim.zip"
    run(str(BIN / "deepdisc-model"), "ingest", tiny_repo.root, str(shipped), "--name", "shipped")
    pipetask(
        tiny_repo,
        [tiny_repo.collection, "pretrained_models/shipped"],
        TRAIN,
        str(package_root / "pipelines" / "DeepDiscReliability.yaml"),
        *TILES,
        *("-c", "train:hiddenLayers=[8]", "-c", "train:epochs=150", "-c", "train:ensembleSize=2"),
        *("-c", "train:thresholdFolds=2", "-c", "train:minPurity=0.9"),
    )
    package = tmp_path_factory.mktemp("reliability") / "with-reliability.zip"
    run(
        str(BIN / "deepdisc-model"), "reliability", str(shipped), "--repo", tiny_repo.root,
        "--collection", TRAIN, "--version", "test-rel", "--output", str(package),
    )  # fmt: skip
    run(str(BIN / "deepdisc-model"), "ingest", tiny_repo.root, str(package), "--name", "with-reliability")
    pipetask(
        tiny_repo,
        [tiny_repo.collection, "pretrained_models/with-reliability"],
        DETECT,
        str(package_root / "pipelines" / "DeepDisc.yaml"),
        *TILES,
    )
    return package


def _catalogs(repo: TinyRepo, collection: str):
    with Butler.from_config(repo.root) as butler:
        return [butler.get("object_deepdisc", d, collections=collection) for d in repo.data_ids]


def test_training_writes_a_classifier_metrics_and_plot_that_the_package_then_carries(
    tiny_repo: TinyRepo, reliability_run: Path
) -> None:
    with Butler.from_config(tiny_repo.root) as butler:
        data = butler.get("deepdisc_reliability_classifier", collections=TRAIN)
        metrics = butler.get("deepdisc_reliability_metrics", collections=TRAIN)
        plot = butler.getURI("deepdisc_reliability_plot", collections=TRAIN).read()
    classifier = ReliabilityClassifier.from_dict(data)
    assert classifier.bands == tiny_repo.bands and classifier.network_threshold == 0.2
    assert [w.shape[1] for w in classifier.networks[0][0]] == [8, 1] and len(classifier.networks) == 2
    assert 0.0 < classifier.threshold < 1.0
    assert classifier.provenance["threshold_from"].startswith("2-fold out-of-fold")
    assert set(metrics["split"]) == {"training", "validation"}
    assert set(metrics["method"]) == {"candidates", "network", "reliability"}
    # The candidates hold every real detection; a threshold keeps a part of them.
    for split in ("training", "validation"):
        rows = metrics[metrics["split"] == split]
        candidates = rows[(rows["method"] == "candidates")]
        assert (candidates["kept"][candidates["n_real"] > 0] == 1.0).all()
        judged = rows[rows["method"] == "reliability"]
        assert (judged["n_kept_real"] <= candidates["n_kept_real"]).all()
    assert plot.startswith(b"\x89PNG")
    package = ModelPackage.load(reliability_run)
    assert package.version == "test-rel"
    assert [c.to_dict() for c in package.reliability] == [classifier.to_dict()]
    shipped = ModelPackage.load(Path(__file__).parents[1] / "models" / "deepdisc-compact-sim.zip")
    # The rest of the package is kept.
    assert [c.to_dict() for c in package.star_galaxy] == [c.to_dict() for c in shipped.star_galaxy]


def test_detection_keeps_the_candidates_the_classifier_accepts(
    tiny_repo: TinyRepo, reliability_run: Path
) -> None:
    package = ModelPackage.load(reliability_run)
    (classifier,) = package.reliability
    candidates = _catalogs(tiny_repo, TRAIN)
    judged = _catalogs(tiny_repo, DETECT)
    assert np.isnan(vstack(candidates)["reliability"]).all()  # doReliability is off for the candidates
    assert vstack(candidates)["score"].min() >= 0.2
    for before, after in zip(candidates, judged):
        expected = judge_reliability(before, classifier)
        sources = ~np.asarray(after["is_artifact"])
        reliability = np.asarray(after["reliability"])
        assert np.isfinite(reliability[sources]).all() and np.isnan(reliability[~sources]).all()
        trusted = classifier.trusted(np.asarray(after["score"]), np.asarray(after["detection_snr"]))
        assert ((reliability >= classifier.threshold) | trusted)[sources].all()
        kept = expected.keep & np.isfinite(expected.reliability)
        # The same sources, in the same order, with the reliability the candidates had.
        assert sources.sum() == kept.sum()
        assert np.allclose(np.asarray(after["centroid_x"])[sources], np.asarray(before["centroid_x"])[kept])
        assert np.array_equal(reliability[sources], expected.reliability[kept])
    # Sources below the package's own operating point (0.55 on three bands) come in when reliable.
    threshold = package.score_threshold_for(len(tiny_repo.bands))
    scores = np.concatenate([np.asarray(c["score"])[~np.asarray(c["is_artifact"])] for c in judged])
    assert scores.min() < threshold
