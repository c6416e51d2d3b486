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

"""Models that run on a subset of their bands: backbone, package, band dropout and weight adaptation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from lsst.meas.extensions.deepdisc.core.augment import random_band_keep
from lsst.meas.extensions.deepdisc.core.model_package import (
    BandMismatchError,
    ModelPackage,
    ModelPackageError,
)
from lsst.meas.extensions.deepdisc.core.models import ModelSpec, build_model, make_model_config
from lsst.meas.extensions.deepdisc.core.models.band_availability import BandAvailabilityBackbone
from lsst.meas.extensions.deepdisc.core.training import load_matching_weights

BANDS = ("g", "r", "i", "z")


def _spec(**changes: object) -> ModelSpec:
    values: dict = dict(architecture="compact-R18-FPN", bands=BANDS, band_availability=True)
    values.update(changes)
    return ModelSpec(**values)


@pytest.fixture(scope="module")
def availability_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(make_model_config(_spec()))


def test_backbone_sees_absent_bands_as_availability_planes(availability_model: torch.nn.Module) -> None:
    backbone = availability_model.backbone
    assert isinstance(backbone, BandAvailabilityBackbone)
    seen = {}
    handle = backbone.inner.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    try:
        x = torch.randn(1, 4, 64, 64)
        x[0, 1] = float("nan")
        backbone(x)
    finally:
        handle.remove()
    fed = seen["x"]
    assert fed.shape == (1, 8, 64, 64)
    assert torch.isfinite(fed).all()
    assert torch.equal(fed[0, 1], torch.zeros(64, 64))  # The absent band is zeroed ...
    assert fed[0, 4:, 0, 0].tolist() == [1.0, 0.0, 1.0, 1.0]  # ... and marked absent.
    assert torch.equal(fed[0, 0], x[0, 0])


def test_model_runs_on_a_subset_and_the_absent_band_changes_the_output(
    availability_model: torch.nn.Module,
) -> None:
    torch.manual_seed(1)
    image = torch.randn(4, 64, 64)
    subset = image.clone()
    subset[2] = float("nan")
    with torch.no_grad():
        full = availability_model.backbone(image[None])
        partial = availability_model.backbone(subset[None])
    assert all(torch.isfinite(value).all() for value in partial.values())
    assert not torch.allclose(full["p2"], partial["p2"])


def test_config_round_trip_keeps_band_availability() -> None:
    config = make_model_config(_spec())
    assert config["band_availability"] is True
    assert config["config"]["MODEL"]["BACKBONE"]["NAME"].startswith("BandAvailability:")
    plain = make_model_config(_spec(band_availability=False))
    assert plain["band_availability"] is False
    inconsistent = dict(config, band_availability=False)
    with pytest.raises(ValueError, match="band-availability backbone"):
        build_model(inconsistent)


def test_lazy_architectures_refuse_band_availability_clearly() -> None:
    with pytest.raises(ValueError, match="yacs"):
        make_model_config(_spec(architecture="MViTv2-T"))


def _package(model: torch.nn.Module, **changes: object) -> ModelPackage:
    spec = _spec()
    return ModelPackage.from_model(model, spec, "asinh_per_band", "subset-test", **changes)


def test_package_declares_its_bands_and_minimum(availability_model: torch.nn.Module, tmp_path: Path) -> None:
    package = _package(availability_model, min_bands=2)
    assert package.min_bands == 2
    assert package.usable_bands(["z", "g", "y"]) == ("g", "z")
    with pytest.raises(BandMismatchError, match="any 2 or more"):
        package.check_bands(["g", "y"])
    path = package.save(tmp_path / "subset.zip")
    loaded = ModelPackage.load(path)
    assert loaded.min_bands == 2
    assert "runs on any 2 or more" in loaded.summary()
    assert _package(availability_model).min_bands == 1  # The default for such a model.


def test_strict_models_keep_the_strict_check(availability_model: torch.nn.Module) -> None:
    strict = build_model(make_model_config(_spec(band_availability=False)))
    package = ModelPackage.from_model(strict, _spec(band_availability=False), "asinh_per_band", "strict")
    assert package.min_bands is None
    with pytest.raises(BandMismatchError, match=r"missing \['z'\]"):
        package.usable_bands(["g", "r", "i"])
    with pytest.raises(ModelPackageError, match="min_bands"):
        ModelPackage.from_model(strict, _spec(band_availability=False), "asinh_per_band", "x", min_bands=1)


def test_network_input_puts_absent_bands_as_nan_planes(availability_model: torch.nn.Module) -> None:
    package = _package(availability_model)
    scaled = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    cube = package.network_input(scaled, ("r", "z"))
    assert cube.shape == (4, 3, 3)
    assert np.isnan(cube[0]).all() and np.isnan(cube[2]).all()
    np.testing.assert_array_equal(cube[1], scaled[0])
    np.testing.assert_array_equal(cube[3], scaled[1])
    full = np.zeros((4, 3, 3), dtype=np.float32)
    assert package.network_input(full, BANDS) is full
    with pytest.raises(BandMismatchError, match="order"):
        package.network_input(scaled, ("z", "r"))


def test_random_band_keep_covers_single_bands_and_respects_the_minimum() -> None:
    rng = np.random.default_rng(3)
    kept = [random_band_keep(6, 1, rng) for _ in range(2000)]
    counts = np.array([keep.sum() for keep in kept])
    assert counts.min() == 1 and counts.max() == 5
    assert np.all(np.bincount(counts, minlength=6)[1:] > 250)  # Each size 1..5 about equally often.
    assert np.all(np.mean(kept, axis=0) > 0.4)  # No band favoured.
    assert random_band_keep(2, 2, rng).all()


def test_weights_of_a_strict_model_start_a_band_availability_model_with_more_classes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(2)
    old = build_model(make_model_config(_spec(band_availability=False)))
    new_spec = _spec(class_names=("star", "galaxy", "artifact_rays"))
    new = build_model(make_model_config(new_spec))
    with caplog.at_level(logging.INFO):
        report = load_matching_weights(new, old.state_dict(), logging.getLogger("test"))
    assert not report.shape_mismatches
    state = new.state_dict()
    stem = state["backbone.inner.bottom_up.stem.conv1.weight"]
    torch.testing.assert_close(stem[:, :4], old.state_dict()["backbone.bottom_up.stem.conv1.weight"])
    assert torch.count_nonzero(stem[:, 4:]) == 0  # Availability planes start without effect.
    score = state["roi_heads.box_predictor.cls_score.weight"]
    old_score = old.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    torch.testing.assert_close(score[:2], old_score[:2])
    torch.testing.assert_close(score[-1], old_score[-1])  # Background row carried to the end.
    # With every band present the adapted model computes what the old one did.
    image = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(new.backbone(image)["p3"], old.backbone(image)["p3"])


def test_band_count_thresholds_round_trip_and_choose_the_operating_point(
    availability_model: torch.nn.Module, tmp_path: Path
) -> None:
    package = _package(availability_model, min_bands=1)
    package = ModelPackage(
        **{
            **{name: getattr(package, name) for name in ("name", "version", "model_config", "state_dict")},
            **{name: getattr(package, name) for name in ("bands", "scaling", "class_names", "architecture")},
            "score_threshold": 0.55,
            "min_bands": 1,
            "band_count_thresholds": {1: 0.4, 3: 0.5},
        }
    )
    assert package.score_threshold_for(3) == 0.5
    assert package.score_threshold_for(2) == 0.55  # No threshold of its own: the package's.
    assert package.score_threshold_for(4) == 0.55
    loaded = ModelPackage.load(package.save(tmp_path / "thresholds.zip"))
    assert loaded.band_count_thresholds == {1: 0.4, 3: 0.5}
    assert "3 bands: 0.5" in loaded.summary()
    with pytest.raises(ModelPackageError, match="band count"):
        ModelPackage(**{**loaded.__dict__, "band_count_thresholds": {4: 0.5}})
    with pytest.raises(ModelPackageError, match=r"in \[0, 1\]"):
        ModelPackage(**{**loaded.__dict__, "band_count_thresholds": {2: 1.5}})
