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
"""DeepDiscTrainTask: split, examples, checkpoint keys, in-process resume, and real pipetask runs."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from lsst.pex.config import FieldValidationError

from lsst.meas.extensions.deepdisc.core.footprints import flatten_spans, mask_to_spans
from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
from lsst.meas.extensions.deepdisc.core.multiband import MissingBandError, MultibandImage
from lsst.meas.extensions.deepdisc.core.training import LAST_CHECKPOINT_FILE
from lsst.meas.extensions.deepdisc.core.training_data import InstanceLabel, TrainingExample
from lsst.meas.extensions.deepdisc.tasks.train import (
    DeepDiscTrainConfig,
    DeepDiscTrainTask,
    choose_split,
    output_collection_of_run,
    parse_patch_spec,
)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
SHORT_CONFIG = PACKAGE_ROOT / "config" / "tasks" / "train_cpu_short.py"
PIPETASK = Path(sys.executable).with_name("pipetask")
BANDS = ("g", "r", "i")
# lsst.images resolves its schema URL through lsst.resources' HTTP support when it reads a coadd.
needs_requests = pytest.mark.skipif(
    importlib.util.find_spec("requests") is None,
    reason="reading lsst.images files needs `requests` (lsst-resources HTTP support), not installed",
)


# --------------------------------------------------------------------------------------- split / names


def test_patch_specs_parse_and_bad_ones_are_named() -> None:
    assert parse_patch_spec("9813:40") == (9813, 40)
    assert parse_patch_spec(" 7 ") == (None, 7)
    for bad in ("a:b", "1:2:3", "", "-1"):
        with pytest.raises(ValueError, match="patch"):
            parse_patch_spec(bad)


def test_fraction_split_is_deterministic_and_independent_of_input_order() -> None:
    keys = [(0, patch) for patch in range(10)] + [(1, patch) for patch in range(5)]
    train, val = choose_split(keys, validation_fraction=0.2, seed=3)
    assert len(val) == 3 and len(train) == 12
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(keys)
    assert (train, val) == choose_split(list(reversed(keys)), validation_fraction=0.2, seed=3)
    other_seeds = {tuple(choose_split(keys, validation_fraction=0.2, seed=seed)[1]) for seed in range(8)}
    assert len(other_seeds) > 1, "the seed must change the draw"
    # Two patches and a positive fraction: one each; a fraction of 0: no validation.
    assert choose_split([(0, 0), (0, 1)], validation_fraction=0.1, seed=0)[1] in ([(0, 0)], [(0, 1)])
    assert choose_split([(0, 0), (0, 1)], validation_fraction=0.0) == ([(0, 0), (0, 1)], [])
    assert choose_split([(0, 5)], validation_fraction=0.5) == ([(0, 5)], [])


def test_explicit_patches_select_by_tract_and_patch() -> None:
    keys = [(0, 1), (0, 2), (1, 1), (1, 2)]
    train, val = choose_split(keys, validation_patches=["1"])
    assert val == [(0, 1), (1, 1)] and train == [(0, 2), (1, 2)]
    train, val = choose_split(keys, train_patches=["0:1", "0:2"], validation_patches=["1:2"])
    assert train == [(0, 1), (0, 2)] and val == [(1, 2)]
    # Only training patches given: validation is drawn from the others.
    train, val = choose_split(keys, train_patches=["0:1"], validation_fraction=0.25, seed=1)
    assert train == [(0, 1)] and len(val) == 1 and val[0] != (0, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"validation_patches": ["3:9"]}, "no labels for it"),
        ({"train_patches": ["0:1"], "validation_patches": ["1"]}, "both the training and validation"),
        ({"validation_patches": ["0:1", "0:2"]}, "no patch is left for training"),
        ({"validation_fraction": 1.0}, r"\[0, 1\)"),
    ],
)
def test_bad_splits_are_refused_with_the_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_split([(0, 1), (0, 2)], **kwargs)


def test_output_collection_strips_only_the_pipetask_timestamp() -> None:
    assert output_collection_of_run("u/me/train/20261121T124653Z") == "u/me/train"
    assert output_collection_of_run("u/me/train") == "u/me/train"
    assert output_collection_of_run("u/me/20261121T124653Z/x") == "u/me/20261121T124653Z/x"


# ---------------------------------------------------------------------------------------------- config


def short_config(**changes: object) -> DeepDiscTrainConfig:
    """The CPU override file, plus changes."""
    config = DeepDiscTrainConfig()
    config.load(str(SHORT_CONFIG))
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def test_short_cpu_override_file_is_valid_and_short() -> None:
    config = short_config()
    config.validate()
    training = config.training_config(n_train_examples=4)
    assert training.total_iterations <= 60
    assert training.device == "cpu" and not training.amp


def test_epoch_schedule_converts_with_the_training_set_size() -> None:
    config = DeepDiscTrainConfig()  # DeepDISC's schedule in epochs.
    config.validate()
    training = config.training_config(n_train_examples=10)  # batch 4 -> 3 iterations per epoch
    assert (training.heads_iterations, training.full_iterations) == (45, 105)
    assert training.lr_steps == (30, 60, 90)
    assert training.eval_period == training.checkpoint_period == 3
    assert training.crop_size == 0.5 and training.grad_clip == 1.0
    config.cropFraction, config.cropSize, config.gradClip = 0.0, 96, 0.0
    training = config.training_config(n_train_examples=10)
    assert training.crop_size == 96 and training.grad_clip is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scalingName": "nope"}, "unknown scaling"),
        ({"cropSize": 64}, "not both"),
        ({"scheduleUnit": "iteration", "headsLength": 2.5}, "whole number"),
        ({"pixelMean": [0.1, 0.2]}, "one value per band"),
        ({"bands": ["g", "r"], "pixelStd": [1.0, 0.0]}, "std positive"),
        ({"validationPatches": ["x:y"]}, "TRACT:PATCH"),
        ({"device": "gpu0"}, "device"),
        ({"headsLr": -1.0}, "heads_lr"),
        ({"scalingParams": {"minimum": "[0, 1"}}, "YAML"),
        ({"classNames": ["star", "star"]}, "unique"),
        ({"artifactBinning": 4}, "needs artifactRate"),
    ],
)
def test_inconsistent_config_is_refused(changes: dict, message: str) -> None:
    config = DeepDiscTrainConfig()
    for name, value in changes.items():
        setattr(config, name, value)
    with pytest.raises(FieldValidationError, match=message):
        config.validate()


def test_scaling_params_accept_scalars_and_yaml_lists() -> None:
    config = DeepDiscTrainConfig()
    config.scalingParams = {"Q": 8, "stretch": 0.4, "minimum": "[0.0, 0.1, 0.2]"}
    spec = config.scaling_spec()
    assert spec.name == "lupton"
    assert spec.params == {"Q": 8, "stretch": 0.4, "minimum": [0.0, 0.1, 0.2]}


# --------------------------------------------------------------------------------------------- examples


def blob_example(seed: int, size: int = 64, n_sources: int = 3) -> TrainingExample:
    """Bright Gaussian blobs on faint noise; narrow ones are stars (class 0), wide ones galaxies (1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0.0, 0.02, (len(BANDS), size, size)).astype(np.float32)
    instances = []
    for index in range(n_sources):
        x, y = rng.uniform(12, size - 12, 2)
        sigma = 1.5 if index % 2 == 0 else 4.0
        profile = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        image += profile.astype(np.float32)
        instances.append(InstanceLabel(mask_to_spans(profile > 0.1), class_id=index % 2, source_id=index + 1))
    return TrainingExample(image, instances, f"blobs-{seed}", BANDS)


