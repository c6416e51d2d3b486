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
"""BuildDeepDiscLabelsTask on a tiny simulated repository with exact ("truth") scarlet models.

With exact models and the simulation's own footprint rule (``config/tasks/labels_sim_truth.py``) the labels
must reproduce the truth footprints; the task must also run under a real ``pipetask run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lsst.daf.butler import Butler

from lsst.meas.extensions.deepdisc.butler.conversions import multiband_from_masked_images
from lsst.meas.extensions.deepdisc.butler.labels_io import scarlet_models_from_butler
from lsst.meas.extensions.deepdisc.core.footprints import Footprint, unflatten_spans
from lsst.meas.extensions.deepdisc.core.scarlet_io import ScarletFormatError, ScarletModelData
from lsst.meas.extensions.deepdisc.sim.repo import build_sim_repo
from lsst.meas.extensions.deepdisc.tasks.labels import (
    BuildDeepDiscLabelsConfig,
    BuildDeepDiscLabelsConnections,
    BuildDeepDiscLabelsTask,
)

SIM_TRUTH_CONFIG = Path("config") / "tasks" / "labels_sim_truth.py"
KEEP_META = {"strip_astropy_meta_yaml": False}  # daf_butler strips astropy table metadata by default


@pytest.fixture(scope="module")
def truth_repo(tmp_path_factory: pytest.TempPathFactory):
    """The ``tiny`` preset written with exact models."""
    return build_sim_repo(tmp_path_factory.mktemp("labels") / "repo", preset="tiny", truth_models=True)


def read_patch(butler: Butler, data_id: dict, bands: tuple[str, ...]):
    coadds = {band: butler.get("deep_coadd", {**data_id, "band": band}) for band in bands}
    return (
        multiband_from_masked_images(coadds, bands),
        butler.get("object_scarlet_models", data_id),
        butler.get("object_patch", data_id),
        butler.get("truth_patch", data_id),
        butler.get("sim_metadata", data_id),
    )


def test_labels_from_exact_models_reproduce_the_truth(truth_repo, package_root):
    butler = Butler.from_config(truth_repo.root, collections=truth_repo.collection)
    config = BuildDeepDiscLabelsConfig()
    config.load(str(package_root / SIM_TRUTH_CONFIG))
    config.maxNoDataFraction = 1.0
    task = BuildDeepDiscLabelsTask(config=config)
    n_compared = 0
    blendedness_errors = []
    for data_id in truth_repo.data_ids:
        image, models, objects, truth, metadata = read_patch(butler, data_id, truth_repo.bands)
        # The override file must use the simulation's own truth rule.
        assert config.sigmaThreshold == metadata["truth_threshold_sigma"]
        labels = task.run(image, models, objects, tract=data_id["tract"], patch=data_id["patch"]).labels
        ids = np.asarray(labels["source_id"])
        assert len(ids) == len(set(ids.tolist())) > 20

        # One-to-one by id: every truth object with a footprint has its label, unless it has no class.
        has_footprint = np.asarray(truth["footprint_area"]) > 0
        extendedness = dict(zip(objects["objectId"].tolist(), np.asarray(objects["refExtendedness"])))
        with_class = [i for i in truth["id"][has_footprint].tolist() if np.isfinite(extendedness[i])]
        assert sorted(ids.tolist()) == sorted(with_class)
        assert labels.meta["n_dropped"]["no_class"] == int(has_footprint.sum()) - len(with_class)

        truth_by_id = {int(row["id"]): row for row in truth}
        for row in labels:
            reference = truth_by_id[int(row["source_id"])]
            expected_class = "galaxy" if extendedness[int(row["source_id"])] >= 0.5 else "star"
            assert row["class_name"] == expected_class
            if reference["footprint_area"] < 10:  # a few pixels: one pixel more or less moves the IoU a lot
                continue
            ours = Footprint(unflatten_spans(row["footprint"]))
            theirs = Footprint(unflatten_spans(reference["spans"]))
            assert ours.iou(theirs) > 0.9, (row["source_id"], ours.area, theirs.area)
            n_compared += 1
            if reference["footprint_area"] >= 20:
                blendedness_errors.append(abs(row["blendedness"] - reference["blendedness"]))
    assert n_compared > 100
    # The truth's blendedness also counts the light of objects too faint for a footprint (never modelled),
    # so single values may differ by ~0.1; typical ones agree closely.
    assert np.median(blendedness_errors) < 0.02


def test_scarlet_models_from_either_storage_class(truth_repo):
    butler = Butler.from_config(truth_repo.root, collections=truth_repo.collection)
    models = butler.get("object_scarlet_models", truth_repo.data_ids[0])
    assert scarlet_models_from_butler(models) is models

    class UpstreamLike:
        """What meas_extensions_scarlet's LsstScarletModelData offers: its JSON form."""

        def __init__(self, document: dict) -> None:
            self.document = document

        def as_dict(self) -> dict:
            return self.document

    converted = scarlet_models_from_butler(UpstreamLike(models.as_dict()))
    assert converted == models
    document = models.as_dict()
    # Newer upstream schemas keep the PSFs as typed objects: refused with the reason.
    document["metadata"] = {"bands": list(models.bands), "psf": {"psf_type": "image"}, "model_psf": [1.0]}
    with pytest.raises(ScarletFormatError, match="PSF"):
        scarlet_models_from_butler(UpstreamLike(document))
    with pytest.raises(TypeError, match="LsstScarletModelData"):
        scarlet_models_from_butler(object())
    assert isinstance(converted, ScarletModelData)


