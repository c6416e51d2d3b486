"""Integration: training the star-galaxy classifier and detecting with it, through real pipetask processes.

`DeepDiscStarGalaxy.yaml` detects with the shipped model (network classes) and trains a small classifier on
a survey-wide labelled catalog put into the Butler (no dimensions, the documented way for real labels; the
tiny repository has few stars, so its most compact galaxies are labelled point-like too);
``deepdisc-model star-galaxy`` puts it into a new version of the package; the detection pipeline then sets
the classes of star and galaxy rows from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table, vstack
from lsst.daf.butler import Butler, CollectionType, DatasetType

from lsst.meas.extensions.deepdisc.butler.tables import to_arrow
from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
from lsst.meas.extensions.deepdisc.core.star_galaxy import StarGalaxyClassifier

from pipetask_helpers import BIN, pipetask, run
from sim_fixtures import TinyRepo

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tiny_repo_pipetask")]

TRAIN = "u/test/star_galaxy_train"
DETECT = "u/test/star_galaxy_detect"
REFERENCE_RUN = "refcat/stars"
TILES = ["-c", "detect:tileSize=256", "-c", "detect:tileOverlap=64"]


@pytest.fixture(scope="module")
def star_galaxy_run(
    tiny_repo: TinyRepo, package_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    shipped = package_root / "models" / "deepdisc-compact-sim.zip"
    run(str(BIN / "deepdisc-model"), "ingest", tiny_repo.root, str(shipped), "--name", "shipped")
    with Butler.from_config(tiny_repo.root, writeable=True) as butler:
        truth = vstack(
            [butler.get("truth_patch", d, collections=tiny_repo.collection) for d in tiny_repo.data_ids]
        )
        reference = Table()
        reference["ra_deg"] = truth["ra"]
        reference["dec_deg"] = truth["dec"]
        size = np.asarray(truth["size"], dtype=float)
        reference["point_like"] = np.asarray(truth["is_star"]) | (size < np.nanquantile(size, 0.3))
        reference["mag_i"] = truth["mag_i"]
        dataset_type = DatasetType("star_reference", (), "ArrowAstropy", universe=butler.dimensions)
        butler.registry.registerDatasetType(dataset_type)
        butler.collections.register(REFERENCE_RUN, CollectionType.RUN)
        butler.put(to_arrow(reference), dataset_type, run=REFERENCE_RUN)
    pipetask(
        tiny_repo,
        [tiny_repo.collection, REFERENCE_RUN, "pretrained_models/shipped"],
        TRAIN,
        str(package_root / "pipelines" / "DeepDiscStarGalaxy.yaml"),
        *TILES,
        *("-c", "train:hiddenLayers=[8]", "-c", "train:epochs=200", "-c", "train:ensembleSize=2"),
        *("-c", "train:maxMag=27", "-c", "train:thresholdMaxMag=27", "-c", "train:referenceDimensions=none"),
        *("-c", "train:connections.referenceName=star_reference", "-c", "train:starColumn=point_like"),
        *("-c", "train:raColumn=ra_deg", "-c", "train:decColumn=dec_deg"),
    )
    package = tmp_path_factory.mktemp("star_galaxy") / "with-classifier.zip"
    run(
        str(BIN / "deepdisc-model"), "star-galaxy", str(shipped), "--repo", tiny_repo.root,
        "--collection", TRAIN, "--version", "test-sg", "--output", str(package),
    )  # fmt: skip
    run(str(BIN / "deepdisc-model"), "ingest", tiny_repo.root, str(package), "--name", "with-classifier")
    pipetask(
        tiny_repo,
        [tiny_repo.collection, "pretrained_models/with-classifier"],
        DETECT,
        str(package_root / "pipelines" / "DeepDisc.yaml"),
        *TILES,
    )
    return package


def _catalogs(repo: TinyRepo, collection: str):
    with Butler.from_config(repo.root) as butler:
        return [butler.get("object_deepdisc", d, collections=collection) for d in repo.data_ids]


def test_training_writes_a_classifier_and_metrics_that_the_package_then_carries(
    tiny_repo: TinyRepo, star_galaxy_run: Path
) -> None:
    with Butler.from_config(tiny_repo.root) as butler:
        data = butler.get("deepdisc_star_galaxy_classifier", collections=TRAIN)
        metrics = butler.get("deepdisc_star_galaxy_metrics", collections=TRAIN)
        plot = butler.getURI("deepdisc_star_galaxy_plot", collections=TRAIN).read()
    classifier = StarGalaxyClassifier.from_dict(data)
    assert classifier.bands == tiny_repo.bands  # the catalogs' bands by default
    assert len(classifier.networks) == 2
    assert [w.shape[1] for w in classifier.networks[0][0]] == [8, 1]
    assert set(metrics["split"]) == {"training", "validation"}
    assert plot.startswith(b"\x89PNG")  # the excess-magnitude figure (Plot datasets are read as files)
    assert metrics["n_stars"].sum() > 0 and metrics["n_galaxies"].sum() > 0
    package = ModelPackage.load(star_galaxy_run)
    assert package.version == "test-sg"
    assert [c.to_dict() for c in package.star_galaxy] == [classifier.to_dict()]


def test_detection_classes_follow_the_packaged_classifier(tiny_repo: TinyRepo, star_galaxy_run: Path) -> None:
    network = vstack(_catalogs(tiny_repo, TRAIN))
    refined = vstack(_catalogs(tiny_repo, DETECT))
    (classifier,) = ModelPackage.load(star_galaxy_run).star_galaxy
    threshold = classifier.threshold
    # Same detections and network outputs; only the star and galaxy classes may differ.
    assert np.array_equal(network["id"], refined["id"])
    assert np.array_equal(network["prob_star"], refined["prob_star"])
    assert np.isnan(network["star_galaxy_prob"]).all()  # doStarGalaxy is off in DeepDiscStarGalaxy.yaml
    sources = ~np.asarray(refined["is_artifact"])
    probability = np.asarray(refined["star_galaxy_prob"])[sources]
    assert np.isfinite(probability).all()
    names = np.asarray(refined["class_name"], dtype=str)[sources]
    assert np.array_equal(names == "star", probability >= threshold)
    assert set(names) <= {"star", "galaxy"}
    assert np.isnan(np.asarray(refined["star_galaxy_prob"])[~sources]).all()
    # PSF photometry is measured wherever half of the PSF lies on valid pixels: all but edge and NO_DATA rows.
    near_missing = np.asarray(refined["flag_patch_edge"]) | np.asarray(refined["flag_nodata"])
    for band in tiny_repo.bands:
        measured = np.isfinite(refined[f"{band}_psfFlux"])
        assert measured.mean() > 0.9 and near_missing[~measured].all()