def patch_with_labels(class_names: list[str]) -> tuple[MultibandImage, Table]:
    """A 96x96 patch at xy0 (1000, 2000) with three square sources and their label table."""
    height = width = 96
    x0, y0 = 1000, 2000
    image = np.zeros((len(BANDS), height, width), dtype=np.float32)
    table = Table()
    footprints, names = [], []
    for index, (cx, cy) in enumerate([(20, 20), (70, 30), (40, 75)]):
        mask = np.zeros((height, width), dtype=bool)
        mask[cy - 4 : cy + 5, cx - 4 : cx + 5] = True
        image[:, mask] = 100.0 * (index + 1)
        footprints.append(flatten_spans(mask_to_spans(mask, xy0=(x0, y0))))
        names.append(class_names[index % len(class_names)])
    table["source_id"] = np.arange(1, 4, dtype=np.int64)
    table["class_name"] = names
    table["class_id"] = np.zeros(3, dtype=np.int32)  # Deliberately stale: the task maps by name.
    column = np.empty(3, dtype=object)
    column[:] = footprints
    table["footprint"] = column
    mb = MultibandImage(
        bands=BANDS,
        image=image,
        variance=np.ones_like(image),
        mask=np.zeros(image.shape, dtype=np.int32),
        xy0=(x0, y0),
    )
    return mb, table


