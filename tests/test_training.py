"""Two-stage training of a compact DeepDISC model on tiny synthetic star/galaxy images (CPU)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans
from lsst.meas.extensions.deepdisc.core.models import ModelSpec, build_model, make_model_config
from lsst.meas.extensions.deepdisc.core.training import (
    BEST_WEIGHTS_FILE,
    LAST_CHECKPOINT_FILE,
    TrainingConfig,
    evaluate_detections,
    learning_rate_at,
    load_matching_weights,
    plot_training_history,
    train_model,
)
from lsst.meas.extensions.deepdisc.core.training_data import InstanceLabel, TrainingExample

BANDS = ("g", "r", "i")
# Fewer proposals and ROI samples than the astronomy defaults: the images are 64x64 with 3 sources.
FAST = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 300,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 300,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 100,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 64,
}


def blob_example(seed: int, size: int = 64, n_sources: int = 3) -> TrainingExample:
    """Bright Gaussian blobs on faint noise: narrow ones are stars (class 0), wide ones galaxies (1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0.0, 0.02, (len(BANDS), size, size)).astype(np.float32)
    instances = []
    for index in range(n_sources):
        x, y = rng.uniform(12, size - 12, 2)
        is_star = index % 2 == 0
        sigma = 1.5 if is_star else 4.0
        profile = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        image += (profile * rng.uniform(0.8, 1.2, len(BANDS))[:, None, None]).astype(np.float32)
        spans = mask_to_spans(profile > 0.1)
        instances.append(InstanceLabel(spans, class_id=0 if is_star else 1, source_id=100 * seed + index))
    return TrainingExample(image, instances, f"blobs-{seed}", BANDS)


def make_config(**kwargs: object) -> TrainingConfig:
    defaults: dict[str, object] = {
        "heads_lr": 0.02,
        "full_lr": 0.02,
        "batch_size": 2,
        "device": "cpu",
        "log_period": 5,
    }
    defaults.update(kwargs)
    return TrainingConfig(**defaults)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model_config() -> dict:
    return make_model_config(ModelSpec("compact-R18-FPN", bands=BANDS, overrides=FAST))


@pytest.fixture(scope="module")
def examples() -> tuple[list[TrainingExample], list[TrainingExample]]:
    return [blob_example(seed) for seed in range(4)], [blob_example(seed) for seed in (10, 11)]


@pytest.fixture(scope="module")
def trained(model_config, examples, tmp_path_factory):
    """One 30-iteration run (10 heads-only + 20 full), shared by the tests that inspect its outputs."""
    train, val = examples
    directory = tmp_path_factory.mktemp("trained")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("test_training.trained")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    config = make_config(
        heads_iterations=10, full_iterations=20, batch_size=1, eval_period=10, checkpoint_period=10
    )
    try:
        result = train_model(model_config, train, val, config, directory, log=log)
    finally:
        log.removeHandler(handler)
    return result, directory, [record.getMessage() for record in records]


def test_training_lowers_the_loss(trained) -> None:
    result, _, _ = trained
    assert result.iterations_done == 30 and not result.interrupted
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.7 * first["train_loss"]
    assert last["val_loss"] < first["val_loss"]


def test_history_metrics_and_best_model(trained) -> None:
    result, directory, _ = trained
    assert [entry["iteration"] for entry in result.history] == [10, 20, 30]
    assert [entry["stage"] for entry in result.history] == [1, 2, 2]
    for entry in result.history:
        for key in ("train_loss_cls", "train_loss_mask", "val_loss", "val_loss_rpn_cls", "eval_seconds"):
            assert np.isfinite(entry[key]), key
        for key in ("precision", "recall", "f1"):
            assert 0.0 <= entry[key] <= 1.0
        assert entry["ap"] is None or 0.0 <= entry["ap"] <= 1.0
        assert entry["n_truth"] == 6
    # Best = highest F1, ties broken by the lowest validation loss.
    best = max(result.history, key=lambda entry: (entry["f1"], -entry["val_loss"]))
    assert result.best_iteration == best["iteration"]
    assert result.best_metric == best["f1"]
    on_disk = load_file(str(directory / BEST_WEIGHTS_FILE))
    assert on_disk.keys() == result.state_dict.keys()
    for key, value in on_disk.items():
        torch.testing.assert_close(result.state_dict[key], value, rtol=0, atol=0)


