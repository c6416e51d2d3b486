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

"""The model factory: every architecture for any number of bands, configs as data, per-class probabilities."""

from __future__ import annotations

import copy
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("detectron2.modeling")

import torch

from lsst.meas.extensions.deepdisc.core.models import (
    ARCHITECTURES,
    ModelSpec,
    UnsafeConfigError,
    build_model,
    build_model_from_spec,
    config_from_detectron2_yaml,
    list_architectures,
    make_model_config,
)
from lsst.meas.extensions.deepdisc.core.models.defaults import ASTRO_DEFAULTS
from lsst.meas.extensions.deepdisc.core.models.factory import model_config_dir
from lsst.meas.extensions.deepdisc.core.models.roi_heads import (
    fast_rcnn_inference_with_class_probs,
)

LAZY_ARCHITECTURES = ("MViTv2-T", "Swin-T")
CASCADE_ARCHITECTURES = ("Cascade-R50-FPN", *LAZY_ARCHITECTURES)
# Few proposals and detections keep the heavy heads (4-conv cascade box heads, 256-channel mask heads) fast.
FAST = {"MODEL.RPN.POST_NMS_TOPK_TEST": 12, "TEST.DETECTIONS_PER_IMAGE": 4}
# Randomly initialised deep ResNets with frozen batch norm amplify their input enormously; dividing the
# input by 100 (through the per-band pixel_std) keeps every random network in a regime with real boxes.
STD = 100.0


def _spec(architecture: str, num_bands: int, **kwargs) -> ModelSpec:
    kwargs.setdefault("overrides", dict(FAST))
    kwargs.setdefault("pixel_std", (STD,) * num_bands)
    return ModelSpec(architecture, tuple("ugrizy")[:num_bands], **kwargs)


def _image(num_bands: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_bands, size, size, generator=generator)


def _first_conv_in_channels(model: torch.nn.Module) -> int:
    trunk = model.backbone.bottom_up
    conv = trunk.patch_embed.proj if hasattr(trunk, "patch_embed") else trunk.stem.conv1
    return conv.weight.shape[1]


def _predictors(model: torch.nn.Module) -> list[torch.nn.Module]:
    predictor = model.roi_heads.box_predictor
    return list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]


def _check_instances(instances, num_classes: int, height: int, width: int) -> None:
    assert len(instances) > 0
    for name in ("pred_boxes", "scores", "pred_classes", "pred_masks", "class_probs"):
        assert instances.has(name), name
    probs = instances.class_probs
    assert probs.dtype == torch.float32
    assert probs.shape == (len(instances), num_classes)
    assert torch.all(probs >= 0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(instances)), atol=1e-5, rtol=0)
    assert instances.pred_masks.shape == (len(instances), height, width)  # Pasted at native resolution.
    assert torch.all(instances.pred_classes < num_classes)
    boxes = instances.pred_boxes.tensor
    assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 2] <= width)
    assert torch.all(boxes[:, 1] >= 0) and torch.all(boxes[:, 3] <= height)


def test_architectures_match_recipe_files():
    recipes = {path.stem for path in model_config_dir().glob("*.yaml")}
    assert set(list_architectures()) == recipes == set(ARCHITECTURES)
    assert all(isinstance(text, str) and text for text in ARCHITECTURES.values())
    for name in recipes:
        recipe = yaml.safe_load((model_config_dir() / f"{name}.yaml").read_text())
        assert recipe["format"] == ("lazy" if name in LAZY_ARCHITECTURES else "yacs")