def test_examples_map_classes_by_name_and_keep_parent_geometry() -> None:
    task = DeepDiscTrainTask(config=short_config(classNames=["galaxy", "star"], tileSize=64))
    image, labels = patch_with_labels(["star", "galaxy"])
    examples = task.make_examples(image, labels, tract=3, patch=7)
    assert examples and all(example.example_id.startswith("t3_p7_") for example in examples)
    by_source = {label.source_id: label for example in examples for label in example.instances}
    assert set(by_source) == {1, 2, 3}
    # "star" is class 1 and "galaxy" class 0 in this task's classNames.
    assert [by_source[source].class_id for source in (1, 2, 3)] == [1, 0, 1]
    assert all(label.area == 81 for label in by_source.values())


def test_binned_examples_cover_the_patch_with_its_bright_labels_binned_and_say_so() -> None:
    names = ["star", "galaxy", "artifact_ghost_bright", "artifact_ghost_faint", "artifact_rays"]
    config = short_config(
        classNames=names, tileSize=64, artifactRate=0.5, artifactBinning=4, scalingName="asinh_per_band"
    )
    task = DeepDiscTrainTask(config=config)
    image, labels = patch_with_labels(["star", "galaxy"])
    labels["mag"] = [17.0, 21.0, 17.5]  # Source 2 is fainter than binnedLabelMagnitude (18).
    examples = task.make_binned_examples(image, labels, tract=3, patch=7)
    # 96 px binned 4x4: one 24 px example with the bright sources, their 9x9 squares shrunk to about 2x2.
    assert len(examples) == 1
    (example,) = examples
    assert example.example_id.startswith("t3_p7_bin4_") and example.metadata["binning"] == 4
    assert example.image.shape == (len(BANDS), 24, 24)
    assert sorted(label.source_id for label in example.instances) == [1, 3]
    assert all(1 <= label.area <= 9 for label in example.instances)
    # Binned examples are cached under a key of their own.
    refs = {"labels": "a", "g": "b"}
    assert task.example_cache_key(refs, binning=True) != task.example_cache_key(refs)


def test_unknown_label_classes_are_refused() -> None:
    task = DeepDiscTrainTask(config=short_config())
    image, labels = patch_with_labels(["star", "artifact"])
    with pytest.raises(ValueError, match="artifact"):
        task.make_examples(image, labels, tract=0, patch=1)


def test_bands_default_to_the_common_ones_in_wavelength_order() -> None:
    task = DeepDiscTrainTask(config=short_config())
    available = {(0, 1): ["i", "g", "z", "r"], (0, 2): ["r", "i", "g"]}
    assert task.select_bands(available) == ["g", "r", "i"]
    task = DeepDiscTrainTask(config=short_config(bands=["i", "z"]))
    with pytest.raises(MissingBandError, match=r"0:2.*\['z'\]"):
        task.select_bands(available)


def test_pixel_statistics_use_valid_pixels_of_training_examples_only() -> None:
    task = DeepDiscTrainTask(config=short_config())
    image = np.stack([np.full((4, 4), 2.0), np.arange(16.0).reshape(4, 4), np.zeros((4, 4))]).astype(
        np.float32
    )
    valid = np.ones((4, 4), dtype=bool)
    valid[0] = False  # Values 0..3 of band 1 do not count.
    spans = mask_to_spans(np.eye(4, dtype=bool))
    example = TrainingExample(image, [InstanceLabel(spans, 0)], "e", BANDS, valid=valid)
    mean, std = task.pixel_statistics([example])
    assert mean == pytest.approx([2.0, np.arange(4, 16).mean(), 0.0])
    assert std == pytest.approx([1.0, np.arange(4, 16).std(), 1.0])  # Constant bands get std 1.
    task = DeepDiscTrainTask(config=short_config(bands=list(BANDS), pixelMean=[0.0, 0.0, 0.0]))
    assert task.pixel_statistics([example])[0] == [0.0, 0.0, 0.0]