def test_checkpoints_are_safe_files(trained) -> None:
    result, directory, _ = trained
    pointer = json.loads((directory / LAST_CHECKPOINT_FILE).read_text())
    assert pointer["iteration"] == 30
    state = json.loads((directory / pointer["state"]).read_text())
    assert state["iteration"] == 30 and state["history"] == result.history
    assert result.last_checkpoint == directory / pointer["state"]
    weights_path = directory / state["files"]["weights"]
    raw = weights_path.read_bytes()
    # safetensors: an 8-byte little-endian header length then a JSON header; no pickle opcode stream, no zip.
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])
    assert header["__metadata__"]["iteration"] == "30"
    assert not raw.startswith((b"\x80", b"PK"))
    weights = load_file(str(weights_path))
    assert "backbone.bottom_up.stem.conv1.weight" in weights
    extra = torch.load(directory / state["files"]["optimizer"], map_location="cpu", weights_only=True)
    assert {"optimizer", "grad_scaler", "rng"} <= set(extra)
    # keep_checkpoints=2: only the checkpoints of iterations 20 and 30 remain (that of 10 was pruned).
    assert sorted(path.name for path in directory.glob("state_*.json")) == [
        "state_0000020.json",
        "state_0000030.json",
    ]
    assert not list(directory.glob("*.tmp"))


def test_log_lines_and_history_plot(trained, tmp_path: Path) -> None:
    result, _, messages = trained
    progress = [message for message in messages if message.startswith("iter ")]
    assert len(progress) == 6  # log_period 5 over 30 iterations.
    assert all("it/s" in message and "ETA" in message and "lr " in message for message in progress)
    assert "loss_mask" in progress[0]
    assert any("Validation at iteration 30" in message for message in messages)
    path = plot_training_history(result.history, tmp_path / "history.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    with pytest.raises(ValueError, match="empty"):
        plot_training_history([], tmp_path / "none.png")


class OracleModel:
    """Answers with the labels of the example whose image it is given (optionally with altered classes)."""

    def __init__(self, examples: list[TrainingExample], class_map: dict[int, int], keep: int | None = None):
        self._by_image = {example.image.tobytes(): example for example in examples}
        self._class_map = class_map
        self._keep = keep
        self.roi_heads = type("Heads", (), {"num_classes": 2})()

    def __call__(self, inputs: list[dict]) -> list[dict]:
        from detectron2.structures import Boxes, Instances

        outputs = []
        for record in inputs:
            example = self._by_image[record["image"].cpu().numpy().tobytes()]
            count = len(example.instances) if self._keep is None else self._keep
            instances = Instances((example.height, example.width))
            instances.pred_boxes = Boxes(torch.from_numpy(example.boxes_xyxy()[:count]))
            instances.scores = torch.linspace(0.99, 0.9, len(example.instances))[:count]
            classes = [self._class_map[label.class_id] for label in example.instances][:count]
            instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
            instances.pred_masks = torch.from_numpy(example.masks()[:count])
            outputs.append({"instances": instances})
        return outputs


def test_evaluate_detections_scores_known_answers(examples) -> None:
    _, val = examples
    config = make_config(heads_iterations=1, full_iterations=0)
    perfect = evaluate_detections(OracleModel(val, {0: 0, 1: 1}), val, config)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)
    assert perfect["n_truth"] == perfect["n_matched"] == 6
    assert perfect["class_accuracy"] == 1.0
    assert perfect["ap"] == pytest.approx(1.0) and perfect["ap50"] == pytest.approx(1.0)
    # Swapped classes: still found (matching is class-agnostic), never right, so COCO AP (per class) is 0.
    swapped = evaluate_detections(OracleModel(val, {0: 1, 1: 0}), val, config)
    assert swapped["f1"] == 1.0 and swapped["class_accuracy"] == 0.0
    assert swapped["ap"] == pytest.approx(0.0)
    # One detection per image out of three labels.
    partial = evaluate_detections(OracleModel(val, {0: 0, 1: 1}, keep=1), val, config)
    assert partial["precision"] == 1.0 and partial["recall"] == pytest.approx(2 / 6)
    assert partial["f1"] == pytest.approx(2 * (1 / 3) / (1 + 1 / 3))
    none = evaluate_detections(OracleModel(val, {0: 0, 1: 1}, keep=0), val, config)
    assert (none["precision"], none["recall"], none["f1"], none["class_accuracy"]) == (0.0, 0.0, 0.0, None)


