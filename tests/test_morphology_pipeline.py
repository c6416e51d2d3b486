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

"""Integration: the morphology pipeline with real pipetask processes on the tiny repository.

The shipped detection model finds the galaxies; a labelled catalog with positions and a class column is put
into the Butler as a dataset with no dimensions (the documented way to bring real labels); `labels` matches
it, `train` trains a small classifier for two epochs, `morphology` classifies, and every output is checked
against the detection catalog.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table, vstack
from lsst.daf.butler import Butler, CollectionType, DatasetType

from lsst.meas.extensions.deepdisc.butler.tables import to_arrow
from lsst.meas.extensions.deepdisc.core.morphology import MorphologyPackage
from lsst.meas.extensions.deepdisc.core.photometry import njy_to_mag

from pipetask_helpers import BIN, pipetask, run
from sim_fixtures import TinyRepo

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tiny_repo_pipetask")]

DETECT = "u/test/morph_detect"
LABELS_RUN = "refcat/morphology"
TRAIN = "u/test/morph_train"
CLASSIFY = "u/test/morph_classify"


@pytest.fixture(scope="module")
def morphology_run(tiny_repo: TinyRepo, package_root: Path) -> TinyRepo:
    pipelines = package_root / "pipelines"
    run(
        str(BIN / "deepdisc-model"),
        "ingest",
        tiny_repo.root,
        str(package_root / "models" / "deepdisc-compact-sim.zip"),
        "--name",
        "shipped",
    )
    pipetask(
        tiny_repo,
        [tiny_repo.collection, "pretrained_models/shipped"],
        DETECT,
        str(pipelines / "DeepDisc.yaml"),
        "-c",
        "detect:tileSize=256",
        "-c",
        "detect:tileOverlap=64",
    )
    # A survey-wide labelled catalog: positions and a class column, no dimensions.
    with Butler.from_config(tiny_repo.root, writeable=True) as butler:
        truth = vstack(
            [butler.get("truth_patch", d, collections=tiny_repo.collection) for d in tiny_repo.data_ids]
        )
        galaxies = truth[~np.asarray(truth["is_star"])]
        median = np.median(galaxies["size"])
        reference = Table()
        reference["ra_deg"] = galaxies["ra"]
        reference["dec_deg"] = galaxies["dec"]
        reference["hubble"] = np.where(galaxies["size"] > median, "big", "small")
        reference["mag_i"] = galaxies["mag_i"]
        dataset_type = DatasetType("morphology_reference", (), "ArrowAstropy", universe=butler.dimensions)
        butler.registry.registerDatasetType(dataset_type)
        butler.collections.register(LABELS_RUN, CollectionType.RUN)
        butler.put(to_arrow(reference), dataset_type, run=LABELS_RUN)
    common = [
        "-c",
        "labels:referenceDimensions=none",
        "-c",
        "labels:connections.referenceName=morphology_reference",
        "-c",
        "labels:raColumn=ra_deg",
        "-c",
        "labels:decColumn=dec_deg",
        "-c",
        "labels:classColumn=hubble",
        "-c",
        "labels:extraColumns=[mag_i]",
        "-c",
        "train:bands=[g,r,i]",
        "-c",
        "train:classNames=[small,big]",
        "-c",
        "train:epochs=2",
        "-c",
        "train:cutoutSize=32",
        "-c",
        "train:architectureParams={width: 8}",
        "-c",
        "train:maxMagnitude=27",
        "-c",
        "train:packageName=tiny-morphology",
    ]
    pipetask(
        tiny_repo,
        [DETECT, LABELS_RUN, tiny_repo.collection],
        TRAIN,
        f"{pipelines / 'DeepDiscMorphology.yaml'}#training",
        *common,
    )
    pipetask(
        tiny_repo,
        [TRAIN, DETECT, tiny_repo.collection],
        CLASSIFY,
        f"{pipelines / 'DeepDiscMorphology.yaml'}#morphology",
        "-c",
        "morphology:maxMagnitude=25",
    )
    return tiny_repo


def test_training_writes_a_package_history_and_plot(morphology_run: TinyRepo) -> None:
    with Butler.from_config(morphology_run.root, collections=[TRAIN]) as butler:
        package = butler.get("deepdisc_morphology_model")
        assert isinstance(package, MorphologyPackage)
        assert package.bands == ["g", "r", "i"] and package.class_names == ["small", "big"]
        assert package.cutout.size == 32
        assert package.metrics["validation_n"] > 0 and 0 <= package.metrics["validation_top1"] <= 1
        history = butler.get("deepdisc_morphology_history")
        assert list(history["epoch"]) == [1, 2]
        assert butler.query_datasets("deepdisc_morphology_confusion_plot")
        for data_id in morphology_run.data_ids:
            labels = butler.get("deepdisc_morphology_labels", data_id)
            catalog = butler.get("object_deepdisc", data_id)
            assert len(labels) > 0
            assert set(np.asarray(labels["id"]).tolist()) <= set(np.asarray(catalog["id"]).tolist())
            assert set(np.asarray(labels["label"]).astype(str)) <= {"small", "big"}
            assert np.all(np.asarray(labels["match_distance"]) <= 0.6)
            assert len(set(np.asarray(labels["id"]).tolist())) == len(labels)


def test_classifications_join_the_detection_catalog(morphology_run: TinyRepo) -> None:
    with Butler.from_config(morphology_run.root, collections=[CLASSIFY]) as butler:
        total = 0
        for data_id in morphology_run.data_ids:
            morphology = butler.get("object_deepdisc_morphology", data_id)
            catalog = butler.get("object_deepdisc", data_id)
            rows = {int(i): k for k, i in enumerate(np.asarray(catalog["id"]))}
            total += len(morphology)
            for row in morphology:
                detection = catalog[rows[int(row["id"])]]
                assert detection["class_name"] == "galaxy"
                assert njy_to_mag(detection["i_footprintFlux"]) <= 25.0
            probabilities = np.stack([morphology["morph_prob_small"], morphology["morph_prob_big"]], axis=1)
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
            expected = np.where(probabilities[:, 0] >= probabilities[:, 1], "small", "big")
            assert list(np.asarray(morphology["morph_class"]).astype(str)) == list(expected)
            # Every bright galaxy of the catalog got a row.
            flux = np.asarray(catalog["i_footprintFlux"], dtype=float)
            bright = (np.asarray(catalog["class_name"]) == "galaxy") & (flux > 10 ** (-0.4 * (25.0 - 31.4)))
            bright &= np.asarray(catalog["footprint_area"]) >= 20
            assert set(np.asarray(catalog["id"])[bright].tolist()) == set(
                np.asarray(morphology["id"]).tolist()
            )
        assert total > 0


def test_detection_with_the_morphology_subtask_gives_the_same_table(
    morphology_run: TinyRepo, package_root: Path
) -> None:
    output = "u/test/morph_in_detect"
    pipetask(
        morphology_run,
        [TRAIN, morphology_run.collection, "pretrained_models/shipped"],
        output,
        str(package_root / "pipelines" / "DeepDisc.yaml"),
        "-c",
        "detect:tileSize=256",
        "-c",
        "detect:tileOverlap=64",
        "-c",
        "detect:doMorphology=True",
        "-c",
        "detect:morphology.maxMagnitude=25",
    )
    with Butler.from_config(morphology_run.root) as butler:
        for data_id in morphology_run.data_ids:
            standalone = butler.get("object_deepdisc_morphology", data_id, collections=CLASSIFY)
            in_detect = butler.get("object_deepdisc_morphology", data_id, collections=output)
            assert list(in_detect["id"]) == list(standalone["id"])
            assert list(in_detect["morph_class"]) == list(standalone["morph_class"])
            np.testing.assert_allclose(in_detect["morph_prob_big"], standalone["morph_prob_big"], atol=1e-5)


def test_detection_refuses_a_morphology_model_whose_bands_it_lacks(
    morphology_run: TinyRepo, package_root: Path, tmp_path: Path
) -> None:
    from lsst.meas.extensions.deepdisc.core.morphology import CutoutConfig, build_classifier

    classifier = {"architecture": "compact_cnn", "in_channels": 5, "num_classes": 2, "width": 8}
    package = MorphologyPackage(
        name="needs-z",
        version="1",
        classifier=classifier,
        state_dict=build_classifier(classifier).state_dict(),
        bands=["g", "r", "z"],
        class_names=["small", "big"],
        cutout=CutoutConfig(size=32),
    )
    path = package.save(tmp_path / "needs-z.zip")
    run(str(BIN / "deepdisc-model"), "ingest", morphology_run.root, str(path))
    output = "u/test/morph_needs_z"
    result = pipetask(
        morphology_run,
        [morphology_run.collection, "pretrained_models/shipped", "pretrained_models/needs-z"],
        output,
        str(package_root / "pipelines" / "DeepDisc.yaml"),
        "-c",
        "detect:tileSize=256",
        "-c",
        "detect:tileOverlap=64",
        "-c",
        "detect:doMorphology=True",
        check=False,
    )
    assert result.returncode != 0
    assert "needs band(s) ['z']" in result.stdout + result.stderr
    with Butler.from_config(morphology_run.root) as butler:
        assert not butler.query_datasets("object_deepdisc", collections=output, explain=False)