# -------------------------------------------------------------------------------- checkpoint directory


def test_checkpoint_directory_is_keyed_by_collection_settings_and_data(tmp_path: Path) -> None:
    train, val = [blob_example(0), blob_example(1)], [blob_example(2)]

    def directory(run: str = "u/me/train/20260101T000000Z", data=(train, val), **changes: object) -> Path:
        task = DeepDiscTrainTask(config=short_config(checkpointRoot=str(tmp_path), **changes))
        return task.checkpoint_directory(run, *data)

    reference = directory()
    assert reference.parent == tmp_path / "u" / "me" / "train"
    # Same -o (a new timestamped RUN, or --extend-run) and settings that do not change the training: same.
    assert directory("u/me/train/20260202T101010Z") == reference
    assert directory("u/me/train") == reference
    assert directory(stopAfter=5, device="auto", logPeriod=1, modelName="x", keepCheckpoints=0) == reference
    # Anything that changes what is trained: another directory.
    assert directory(headsLr=0.5) != reference
    assert directory(seed=1) != reference
    assert directory(data=(train, [blob_example(3)])) != reference
    assert directory(data=(val, train)) != reference
    assert directory("u/other/train/20260101T000000Z").parent == tmp_path / "u" / "other" / "train"
    explicit = tmp_path / "mine"
    assert directory(checkpointDir=str(explicit)) == explicit


# ------------------------------------------------------------------------------- in-process training


@pytest.fixture(scope="module")
def blob_data() -> tuple[list[TrainingExample], list[TrainingExample]]:
    return [blob_example(seed) for seed in range(3)], [blob_example(10)]


def tiny_schedule(**changes: object) -> DeepDiscTrainConfig:
    config = short_config(
        headsLength=2, fullLength=3, lrSteps=[], evalPeriod=2, checkpointPeriod=2, batchSize=1, logPeriod=1
    )
    for name, value in changes.items():
        setattr(config, name, value)
    config.validate()
    return config


def test_run_stops_then_resumes_at_the_saved_iteration(blob_data, tmp_path: Path, caplog) -> None:
    train, val = blob_data
    task = DeepDiscTrainTask(config=tiny_schedule())
    checkpoints = tmp_path / "checkpoints"
    with caplog.at_level(logging.INFO, logger=task.log.name):
        first = task.run(train, val, checkpoint_dir=checkpoints, provenance={"note": "x"}, stop_after=3)
    assert first.interrupted and first.model is None
    assert first.iterations_done == 3 and first.total_iterations == 5
    assert json.loads((checkpoints / LAST_CHECKPOINT_FILE).read_text())["iteration"] == 3
    messages = [record.getMessage() for record in caplog.records if record.name == task.log.name]
    assert any("it/s" in message and "ETA" in message for message in messages), (
        "progress goes to the task log"
    )

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=task.log.name):
        second = DeepDiscTrainTask(config=tiny_schedule(stopAfter=0)).run(
            train, val, checkpoint_dir=checkpoints, provenance={"note": "x"}
        )
    assert not second.interrupted
    assert second.start_iteration == 3 and second.iterations_done == 5
    assert any("at iteration 3" in record.getMessage() for record in caplog.records)
    history = second.trainingHistory
    assert list(history["iteration"]) == [2, 4, 5]
    assert history["is_best"].sum() == 1
    assert history["n_truth"].dtype.kind == "i" and history["train_loss"].dtype.kind == "f"

    package: ModelPackage = second.model
    assert package.bands == BANDS and package.class_names == ("star", "galaxy")
    assert package.name == "compact-R18-FPN-gri"
    assert package.provenance["resumed_from_iteration"] == 3
    assert package.provenance["iterations"] == 5 and package.provenance["note"] == "x"
    assert package.provenance["config"]["headsLength"] == 2.0
    mean = np.mean([example.image.mean(axis=(1, 2)) for example in train], axis=0)
    assert package.pixel_mean == pytest.approx(mean, rel=1e-5)
    # The package round-trips and runs: what the detection task will do with it.
    reloaded = ModelPackage.from_bytes(package.to_bytes())
    model = reloaded.build_model("cpu")
    import torch

    with torch.no_grad():
        outputs = model([{"image": torch.from_numpy(val[0].image), "height": 64, "width": 64}])
    assert "instances" in outputs[0]
    width, height = second.trainingPlot.get_size_inches() * second.trainingPlot.dpi
    assert width > 400 and height > 200


