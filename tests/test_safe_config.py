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

"""Configs as data: the allowlist-based instantiation refuses everything it should, builds what it should."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

pytest.importorskip("detectron2.modeling")

import torch

from lsst.meas.extensions.deepdisc.core.models import safe_config
from lsst.meas.extensions.deepdisc.core.models.safe_config import (
    UnsafeConfigError,
    check_plain_data,
    is_allowed_target,
    load_yaml_data,
    register_safe_target,
    resolve_interpolations,
    safe_instantiate,
    validate_targets,
)

# Constructions seen by the tests (module level, so a refused config can be shown to build nothing).
CALLS: list[dict] = []


@register_safe_target
class Recorder:
    """An allowlisted test callable that records its construction."""

    def __init__(self, **kwargs):
        CALLS.append(kwargs)
        self.kwargs = kwargs


RECORDER = f"{__name__}.Recorder"

HOSTILE_TARGETS = [
    "os.system",
    "builtins.eval",
    "builtins.exec",
    "subprocess.Popen",
    "posix.system",
    "importlib.import_module",
    "pickle.loads",
    "torch.load",
    "detectron2.config.LazyConfig.load",
    "detectron2.utils.registry.locate",
    "os.system ",  # Near-misses of allowed spellings are not normalised into them.
    "detectron2.modeling.FPN.__init__.__globals__",
    "detectron2.modeling.backbone.fpn.os.system",
    "",
]


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()
    yield
    CALLS.clear()


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_hostile_target_is_refused_and_named(target):
    with pytest.raises(UnsafeConfigError) as info:
        safe_instantiate({"_target_": target, "command": "echo pwned"})
    assert repr(target) in str(info.value)
    assert not is_allowed_target(target)


@pytest.mark.parametrize(
    "config",
    [
        # Nested under an allowed call, in a list, in a plain dict, as a positional argument, as the target
        # of the target, and in a `_partial_` factory: refused wherever it hides.
        {"_target_": RECORDER, "child": {"_target_": "os.system", "command": "x"}},
        {"_target_": RECORDER, "children": [1, {"a": [{"_target_": "builtins.eval", "source": "1"}]}]},
        {"plain": {"deeper": {"_target_": "subprocess.Popen", "args": ["ls"]}}},
        {"_target_": RECORDER, "_args_": [{"_target_": "os.system", "_args_": ["x"]}]},
        {"_target_": {"_target_": "builtins.getattr"}},
        {"_target_": RECORDER, "norm": {"_target_": "builtins.exec", "_partial_": True}},
    ],
)
def test_nested_hostile_targets_refused_before_anything_is_built(config):
    with pytest.raises(UnsafeConfigError):
        safe_instantiate(config)
    # The allowed outer constructor never ran: validation covers the whole tree first.
    assert CALLS == []


def test_refusal_names_the_nested_target():
    with pytest.raises(UnsafeConfigError, match="subprocess.Popen"):
        safe_instantiate({"_target_": RECORDER, "x": [{"_target_": "subprocess.Popen"}]})


@pytest.mark.parametrize("value", [lambda: 0, object(), {1: "non-string key"}, b"bytes", {1, 2}])
def test_values_that_are_not_plain_data_are_refused(value):
    with pytest.raises(UnsafeConfigError):
        check_plain_data({"_target_": RECORDER, "value": value})
    with pytest.raises(UnsafeConfigError):
        safe_instantiate({"_target_": RECORDER, "value": value})


def test_callable_objects_as_target_are_refused():
    # Even an allowed class must be spelled as data: configs never carry live objects.
    with pytest.raises(UnsafeConfigError):
        safe_instantiate({"_target_": Recorder})


@pytest.mark.parametrize("directive", ["_recursive_", "_convert_", "_self_"])
def test_unknown_directives_are_refused(directive):
    with pytest.raises(UnsafeConfigError, match=directive):
        safe_instantiate({"_target_": RECORDER, directive: False})


def test_allowed_targets_build_recursively_with_partials_and_positionals():
    built = safe_instantiate(
        {
            "_target_": RECORDER,
            "norm": {"_target_": "torch.nn.LayerNorm", "_partial_": True, "eps": 1e-6},
            "shape": {"_target_": "detectron2.layers.ShapeSpec", "channels": 7},
            "items": [{"_target_": "torch.nn.ReLU"}, {"plain": 3}],
        }
    )
    assert isinstance(built, Recorder)
    norm = built.kwargs["norm"]
    assert isinstance(norm, functools.partial)
    layer = norm(5)
    assert isinstance(layer, torch.nn.LayerNorm) and layer.eps == pytest.approx(1e-6)
    assert layer.normalized_shape == (5,)
    assert built.kwargs["shape"].channels == 7
    assert isinstance(built.kwargs["items"][0], torch.nn.ReLU)
    assert built.kwargs["items"][1] == {"plain": 3}
    assert len(CALLS) == 1


@pytest.mark.parametrize(
    "spelling",
    [
        "detectron2.modeling.FPN",
        "detectron2.modeling.backbone.FPN",
        "detectron2.modeling.backbone.fpn.FPN",
        "detectron2.modeling.backbone.resnet.ResNet.make_default_stages",
        "torch.nn.LayerNorm",
        "torch.nn.modules.normalization.LayerNorm",
        "lsst.meas.extensions.deepdisc.core.models.roi_heads.DeepDISCCascadeROIHeads",
    ],
)
def test_every_public_spelling_of_an_allowed_callable_is_accepted(spelling):
    validate_targets({"_target_": spelling})


def test_construction_errors_name_the_path():
    with pytest.raises(ValueError, match=r"norm.*torch.nn.LayerNorm"):
        safe_instantiate({"_target_": RECORDER, "norm": {"_target_": "torch.nn.LayerNorm", "bogus_arg": 1}})


def test_interpolations_relative_absolute_and_through_lists():
    tree = {
        "model": {
            "roi_heads": {
                "num_classes": 3,
                "box_predictor": {"num_classes": "${..num_classes}"},
                "box_predictors": [{"num_classes": "${...num_classes}"}],
                "mask_head": {"n": "${model.roi_heads.num_classes}"},
            },
            "backbone": {"bottom_up": {"out": ["a", "b"]}, "in_features": "${.bottom_up.out}"},
            "first": "${.backbone.bottom_up.out.1}",
            "chained": "${.first}",
        }
    }
    resolved = resolve_interpolations(tree)
    heads = resolved["model"]["roi_heads"]
    assert heads["box_predictor"]["num_classes"] == 3
    assert heads["box_predictors"][0]["num_classes"] == 3
    assert heads["mask_head"]["n"] == 3
    assert resolved["model"]["backbone"]["in_features"] == ["a", "b"]
    assert resolved["model"]["first"] == "b"
    assert resolved["model"]["chained"] == "b"
    # A copy: editing the result leaves the input (and other copies) alone.
    resolved["model"]["backbone"]["in_features"].append("c")
    assert tree["model"]["backbone"]["bottom_up"]["out"] == ["a", "b"]
    only = resolve_interpolations(tree, only="model")
    assert only["roi_heads"]["mask_head"]["n"] == 3


@pytest.mark.parametrize("value", ["${oc.env:HOME}", "${env:PATH}", "prefix ${oc.decode:'1'}"])
def test_interpolation_resolvers_are_refused(value):
    with pytest.raises(UnsafeConfigError, match="resolvers"):
        resolve_interpolations({"a": value})


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"a": "${b}"}, "does not resolve"),
        ({"a": "${a}"}, "circular"),
        ({"a": "x${b}", "b": 1}, "whole-value"),
        ({"a": {"b": "${....x}"}}, "climbs above"),
    ],
)
def test_bad_interpolations_raise_clear_errors(tree, message):
    with pytest.raises(ValueError, match=message):
        resolve_interpolations(tree)


def test_yaml_python_tags_become_inert_directives(tmp_path: Path):
    marker = tmp_path / "pwned"
    text = f"""