def test_interrupt_and_resume_continue_the_schedule(model_config, examples, tmp_path: Path) -> None:
    train, val = examples
    init = build_model(model_config).state_dict()
    config = make_config(
        heads_iterations=3, full_iterations=3, batch_size=1, eval_period=2, checkpoint_period=4, lr_steps=(2,)
    )
    straight = train_model(model_config, train, val[:1], config, tmp_path / "straight", init_state_dict=init)

    directory = tmp_path / "resumed"
    first = train_model(model_config, train, val[:1], config, directory, init_state_dict=init, stop_after=3)
    assert first.interrupted and first.iterations_done == 3
    assert [entry["iteration"] for entry in first.history] == [2]
    pointer = json.loads((directory / LAST_CHECKPOINT_FILE).read_text())
    assert pointer["iteration"] == 3
    state = json.loads((directory / pointer["state"]).read_text())
    assert state["next_stage"] == 2 and state["next_lr"] == pytest.approx(learning_rate_at(config, 3))

    # Stage 1 (heads only) left the frozen feature extractor exactly as initialised, heads and FPN moved.
    after_stage1 = load_file(str(directory / state["files"]["weights"]))
    body = [key for key in init if key.startswith("backbone.bottom_up.")]
    assert body and all(torch.equal(after_stage1[key], init[key]) for key in body)
    for prefix in ("roi_heads.", "proposal_generator.", "backbone.fpn_"):
        moved = [
            key for key in init if key.startswith(prefix) and not torch.equal(after_stage1[key], init[key])
        ]
        assert moved, prefix

    resumed = train_model(model_config, train, val[:1], config, directory)
    assert not resumed.interrupted and resumed.iterations_done == 6
    assert [entry["iteration"] for entry in resumed.history] == [2, 4, 6]
    assert [entry["lr"] for entry in resumed.history] == [learning_rate_at(config, i - 1) for i in (2, 4, 6)]
    assert json.loads((directory / LAST_CHECKPOINT_FILE).read_text())["iteration"] == 6
    # Same result as the uninterrupted run (data order, augmentation, RNG and optimizer state restored).
    for before, after in zip(straight.history, resumed.history):
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=1e-4)
    final_straight = load_file(str(tmp_path / "straight" / "model_0000006.safetensors"))
    final_resumed = load_file(str(directory / "model_0000006.safetensors"))
    for key, value in final_straight.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-4, atol=1e-5)
    # Stage 2 trains the feature extractor (beyond what the model freezes itself).
    assert any(not torch.equal(final_resumed[key], init[key]) for key in body if ".res4." in key)

    # A finished run is not extended by calling again.
    again = train_model(model_config, train, val[:1], config, directory)
    assert again.iterations_done == 6 and again.history == resumed.history