@pytest.mark.parametrize("num_bands", [3, 6])
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_builds_and_runs_for_any_band_count(architecture, num_bands):
    # Random weights: seeded, so that whether a random network yields boxes does not depend on test order.
    torch.manual_seed(0)
    spec = _spec(architecture, num_bands)
    model = build_model_from_spec(spec)
    assert not model.training
    assert _first_conv_in_channels(model) == num_bands
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.zeros(num_bands))
    torch.testing.assert_close(model.pixel_std.flatten(), torch.full((num_bands,), STD))
    for predictor in _predictors(model):
        assert predictor.cls_score.out_features == len(spec.class_names) + 1  # + background
        assert predictor.test_topk_per_image == FAST["TEST.DETECTIONS_PER_IMAGE"]
    assert len(_predictors(model)) == (3 if architecture in CASCADE_ARCHITECTURES else 1)
    size = 128 if num_bands == 3 else 64
    inputs = [{"image": _image(num_bands, size), "height": size, "width": size}]
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 1
    _check_instances(outputs[0]["instances"], len(spec.class_names), size, size)
    if num_bands == 6:  # Once per architecture is enough for the unpasted variant.
        with torch.no_grad():
            (unpasted,) = model.inference(inputs, do_postprocess=False)
        # Box-relative soft masks at the mask head's resolution (twice the pooler's), one per detection.
        pooled_height, pooled_width = model.roi_heads.mask_pooler.output_size
        assert unpasted.pred_masks.shape == (len(unpasted), 1, 2 * pooled_height, 2 * pooled_width)
        assert unpasted.pred_masks.dtype == torch.float32
        assert torch.all((unpasted.pred_masks >= 0) & (unpasted.pred_masks <= 1))
        assert unpasted.class_probs.shape == (len(unpasted), len(spec.class_names))


def test_astronomy_defaults_and_no_weights_in_every_config():
    for architecture in ARCHITECTURES:
        config = make_model_config(ModelSpec(architecture, ("g", "r", "i", "z")))
        assert yaml.safe_load(yaml.safe_dump(config)) == config
        assert config["architecture"] == architecture
        assert config["num_bands"] == 4 and config["bands"] == ["g", "r", "i", "z"]
        assert config["class_names"] == ["star", "galaxy"]
        assert config["pixel_mean"] == [0.0] * 4 and config["pixel_std"] == [1.0] * 4
        if config["format"] == "yacs":
            model = config["config"]["MODEL"]
            assert model["WEIGHTS"] == ""
            assert model["MASK_ON"] is True
            assert model["ANCHOR_GENERATOR"]["SIZES"] == ASTRO_DEFAULTS["MODEL.ANCHOR_GENERATOR.SIZES"]
            assert config["config"]["TEST"]["DETECTIONS_PER_IMAGE"] == 2000
            assert config["config"]["INPUT"]["MIN_SIZE_TEST"] == 0
            assert config["config"]["INPUT"]["FORMAT"] != "BGR"
            assert model["ROI_HEADS"]["NAME"].startswith("DeepDISC")
        else:
            model = config["model"]
            dumped = yaml.safe_dump(model)
            assert not any(marker in dumped for marker in ("://", ".pth", ".pkl", "checkpoint"))
            anchors = model["proposal_generator"]["anchor_generator"]
            assert anchors["sizes"] == ASTRO_DEFAULTS["MODEL.ANCHOR_GENERATOR.SIZES"]
            assert all(p["test_topk_per_image"] == 2000 for p in model["roi_heads"]["box_predictors"])
            assert model["backbone"]["square_pad"] == 0
            assert model["input_format"] != "BGR"
            assert model["roi_heads"]["_target_"].endswith("DeepDISCCascadeROIHeads")


def test_built_anchors_are_small():
    model = build_model_from_spec(ModelSpec("compact-R18-FPN", ("g", "r", "i")))
    generator = model.proposal_generator.anchor_generator
    widths = [float((anchors[:, 2] - anchors[:, 0]).max()) for anchors in generator.cell_anchors]
    sizes = [level[0] for level in ASTRO_DEFAULTS["MODEL.ANCHOR_GENERATOR.SIZES"]]
    assert len(widths) == len(sizes)
    # The widest anchor of a level (aspect ratio 0.5) is sqrt(2) times its size.
    np.testing.assert_allclose(widths, np.sqrt(2.0) * np.array(sizes), rtol=1e-5)
    assert model.roi_heads.box_predictor.test_topk_per_image == 2000