def test_history_table_handles_missing_values() -> None:
    from lsst.meas.extensions.deepdisc.core.training import TrainingConfig, make_history_table

    history = [
        {"iteration": 5, "stage": 1, "train_loss": 2.0, "ap": None, "n_truth": 4},
        {"iteration": 10, "stage": 2, "train_loss": 1.0, "ap": 0.25, "n_truth": 4},
    ]
    table = make_history_table(history, 10, TrainingConfig(5, 5, best_metric="ap"))
    assert table["iteration"].dtype == np.int64 and table["n_truth"].dtype == np.int64
    assert math.isnan(table["ap"][0]) and table["ap"][1] == 0.25
    assert list(table["is_best"]) == [False, True]
    assert table.meta["best_metric_name"] == "ap"


def test_pipelines_connect_training_output_to_detection_prerequisite() -> None:
    from lsst.pipe.base import Pipeline

    train_graph = Pipeline.from_uri(str(PACKAGE_ROOT / "pipelines" / "DeepDiscTrain.yaml")).to_graph()
    detect_graph = Pipeline.from_uri(str(PACKAGE_ROOT / "pipelines" / "DeepDisc.yaml")).to_graph()
    train_node = train_graph.tasks["train"]
    assert train_node.raw_dimensions == frozenset(), "one quantum over every selected patch"
    produced = {edge.parent_dataset_type_name: edge for edge in train_node.outputs.values()}
    model_edge = produced["deepdisc_model"]
    prerequisite = detect_graph.tasks["detect"].prerequisite_inputs["model"]
    assert prerequisite.parent_dataset_type_name == model_edge.parent_dataset_type_name
    assert model_edge.storage_class_name == prerequisite.storage_class_name == "DeepDiscModelPackage"
    consumed = {edge.parent_dataset_type_name for edge in train_node.inputs.values()}
    labels_outputs = {edge.parent_dataset_type_name for edge in train_graph.tasks["labels"].outputs.values()}
    assert "deepdisc_labels" in consumed & labels_outputs


# ------------------------------------------------------------------------------------ pipetask runs