def test_mismatched_init_weights_are_skipped_and_reported(model_config, examples, tmp_path, caplog) -> None:
    six_band_three_class = make_model_config(
        ModelSpec("compact-R18-FPN", bands=("u", "g", "r", "i", "z", "y"), class_names=("a", "b", "c"))
    )
    torch.manual_seed(123)
    source = build_model(six_band_three_class).state_dict()
    source["not.in.the.model"] = torch.zeros(3)
    model = build_model(model_config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with caplog.at_level(logging.INFO):
        report = load_matching_weights(model, {"model": source}, logging.getLogger("test_training.init"))
    skipped = {key for key, _, _ in report.shape_mismatches}
    assert "backbone.bottom_up.stem.conv1.weight" in skipped
    assert "roi_heads.box_predictor.cls_score.weight" in skipped
    assert report.unexpected == ("not.in.the.model",)
    after = model.state_dict()
    for key in after:
        expected = before[key] if key in skipped else source[key]
        assert torch.equal(after[key], expected), key
    assert "backbone.bottom_up.stem.conv1.weight" in caplog.text and "shape mismatch" in caplog.text

    train, _ = examples
    config = make_config(heads_iterations=1, full_iterations=0, batch_size=1)
    result = train_model(model_config, train[:1], [], config, tmp_path, init_state_dict=source)
    assert result.init_report is not None
    assert "backbone.bottom_up.stem.conv1.weight" in {
        key for key, _, _ in result.init_report.shape_mismatches
    }
    assert result.best_iteration is None and result.iterations_done == 1
    assert [entry["iteration"] for entry in result.history] == [1]
    assert "val_loss" not in result.history[0]


def test_inconsistent_inputs_are_refused(model_config, examples, tmp_path) -> None:
    train, _ = examples
    two_band = [TrainingExample(e.image[:2], e.instances, e.example_id, ("g", "r")) for e in train]
    config = make_config(heads_iterations=1, full_iterations=0)
    with pytest.raises(ValueError, match="input channels"):
        train_model(model_config, two_band, [], config, tmp_path / "bands")
    with pytest.raises(ValueError, match="no training examples"):
        train_model(model_config, [], [], config, tmp_path / "empty")
    with pytest.raises(ValueError, match="bands"):
        train_model(model_config, [train[0], two_band[1]], [], config, tmp_path / "mixed")
    # A checkpoint directory of another model is not silently reused.
    train_model(model_config, train[:1], [], config, tmp_path / "other")
    three_classes = make_model_config(
        ModelSpec("compact-R18-FPN", bands=BANDS, class_names=("a", "b", "c"), overrides=FAST)
    )
    with pytest.raises(RuntimeError, match="different model"):
        train_model(
            three_classes,
            train[:1],
            [],
            make_config(heads_iterations=2, full_iterations=0),
            tmp_path / "other",
        )


def test_schedule_and_config_validation() -> None:
    config = TrainingConfig(
        heads_iterations=10,
        full_iterations=30,
        heads_lr=1e-3,
        full_lr=1e-4,
        lr_steps=(10, 20),
        lr_gamma=0.1,
        warmup_iterations=4,
        warmup_factor=0.25,
    )
    assert learning_rate_at(config, 0) == pytest.approx(0.25e-3)
    assert learning_rate_at(config, 2) == pytest.approx(0.625e-3)
    assert learning_rate_at(config, 4) == pytest.approx(1e-3)
    assert learning_rate_at(config, 9) == pytest.approx(1e-3)
    assert learning_rate_at(config, 10) == pytest.approx(0.25e-4)  # Stage 2 warms up again.
    assert learning_rate_at(config, 14) == pytest.approx(1e-4)
    assert learning_rate_at(config, 20) == pytest.approx(1e-5)
    assert learning_rate_at(config, 29) == pytest.approx(1e-5)
    assert learning_rate_at(config, 30) == pytest.approx(1e-6)
    assert config.total_iterations == 40
    for bad, match in [
        ({"heads_iterations": 0, "full_iterations": 0}, "at least 1"),
        ({"lr_steps": (5, 2)}, "increasing"),
        ({"best_metric": "accuracy"}, "best_metric"),
        ({"crop_size": 2.0}, "fraction"),
        ({"amp_dtype": "int8"}, "amp_dtype"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "lbfgs"}, "optimizer"),
    ]:
        kwargs = {"heads_iterations": 1, "full_iterations": 1, **bad}
        with pytest.raises(ValueError, match=match):
            TrainingConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision is used on CUDA only")
@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_mixed_precision_on_cuda(model_config, examples, tmp_path, amp_dtype) -> None:
    train, val = examples
    config = make_config(
        heads_iterations=2, full_iterations=2, eval_period=2, device="cuda", amp_dtype=amp_dtype
    )
    first = train_model(model_config, train, val, config, tmp_path, stop_after=3)
    assert first.interrupted and first.iterations_done == 3
    result = train_model(model_config, train, val, config, tmp_path)
    assert result.iterations_done == 4
    assert all(
        np.isfinite(entry["train_loss"]) and np.isfinite(entry["val_loss"]) for entry in result.history
    )
    assert all(value.device.type == "cpu" for value in result.state_dict.values())