@pytest.mark.parametrize("architecture", ["compact-R18-FPN", "Swin-T"])
def test_config_round_trips_through_safe_yaml_and_rebuilds_same_shapes(architecture):
    spec = ModelSpec(architecture, ("g", "r", "i", "z", "y"), pixel_mean=(1, 2, 3, 4, 5), overrides=FAST)
    config = make_model_config(spec)
    reloaded = yaml.safe_load(yaml.safe_dump(config))
    assert reloaded == config
    assert make_model_config(spec) == config  # Deterministic.
    original = build_model(config).state_dict()
    rebuilt = build_model(reloaded).state_dict()
    assert {k: v.shape for k, v in original.items()} == {k: v.shape for k, v in rebuilt.items()}
    assert any(v.shape[1:2] == (5,) for k, v in rebuilt.items() if v.ndim == 4)  # A 5-band first layer.


@pytest.mark.parametrize("architecture", ["compact-R18-FPN", "Swin-T"])
def test_building_without_random_init_then_loading_gives_the_same_model(architecture):
    """``init_weights=False`` draws no random numbers; loaded weights make it the fully initialised model."""
    config = make_model_config(_spec(architecture, 3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        initialised = build_model(config)
        state = torch.random.get_rng_state()
        bare = build_model(config, init_weights=False)
        assert torch.equal(torch.random.get_rng_state(), state)  # Nothing drawn...
        build_model(config)
        assert not torch.equal(torch.random.get_rng_state(), state)  # ... where a full build draws.
    bare.load_state_dict(initialised.state_dict(), strict=True)
    for name, buffer in initialised.named_buffers():
        assert torch.equal(buffer, dict(bare.named_buffers())[name]), name  # Non-persistent ones too.
    image = _image(3, 64)
    with torch.inference_mode():
        expected = initialised([{"image": image, "height": 64, "width": 64}])[0]["instances"]
        got = bare([{"image": image, "height": 64, "width": 64}])[0]["instances"]
    assert len(expected) > 0
    assert torch.equal(got.scores, expected.scores)
    assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)


def test_model_spec_dict_round_trip_and_validation():
    spec = ModelSpec(
        "R50-FPN",
        ["g", "r"],
        class_names=["star", "galaxy", "artifact"],
        pixel_mean=[0.5, 0.25],
        overrides={"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.3},
    )
    assert spec.bands == ("g", "r") and spec.pixel_mean == (0.5, 0.25) and spec.pixel_std is None
    data = yaml.safe_load(yaml.safe_dump(spec.to_dict()))
    assert ModelSpec.from_dict(data) == spec
    assert hash(ModelSpec.from_dict(data)) == hash(spec)
    # Tuples in overrides are stored as lists, so the dict form stays safe-dumpable and round-trips.
    with_tuples = ModelSpec("R50-FPN", ("g",), overrides={"MODEL.ANCHOR_GENERATOR.SIZES": ((4,), (8,))})
    assert with_tuples.overrides == {"MODEL.ANCHOR_GENERATOR.SIZES": [[4], [8]]}
    assert ModelSpec.from_dict(yaml.safe_load(yaml.safe_dump(with_tuples.to_dict()))) == with_tuples
    with pytest.raises(ValueError, match="unknown ModelSpec field"):
        ModelSpec.from_dict({**data, "weights": "x.pth"})
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelSpec("R9000", ("g",))
    with pytest.raises(ValueError, match="duplicates"):
        ModelSpec("R50-FPN", ("g", "g"))
    with pytest.raises(ValueError, match="empty"):
        ModelSpec("R50-FPN", ())
    with pytest.raises(TypeError):
        ModelSpec("R50-FPN", "gri")  # A string is not a sequence of band names.


@pytest.mark.parametrize("field", ["pixel_mean", "pixel_std"])
def test_pixel_statistics_length_mismatch_is_a_clear_error(field):
    with pytest.raises(ValueError, match=rf"{field} has 2 value\(s\) but there are 3 bands"):
        ModelSpec("compact-R18-FPN", ("g", "r", "i"), **{field: (0.0, 1.0)})


def test_pixel_std_must_be_positive_and_finite():
    with pytest.raises(ValueError, match="positive"):
        ModelSpec("compact-R18-FPN", ("g", "r"), pixel_std=(1.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        ModelSpec("compact-R18-FPN", ("g", "r"), pixel_mean=(1.0, float("nan")))


def test_inconsistent_model_config_is_refused():
    config = make_model_config(ModelSpec("compact-R18-FPN", ("g", "r", "i")))
    bad = copy.deepcopy(config)
    bad["pixel_mean"] = [0.0, 0.0]
    with pytest.raises(ValueError, match="pixel_mean"):
        build_model(bad)
    bad = copy.deepcopy(config)
    bad["class_names"] = ["star"]
    with pytest.raises(ValueError, match="classes"):
        build_model(bad)
    bad = copy.deepcopy(config)
    bad["config"]["MODEL"]["WEIGHTS"] = "https://example.org/model.pth"
    with pytest.raises(ValueError, match="WEIGHTS"):
        build_model(bad)
    bad = copy.deepcopy(config)
    bad["config"]["MODEL"]["NOT_A_KEY"] = 1
    with pytest.raises(ValueError, match="NOT_A_KEY"):
        build_model(bad)
    with pytest.raises(ValueError, match="format"):
        build_model({**config, "format": "python"})


def test_overrides_reach_the_model_for_both_config_formats():
    overrides = {"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.2, "MODEL.RPN.POST_NMS_TOPK_TEST": 123}
    yacs_model = build_model_from_spec(ModelSpec("compact-R18-FPN", ("g",), overrides=overrides))
    assert yacs_model.roi_heads.box_predictor.test_score_thresh == pytest.approx(0.2)
    assert yacs_model.proposal_generator.post_nms_topk[False] == 123
    lazy_overrides = {
        **overrides,
        **FAST,
        # A narrower first cascade stage: its head and its predictor's input change together.
        "model.roi_heads.box_heads.0.fc_dims": [512],
        "model.roi_heads.box_predictors.0.input_shape.channels": 512,
    }
    classes = ("star", "galaxy", "artifact")
    lazy_model = build_model_from_spec(_spec("MViTv2-T", 3, class_names=classes, overrides=lazy_overrides))
    assert all(p.test_score_thresh == pytest.approx(0.2) for p in lazy_model.roi_heads.box_predictor)
    assert lazy_model.proposal_generator.post_nms_topk[False] == FAST["MODEL.RPN.POST_NMS_TOPK_TEST"]
    assert lazy_model.roi_heads.box_head[0].output_shape.channels == 512
    assert lazy_model.roi_heads.box_head[1].output_shape.channels == 1024
    # The number of classes reaches every cascade predictor and the mask head of a lazy config.
    assert all(p.cls_score.out_features == 4 for p in lazy_model.roi_heads.box_predictor)
    assert lazy_model.roi_heads.mask_head.predictor.out_channels == 3
    with torch.no_grad():
        outputs = lazy_model([{"image": _image(3, 64), "height": 64, "width": 64}])
    instances = outputs[0]["instances"]
    _check_instances(instances, 3, 64, 64)
    assert torch.all(instances.scores > 0.2)


@pytest.mark.parametrize(
    ("architecture", "overrides", "message"),
    [
        ("R50-FPN", {"MODEL.ROI_HEADS.NUM_CLASSES": 5}, "class_names"),
        ("R50-FPN", {"MODEL.PIXEL_MEAN": [1, 2, 3]}, "pixel_mean"),
        ("R50-FPN", {"MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-50.pkl"}, "weights"),
        ("R50-FPN", {"MODEL.MASK_ON": False}, "masks"),
        ("R50-FPN", {"INPUT.MIN_SIZE_TEST": 800}, "resize"),
        ("R50-FPN", {"MODEL.NO_SUCH_KEY": 1}, "NO_SUCH_KEY"),
        ("R50-FPN", {"model.backbone.out_channels": 8}, "lazy architectures only"),
        ("MViTv2-T", {"MODEL.RESNETS.DEPTH": 50}, "no equivalent"),
        ("MViTv2-T", {"model.no.such.path": 1}, "does not exist"),
        ("Swin-T", {"model.roi_heads.num_classes": 5}, "class_names"),
        ("Swin-T", {"model.pixel_std": [1, 1, 1]}, "pixel_std"),
    ],
)
def test_bad_overrides_are_clear_errors(architecture, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_model_config(ModelSpec(architecture, ("g", "r", "i"), overrides=overrides))


@pytest.mark.parametrize(
    "hostile",
    [
        {"_target_": "os.system", "command": "echo pwned"},
        {"_target_": "detectron2.modeling.FPN", "bottom_up": {"_target_": "builtins.eval", "source": "1"}},
    ],
)
def test_hostile_targets_refused_in_overrides_and_tampered_configs(hostile):
    with pytest.raises(UnsafeConfigError, match=r"os\.system|builtins\.eval"):
        make_model_config(ModelSpec("Swin-T", ("g",), overrides={"model.roi_heads.mask_head": hostile}))
    config = make_model_config(ModelSpec("MViTv2-T", ("g",)))
    config["model"]["backbone"] = hostile
    with pytest.raises(UnsafeConfigError, match=r"os\.system|builtins\.eval"):
        build_model(config)


def test_detectron2_roi_heads_named_in_overrides_become_ours():
    spec = ModelSpec("R50-FPN", ("g",), overrides={"MODEL.ROI_HEADS.NAME": "CascadeROIHeads"})
    config = make_model_config(spec)
    assert config["config"]["MODEL"]["ROI_HEADS"]["NAME"] == "DeepDISCCascadeROIHeads"
    with pytest.raises(ValueError, match="Res5ROIHeads"):
        make_model_config(ModelSpec("R50-FPN", ("g",), overrides={"MODEL.ROI_HEADS.NAME": "Res5ROIHeads"}))


def test_only_our_roi_heads_are_built():
    config = make_model_config(ModelSpec("MViTv2-T", ("g",)))
    config["model"]["roi_heads"]["_target_"] = "detectron2.modeling.roi_heads.CascadeROIHeads"
    with pytest.raises(ValueError, match="not ours"):
        build_model(config)
    config = make_model_config(ModelSpec("compact-R18-FPN", ("g",)))
    config["config"]["MODEL"]["ROI_HEADS"]["NAME"] = "StandardROIHeads"
    with pytest.raises(ValueError, match="not ours"):
        build_model(config)


def test_class_probs_follow_the_kept_proposals():
    """Each detection's probabilities are its own proposal's foreground probabilities, renormalised."""
    num_proposals, num_classes = 6, 3
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(num_proposals, num_classes + 1, generator=generator) * 2
    probs = torch.softmax(logits, dim=1)
    # Far-apart boxes, class-specific regression (the same box for every class): nothing is suppressed.
    corners = torch.arange(num_proposals, dtype=torch.float32)[:, None] * 20
    boxes = torch.cat([corners, corners, corners + 10, corners + 10], dim=1).repeat(1, num_classes)
    # A non-finite proposal is dropped before detectron2 indexes the kept rows: indices must still match.
    boxes[2] = float("nan")
    (result,) = fast_rcnn_inference_with_class_probs([boxes], [probs], [(200, 200)], 0.05, 0.5, 100)
    assert len(result) > 0
    foreground = probs[:, :-1] / probs[:, :-1].sum(dim=1, keepdim=True)
    for box, score, label, row in zip(
        result.pred_boxes.tensor, result.scores, result.pred_classes, result.class_probs
    ):
        proposal = int(box[0] // 20)
        assert proposal != 2
        torch.testing.assert_close(row, foreground[proposal])
        torch.testing.assert_close(score, probs[proposal, label])
    with torch.no_grad():
        expected = {(p, c) for p in range(num_proposals) for c in range(num_classes) if p != 2}
        expected = {(p, c) for p, c in expected if probs[p, c] > 0.05}
    found = {(int(b[0] // 20), int(label)) for b, label in zip(result.pred_boxes.tensor, result.pred_classes)}
    assert found == expected


def test_compact_model_is_fast_on_one_core():
    """A 3x256x256 forward of the compact model on one thread, at a realistic source density."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model_from_spec(
            ModelSpec("compact-R18-FPN", ("g", "r", "i"), overrides={"TEST.DETECTIONS_PER_IMAGE": 100})
        )
        inputs = [{"image": _image(3, 256), "height": 256, "width": 256}]
        timings = []
        with torch.no_grad():
            for _ in range(3):
                start = time.perf_counter()
                model(inputs)
                timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    # Typically ~0.3-0.5 s; the bound leaves room for a machine shared with other test workers.
    assert min(timings) < 2.0


def _write_yacs_user_config(directory: Path) -> Path:
    # A user's yacs file in the model-zoo layout: its _BASE_ is found in detectron2's model zoo.
    nested = directory / "COCO-InstanceSegmentation"
    nested.mkdir()
    path = nested / "my_mask_rcnn.yaml"
    path.write_text(
        """
_BASE_: "../Base-RCNN-FPN.yaml"
MODEL:
  WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
  MASK_ON: True
  PIXEL_MEAN: [103.5, 116.3, 123.7]
  RESNETS:
    DEPTH: 18
    RES2_OUT_CHANNELS: 64
  ROI_HEADS:
    NUM_CLASSES: 80
  ANCHOR_GENERATOR:
    SIZES: [[8], [16], [32], [64], [128]]
TEST:
  DETECTIONS_PER_IMAGE: 17
"""
    )
    return path


def test_import_yacs_yaml_adapts_bands_and_classes(tmp_path: Path):
    path = _write_yacs_user_config(tmp_path)
    config = config_from_detectron2_yaml(path, ("g", "r", "i", "z", "y"), pixel_std=(STD,) * 5)
    model_section = config["config"]["MODEL"]
    assert config["format"] == "yacs" and config["num_bands"] == 5
    assert model_section["ROI_HEADS"]["NUM_CLASSES"] == 2
    assert model_section["ROI_HEADS"]["NAME"] == "DeepDISCStandardROIHeads"
    assert model_section["WEIGHTS"] == ""
    assert config["original_weights"].endswith("R-50.pkl")
    # The trained model's own settings are kept (no astronomy defaults on imports).
    assert model_section["ANCHOR_GENERATOR"]["SIZES"] == [[8], [16], [32], [64], [128]]
    assert config["config"]["TEST"]["DETECTIONS_PER_IMAGE"] == 17
    # Three pixel means do not fit five bands: zeros, as documented.
    assert config["pixel_mean"] == [0.0] * 5
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    model = build_model(config)
    assert _first_conv_in_channels(model) == 5
    with torch.no_grad():
        outputs = model([{"image": _image(5, 64), "height": 64, "width": 64}])
    _check_instances(outputs[0]["instances"], 2, 64, 64)


def test_import_lazyconfig_saved_as_yaml(tmp_path: Path):
    """A LazyConfig written by detectron2's LazyConfig.save (as DeepDISC does) imports and runs."""
    from detectron2.config import LazyConfig
    from detectron2.layers import ShapeSpec
    from omegaconf import OmegaConf

    # Rebuild a LazyConfig in memory from our recipe with real Python objects where detectron2 users
    # have them (a partial norm layer, ShapeSpec dataclasses, tuples), then save it the way they would.
    recipe = yaml.safe_load((model_config_dir() / "MViTv2-T.yaml").read_text())
    model = copy.deepcopy(recipe["model"])
    model["backbone"]["bottom_up"]["norm_layer"] = partial(torch.nn.LayerNorm, eps=1e-6)
    model["backbone"]["bottom_up"]["depth"] = 4
    model["backbone"]["bottom_up"]["last_block_indexes"] = (0, 1, 2, 3)
    model["roi_heads"]["_target_"] = "detectron2.modeling.roi_heads.CascadeROIHeads"
    model["roi_heads"]["num_classes"] = 80
    model["pixel_mean"] = [123.675, 116.28, 103.53]
    for head in model["roi_heads"]["box_heads"]:
        head["input_shape"] = ShapeSpec(channels=256, height=7, width=7)
    model["proposal_generator"]["post_nms_topk"] = (40, 40)
    for predictor in model["roi_heads"]["box_predictors"]:
        predictor["test_topk_per_image"] = 16
    lazy = OmegaConf.create(
        {"model": model, "train": {"init_checkpoint": "detectron2://ImageNetPretrained/mvitv2/x.pyth"}},
        flags={"allow_objects": True},
    )
    path = tmp_path / "deepdisc_model.yaml"
    LazyConfig.save(lazy, str(path))
    text = path.read_text()
    assert "!!python/object/apply:functools.partial" in text and "${...num_classes}" in text

    config = config_from_detectron2_yaml(
        path, ("g", "r", "i", "z"), class_names=("star", "galaxy", "qso"), pixel_std=(STD,) * 4
    )
    assert config["format"] == "lazy"
    assert config["original_weights"].endswith("x.pyth")
    model_tree = config["model"]
    assert model_tree["backbone"]["bottom_up"]["in_chans"] == 4
    assert model_tree["roi_heads"]["_target_"].endswith("DeepDISCCascadeROIHeads")
    assert all(p["num_classes"] == 3 for p in model_tree["roi_heads"]["box_predictors"])
    assert config["pixel_mean"] == [0.0] * 4  # Three means for four bands: replaced by zeros.
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    built = build_model(config)
    assert built.backbone.bottom_up.blocks[0].norm1.eps == pytest.approx(1e-6)
    with torch.no_grad():
        outputs = built([{"image": _image(4, 64), "height": 64, "width": 64}])
    _check_instances(outputs[0]["instances"], 3, 64, 64)


def test_import_refuses_python_configs_and_hostile_yaml(tmp_path: Path):
    marker = tmp_path / "pwned"
    python_config = tmp_path / "config.py"
    python_config.write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(ValueError, match="execute code"):
        config_from_detectron2_yaml(python_config, ("g",))
    hostile_lazy = tmp_path / "lazy.yaml"
    hostile_lazy.write_text(
        "model:\n"
        "  _target_: detectron2.modeling.GeneralizedRCNN\n"
        f"  backbone: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(UnsafeConfigError, match="os.system"):
        config_from_detectron2_yaml(hostile_lazy, ("g",))
    hostile_yacs = tmp_path / "yacs.yaml"
    hostile_yacs.write_text(f"MODEL:\n  WEIGHTS: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UnsafeConfigError):
        config_from_detectron2_yaml(hostile_yacs, ("g",))
    python_base = tmp_path / "child.yaml"
    python_base.write_text("_BASE_: config.py\nMODEL:\n  MASK_ON: True\n")
    with pytest.raises(UnsafeConfigError, match=r"\.py"):
        config_from_detectron2_yaml(python_base, ("g",))
    assert not marker.exists()


@pytest.mark.parametrize("architecture", ["compact-R18-FPN", "Cascade-R50-FPN"])
def test_box_branch_in_chunks_of_proposals_gives_the_same_detections(architecture):
    """Inference pools and classifies proposals a chunk at a time (bounded memory), with no other effect."""
    torch.manual_seed(0)
    model = build_model_from_spec(_spec(architecture, 3))
    inputs = [{"image": _image(3, 128, seed=s), "height": 128, "width": 128} for s in (1, 2)]
    results = {}
    for chunk in (0, 7, 1000):  # All at once; chunks across both images' proposals; the default.
        model.roi_heads.inference_box_chunk = chunk
        with torch.no_grad():
            results[chunk] = model.inference(inputs, do_postprocess=False)
    assert sum(len(r) for r in results[0]) > 0
    for chunk in (7, 1000):
        for whole, chunked in zip(results[0], results[chunk]):
            # The same detections; values to float32 rounding (BLAS may block fewer rows differently).
            torch.testing.assert_close(chunked.pred_classes, whole.pred_classes, rtol=0, atol=0)
            for name in ("scores", "class_probs", "pred_masks"):
                torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                chunked.pred_boxes.tensor, whole.pred_boxes.tensor, rtol=1e-5, atol=1e-4
            )


@pytest.mark.parametrize("architecture", ["compact-R18-FPN", "Cascade-R50-FPN"])
def test_mask_head_in_chunks_of_detections_gives_the_same_masks(architecture):
    """Inference runs the mask head's convolutions a chunk of detections at a time, with no other effect."""
    torch.manual_seed(0)
    model = build_model_from_spec(_spec(architecture, 3)).eval()
    inputs = [{"image": _image(3, 128, seed=s), "height": 128, "width": 128} for s in (1, 2)]
    batch_sizes: list[int] = []
    first_layer = next(iter(model.roi_heads.mask_head.children()))
    first_layer.register_forward_hook(lambda module, args, output: batch_sizes.append(len(args[0])))
    results = {}
    for chunk in (0, 3, 128):  # All at once; chunks across both images' detections; the default.
        model.roi_heads.inference_mask_chunk = chunk
        batch_sizes.clear()
        with torch.no_grad():
            results[chunk] = model.inference(inputs, do_postprocess=False)
        total = sum(len(r) for r in results[chunk])
        assert total > 5 and sum(batch_sizes) == total
        assert max(batch_sizes) == (total if chunk in (0, 128) else 3)
    for chunk in (3, 128):
        for whole, chunked in zip(results[0], results[chunk]):
            assert torch.equal(chunked.pred_boxes.tensor, whole.pred_boxes.tensor)
            assert torch.equal(chunked.pred_masks, whole.pred_masks)


def test_mask_head_chunks_call_the_head_as_a_module() -> None:
    """Each chunk calls the mask head itself: a ``forward`` of its own and its hooks run, per chunk."""
    from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead

    class OwnForward(MaskRCNNConvUpsampleHead):
        calls: list[int] = []

        def forward(self, x, instances):  # type: ignore[no-untyped-def, override]
            OwnForward.calls.append(sum(len(i) for i in instances))
            return super().forward(x, instances)

    torch.manual_seed(0)
    model = build_model_from_spec(_spec("compact-R18-FPN", 3)).eval()
    model.roi_heads.mask_head.__class__ = OwnForward
    hooked: list[int] = []
    model.roi_heads.mask_head.register_forward_hook(lambda module, args, output: hooked.append(len(args[0])))
    inputs = [{"image": _image(3, 128, seed=1), "height": 128, "width": 128}]
    results = {}
    for chunk in (0, 3):
        model.roi_heads.inference_mask_chunk = chunk
        OwnForward.calls.clear()
        hooked.clear()
        with torch.no_grad():
            results[chunk] = model.inference(inputs, do_postprocess=False)[0]
        total = len(results[chunk])
        assert total > 3 and OwnForward.calls == hooked and sum(hooked) == total
        if chunk == 3:  # Near-equal parts of at most three, none of a single detection.
            assert len(hooked) == -(-total // 3) and max(hooked) <= 3 and min(hooked) >= 2
        else:
            assert hooked == [total]
    assert torch.equal(results[3].pred_masks, results[0].pred_masks)
    assert torch.equal(results[3].pred_boxes.tensor, results[0].pred_boxes.tensor)


def test_mask_chunks_keep_images_without_detections_and_rows_in_order() -> None:
    """Chunks across images: each image gets its own rows back, an image with none gets empty masks."""
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    model = build_model_from_spec(_spec("compact-R18-FPN", 3)).eval()
    heads = model.roi_heads
    inputs = [{"image": _image(3, 128, seed=s), "height": 128, "width": 128} for s in (1, 2, 3)]
    generator = torch.Generator().manual_seed(4)
    detections = []
    for count in (5, 0, 4):
        corner = torch.rand(count, 2, generator=generator) * 90
        instances = Instances((128, 128))
        instances.pred_boxes = Boxes(torch.cat([corner, corner + 8 + 20 * torch.rand(count, 2)], dim=1))
        instances.pred_classes = torch.randint(0, heads.num_classes, (count,), generator=generator)
        detections.append(instances)
    with torch.no_grad():
        features = model.backbone(model.preprocess_image(inputs).tensor)
        results = {}
        for chunk in (0, 3):  # Rows 0-2 of the first image, 3-4 of it with 0 of the third, 1-3 of the third.
            heads.inference_mask_chunk = chunk
            copies = [d[torch.arange(len(d))] for d in detections]
            results[chunk] = heads._forward_mask(features, copies)
    for whole, chunked, given in zip(results[0], results[3], detections):
        assert len(chunked) == len(given) and chunked.pred_masks.shape == whole.pred_masks.shape
        assert torch.equal(chunked.pred_boxes.tensor, given.pred_boxes.tensor)
        assert torch.equal(chunked.pred_masks, whole.pred_masks)
    assert results[3][1].pred_masks.shape[0] == 0