def pipetask(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PIPETASK), "run", "--register-dataset-types", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def training_runs(tiny_repo, tmp_path_factory):
    """Copy the tiny repository, run labels+train with stopAfter (fails), then again (resumes)."""
    root = tmp_path_factory.mktemp("train_task") / "repo"
    shutil.copytree(tiny_repo.root, root)
    checkpoint_root = root.parent / "checkpoints"
    output = "u/test/train"
    command = [
        "-b",
        str(root),
        "-i",
        tiny_repo.collection,
        "-o",
        output,
        "-p",
        str(PACKAGE_ROOT / "pipelines" / "DeepDiscTrain.yaml"),
        "-C",
        f"train:{SHORT_CONFIG}",
        "-c",
        f"train:checkpointRoot={checkpoint_root}",
        "-d",
        f"skymap='{tiny_repo.skymap}'",
    ]
    stopped = pipetask(*command, "-c", "train:stopAfter=15")
    pointer_files = sorted(checkpoint_root.glob(f"{output}/*/{LAST_CHECKPOINT_FILE}"))
    stopped_at = [json.loads(path.read_text())["iteration"] for path in pointer_files]
    resumed = pipetask(*command)
    return {
        "root": root,
        "output": output,
        "stopped": stopped,
        "stopped_at": stopped_at,
        "resumed": resumed,
        "checkpoint_root": checkpoint_root,
    }


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("train_task_pipetask")  # One worker runs the shared training fixture.
@needs_requests
def test_pipetask_stop_then_rerun_resumes_and_writes_the_model(training_runs) -> None:
    from lsst.daf.butler import Butler

    stopped, resumed = training_runs["stopped"], training_runs["resumed"]
    assert stopped.returncode != 0, "stopAfter must fail the quantum"
    assert "TrainingInterruptedError" in stopped.stderr + stopped.stdout
    assert training_runs["stopped_at"] == [15]
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming training from the checkpoint at iteration 15" in resumed.stderr + resumed.stdout

    butler = Butler.from_config(str(training_runs["root"]), collections=[training_runs["output"]])
    package = butler.get("deepdisc_model")
    assert isinstance(package, ModelPackage)
    assert package.bands == BANDS and package.provenance["resumed_from_iteration"] == 15
    assert package.provenance["iterations"] == 40
    assert package.provenance["train_patches"] and package.provenance["validation_patches"]
    assert set(package.provenance["train_patches"]).isdisjoint(package.provenance["validation_patches"])

    # The operating point was chosen on the validation patches and recorded with its curve.
    point = package.provenance["operating_point"]
    assert package.score_threshold == point["threshold"] and point["rule"] == "best_f1"
    assert [entry["threshold"] for entry in point["curve"]] == sorted(
        entry["threshold"] for entry in point["curve"]
    )
    # Examples are cached per patch (this re-run remade the labels, new datasets, so it built new ones).
    assert "Example cache" in resumed.stderr + resumed.stdout
    assert list((training_runs["checkpoint_root"] / "examples").glob("examples_*.npz"))

    history = butler.get("deepdisc_training_history")
    assert list(history["iteration"]) == [10, 20, 30, 40]
    assert any(name.startswith("recall_mag_") for name in history.colnames)
    assert history["train_loss"][-1] < history["train_loss"][0], "the training loss must go down"
    assert np.all(np.isfinite(history["val_loss"]))
    plot_uri = butler.getURI("deepdisc_training_plot")
    assert plot_uri.read()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("train_task_pipetask")  # One worker runs the shared training fixture.
@needs_requests
def test_trained_model_runs_in_the_detection_pipeline(training_runs, tiny_repo) -> None:
    from lsst.daf.butler import Butler

    assert training_runs["resumed"].returncode == 0, "training failed; see the other test"
    detected = pipetask(
        "-b",
        str(training_runs["root"]),
        "-i",
        f"{tiny_repo.collection},{training_runs['output']}",
        "-o",
        "u/test/detect",
        "-p",
        str(PACKAGE_ROOT / "pipelines" / "DeepDisc.yaml"),
        "-d",
        f"skymap='{tiny_repo.skymap}'",
    )
    assert detected.returncode == 0, detected.stderr[-4000:]
    butler = Butler.from_config(str(training_runs["root"]), collections=["u/test/detect"])
    found = {
        (int(ref.dataId["tract"]), int(ref.dataId["patch"]))
        for ref in butler.query_datasets("object_deepdisc", collections="u/test/detect")
    }
    assert found == {(int(d["tract"]), int(d["patch"])) for d in tiny_repo.data_ids}
    catalog = butler.get("object_deepdisc", tiny_repo.data_ids[0])
    assert "footprint" in catalog.colnames


def test_class_loss_weights_are_named_checked_and_keyed_only_when_set() -> None:
    config = DeepDiscTrainConfig()
    config.classNames = ["star", "galaxy"]
    assert config.class_loss_weights() == ()
    unweighted_key = config.training_key_config()
    assert "classLossWeights" not in unweighted_key  # Keys of earlier trainings are unchanged.
    config.classLossWeights = {"star": 4.0}
    config.validate()
    assert config.class_loss_weights() == (4.0, 1.0)
    assert config.training_config(10).class_loss_weights == (4.0, 1.0)
    assert config.training_key_config()["classLossWeights"] == {"star": 4.0}
    config.classLossWeights = {"quasar": 2.0}
    with pytest.raises(FieldValidationError, match="not in classNames"):
        config.validate()
    config.classLossWeights = {"star": 0.0}
    with pytest.raises(FieldValidationError, match="must be positive"):
        config.validate()
