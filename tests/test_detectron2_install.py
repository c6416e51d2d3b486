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

"""detectron2 without its compiled ``_C``: what works, and clear failures for what needs ``_C``."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

pytest.importorskip("detectron2.modeling")

import torch

from lsst.meas.extensions.deepdisc.core.models import (
    CompiledExtensionMissingError,
    ModelSpec,
    build_model,
    has_compiled_extension,
    make_model_config,
)
from lsst.meas.extensions.deepdisc.core.models.compiled import (
    compiled_features_in_config,
    require_compiled_extension,
)

HAS_C = importlib.util.find_spec("detectron2._C") is not None
needs_no_c = pytest.mark.skipif(HAS_C, reason="detectron2._C is installed: the fallbacks are not exercised")

DEFORMABLE = {"MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, True, True, True]}


@pytest.mark.parametrize(
    "module", ["detectron2.modeling", "detectron2.config", "detectron2.structures", "detectron2.evaluation"]
)
def test_detectron2_python_packages_import(module):
    importlib.import_module(module)


def test_compiled_extension_detection_matches_the_environment():
    assert has_compiled_extension() is HAS_C


@needs_no_c
def test_c_extension_is_absent_here():
    with pytest.raises(ImportError):
        importlib.import_module("detectron2._C")


def test_torchvision_ops_that_detectron2_uses_work_without_c():
    from detectron2.layers import ROIAlign, batched_nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.int64), 0.5)
    assert keep.tolist() == [0, 2]
    roi_align = ROIAlign((2, 2), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    pooled = roi_align(torch.ones(1, 1, 16, 16), torch.tensor([[0.0, 2, 2, 8, 8]]))
    torch.testing.assert_close(pooled, torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize(
    ("architecture", "overrides", "feature"),
    [
        ("R50-FPN", DEFORMABLE, "deformable convolution"),
        ("R50-FPN", {"MODEL.PROPOSAL_GENERATOR.NAME": "RRPN"}, "rotated boxes"),
        ("Cascade-R50-FPN", {"MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignRotated"}, "rotated boxes"),
        ("MViTv2-T", {"model.roi_heads.box_pooler.pooler_type": "ROIAlignRotated"}, "rotated boxes"),
    ],
)
def test_features_needing_c_are_detected(architecture, overrides, feature):
    spec = ModelSpec(architecture, ("g", "r"), overrides=overrides)
    if HAS_C:
        assert feature in compiled_features_in_config(make_model_config(spec))
        return
    with pytest.raises(CompiledExtensionMissingError, match=r"detectron2\._C") as info:
        make_model_config(spec)
    assert feature in str(info.value)


@needs_no_c
def test_build_of_a_tampered_config_fails_clearly_before_detectron2_does():
    config = make_model_config(ModelSpec("R50-FPN", ("g", "r")))
    assert compiled_features_in_config(config) == []
    config["config"]["MODEL"]["RESNETS"]["DEFORM_ON_PER_STAGE"] = [False, False, True, True]
    with pytest.raises(CompiledExtensionMissingError, match=r"deformable convolution needs .*detectron2\._C"):
        build_model(config)
    lazy = make_model_config(ModelSpec("Swin-T", ("g",)))
    lazy["model"]["roi_heads"]["mask_pooler"]["pooler_type"] = "ROIAlignRotated"
    with pytest.raises(CompiledExtensionMissingError, match=r"rotated boxes"):
        build_model(lazy)


@needs_no_c
def test_require_compiled_extension_names_c_and_the_way_out():
    with pytest.raises(CompiledExtensionMissingError) as info:
        require_compiled_extension("detectron2's fast COCOeval")
    message = str(info.value)
    assert "fast COCOeval" in message and "detectron2._C" in message and "no-build-isolation" in message