def test_config_controls_the_connections():
    config = BuildDeepDiscLabelsConfig()
    connections = BuildDeepDiscLabelsConnections(config=config)
    assert set(connections.inputs) == {"coadds", "scarletModels", "objects"}
    assert set(connections.outputs) == {"labels"}
    assert connections.scarletModels.storageClass == "ScarletModelArchive"
    config.classSource = "reference"
    config.doWriteCoco = True
    config.scarletModelStorageClass = "LsstScarletModelData"
    connections = BuildDeepDiscLabelsConnections(config=config)
    assert set(connections.inputs) == {"coadds", "scarletModels", "objects", "reference"}
    assert set(connections.outputs) == {"labels", "labelsCoco"}
    assert connections.scarletModels.storageClass == "LsstScarletModelData"
    config.sigmaThreshold = -1.0
    with pytest.raises(ValueError, match="sigma_threshold"):
        config.validate()


def test_pipetask_writes_labels_for_every_patch(truth_repo, package_root):
    butler = Butler.from_config(truth_repo.root, collections=truth_repo.collection)
    fractions = {}
    for data_id in truth_repo.data_ids:
        metadata = butler.get("sim_metadata", data_id)
        fractions[data_id["tract"], data_id["patch"]] = metadata["no_data_fraction"]
    # A NO_DATA cut between the patches' fractions: one patch is skipped, with an empty table.
    assert max(fractions.values()) > min(fractions.values()), "the tiny preset should vary NO_DATA"
    cut = (max(fractions.values()) + min(fractions.values())) / 2
    output = "u/test/deepdisc_labels"
    command = [
        str(Path(sys.executable).parent / "pipetask"),
        "run",
        "-b",
        truth_repo.root,
        "-i",
        truth_repo.collection,
        "-o",
        output,
        "-p",
        str(package_root / "pipelines" / "DeepDiscTrain.yaml") + "#labels",
        "-C",
        f"labels:{package_root / SIM_TRUTH_CONFIG}",
        "-c",
        "labels:doWriteCoco=True",
        "-c",
        f"labels:maxNoDataFraction={cut}",
        "-d",
        f"skymap='{truth_repo.skymap}'",
        "--register-dataset-types",
        "-j",
        "1",
    ]
    result = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    butler = Butler.from_config(truth_repo.root, collections=output)
    for data_id in truth_repo.data_ids:
        labels = butler.get("deepdisc_labels", data_id, parameters=KEEP_META)
        coco = butler.get("deepdisc_labels_coco", data_id)
        metadata = butler.get("labels_metadata", data_id)
        assert len(coco["annotations"]) == len(labels) == metadata["labels"]["n_labels"]
        assert {"source_id", "footprint", "class_id", "mag", "blendedness"} <= set(labels.colnames)
        if fractions[(data_id["tract"], data_id["patch"])] > cut:
            assert len(labels) == 0 and "no data" in labels.meta["skipped_reason"]
        else:
            assert len(labels) > 20 and labels.meta["skipped_reason"] == ""
            assert labels["footprint"][0].dtype == np.int32
            assert np.array_equal(
                labels["footprint_area"],
                [Footprint(unflatten_spans(cell)).area for cell in labels["footprint"]],
            )