model:
  a: !!python/object/apply:os.system ["touch {marker}"]
  b: !!python/object/new:subprocess.Popen {{args: [[touch, "{marker}"]]}}
  c: !!python/name:builtins.eval ''
"""
    data = load_yaml_data(text, python_tags=True)
    assert not marker.exists()  # Loading executed nothing.
    assert data["model"]["a"] == {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    assert data["model"]["c"] == {"_target_": "builtins.eval", "_partial_": True}
    for key, target in (("a", "os.system"), ("b", "subprocess.Popen"), ("c", "builtins.eval")):
        with pytest.raises(UnsafeConfigError, match=target):
            safe_instantiate(data["model"][key])
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/module:os ''",
        "a: !!python/complex 1+2j",
        "a: !custom_tag 1",
        "a: !!python/object/apply:builtins.getattr {state: {x: 1}}",
    ],
)
def test_yaml_tags_that_cannot_be_data_are_refused(text):
    with pytest.raises(UnsafeConfigError):
        load_yaml_data(text, python_tags=True)


def test_plain_yaml_mode_refuses_every_python_tag(tmp_path: Path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeConfigError):
        load_yaml_data(f'a: !!python/object/apply:os.system ["touch {marker}"]')
    assert not marker.exists()


def test_lazyconfig_save_output_loads_as_buildable_data(tmp_path: Path):
    """What detectron2's LazyConfig.save writes (partials, dataclasses, tuples) round-trips into objects."""
    from detectron2.config import LazyCall, LazyConfig
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {
            "model": {
                "head": LazyCall(FastRCNNConvFCHead)(
                    input_shape=ShapeSpec(channels=8, height=3, width=3), conv_dims=[4], fc_dims=[16]
                ),
                "norm": functools.partial(torch.nn.LayerNorm, eps=1e-6),
                "act": torch.nn.GELU,
                "pair": (1, 2),
            }
        },
        flags={"allow_objects": True},
    )
    path = tmp_path / "saved.yaml"
    LazyConfig.save(config, str(path))
    data = load_yaml_data(path.read_text(), python_tags=True)
    check_plain_data(data)
    model = safe_instantiate(data["model"])
    head = model["head"]
    assert isinstance(head, FastRCNNConvFCHead)
    assert head.output_shape.channels == 16
    assert head(torch.zeros(2, 8, 3, 3)).shape == (2, 16)
    assert model["norm"](4).eps == pytest.approx(1e-6)
    assert isinstance(model["act"](), torch.nn.GELU)
    assert model["pair"] == [1, 2]


def test_allowlist_lists_only_importable_module_level_names():
    for module_name, qualname in safe_config.ALLOWED_TARGETS:
        assert is_allowed_target(f"{module_name}.{qualname}"), (module_name, qualname)
    with pytest.raises(TypeError):
        register_safe_target(lambda: None)
