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

"""Pixel-scale, seeing and band-dropout augmentations of training examples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lsst.meas.extensions.deepdisc.core.augment_sky import SkyAugmentConfig, sky_augment_example
from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans, spans_centroid
from lsst.meas.extensions.deepdisc.core.training import TrainingConfig
from lsst.meas.extensions.deepdisc.core.training._loop import _training_batch
from lsst.meas.extensions.deepdisc.core.training_data import InstanceLabel, TrainingExample

SIZE = 200
CENTRES = ((60.0, 70.0), (140.0, 120.0))


def _example(seed: int = 0, sigma_px: float = 2.0) -> TrainingExample:
    """Two Gaussian sources with S/N ~ 100 per pixel at the peak and unit noise, asinh-scaled."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE]
    flux = rng.normal(0.0, 1.0, size=(3, SIZE, SIZE)).astype(np.float32)
    labels = []
    for index, (cx, cy) in enumerate(CENTRES):
        profile = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma_px**2))
        flux += 100.0 * profile[None].astype(np.float32)
        labels.append(InstanceLabel(mask_to_spans(profile > 0.01), class_id=1, source_id=index + 1))
    return TrainingExample(np.arcsinh(flux), labels, "synthetic", ("g", "r", "i"))


def _noise(example: TrainingExample) -> np.ndarray:
    flux = np.sinh(example.image)[:, :40, :40]  # A corner without sources.
    return np.array([1.4826 * np.median(np.abs(p - np.median(p))) for p in flux])


def _second_moment(example: TrainingExample, cx: float, cy: float) -> float:
    flux = np.sinh(example.image[1])
    y, x = np.mgrid[: flux.shape[0], : flux.shape[1]]
    near = (x - cx) ** 2 + (y - cy) ** 2 < 15**2
    weights = np.clip(flux * near, 0, None)
    return float(np.sum(weights * ((x - cx) ** 2 + (y - cy) ** 2)) / np.sum(weights) / 2)


def test_nothing_changes_with_probability_zero() -> None:
    example = _example()
    config = SkyAugmentConfig(probability=0.0, pixel_scale_range=(0.17, 0.27), seeing_range=(0.5, 1.4))
    assert not config.enabled
    assert sky_augment_example(example, config, np.random.default_rng(0)) is example


def test_a_coarser_pixel_shrinks_the_image_and_moves_the_labels_with_it() -> None:
    example = _example()
    config = SkyAugmentConfig(probability=1.0, native_pixel_scale=0.2, pixel_scale_range=(0.25, 0.25))
    out = sky_augment_example(example, config, np.random.default_rng(1))
    assert out.image.shape == (3, 160, 160)
    assert len(out.instances) == 2
    for label, (cx, cy) in zip(out.instances, CENTRES, strict=True):
        x, y = spans_centroid(label.spans)
        assert x == pytest.approx(cx * 0.8, abs=1.0) and y == pytest.approx(cy * 0.8, abs=1.0)
    # The noise is that of a real coadd again (resampling smoothed it).
    np.testing.assert_allclose(_noise(out), 1.0, atol=0.12)
    # Same seed, same result.
    again = sky_augment_example(example, config, np.random.default_rng(1))
    np.testing.assert_array_equal(out.image, again.image)


def test_worse_seeing_broadens_sources_and_keeps_the_noise_level() -> None:
    example = _example()
    config = SkyAugmentConfig(
        probability=1.0, native_pixel_scale=0.2, native_seeing=0.6, seeing_range=(1.2, 1.2)
    )
    out = sky_augment_example(example, config, np.random.default_rng(2))
    assert out.image.shape == example.image.shape
    before = _second_moment(example, *CENTRES[0])
    after = _second_moment(out, *CENTRES[0])
    # sigma_extra = sqrt(1.2^2 - 0.6^2) / 0.2 / 2.355 = 2.2 px: variance 4 -> ~8.9 (the window trims it).
    assert after > before + 3.0
    np.testing.assert_allclose(_noise(out), 1.0, atol=0.12)


def test_band_dropout_batches_hold_nan_planes_for_absent_bands() -> None:
    examples = [_example(seed) for seed in range(4)]
    config = TrainingConfig(
        heads_iterations=0, full_iterations=10, batch_size=4, band_dropout=1.0, min_bands=1, seed=5
    )
    batch = _training_batch(examples, config, 0)
    for record in batch:
        absent = torch.isnan(record["image"]).flatten(1).all(dim=1)
        partly = torch.isnan(record["image"]).flatten(1).any(dim=1) & ~absent
        assert 1 <= int(absent.sum()) <= 2 and not partly.any()
    untouched = _training_batch(examples, TrainingConfig(heads_iterations=0, full_iterations=10), 0)
    assert all(torch.isfinite(record["image"]).all() for record in untouched)


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="pixel_scale_range"):
        SkyAugmentConfig(pixel_scale_range=(0.3, 0.2))
    with pytest.raises(ValueError, match="band_dropout"):
        TrainingConfig(heads_iterations=0, full_iterations=1, band_dropout=1.5)


def test_binned_examples_get_binned_artifacts_and_no_pixel_scale_change() -> None:
    example = _example()
    binned = TrainingExample(example.image, example.instances, "b", example.bands, metadata={"binning": 4})
    config = SkyAugmentConfig(
        probability=1.0,
        pixel_scale_range=(0.3, 0.3),
        artifact_rate=2.0,
        artifact_class_ids=(2, 3, 4),
        binned_artifact_rate=6.0,
    )
    areas: dict[str, list[int]] = {"binned": [], "unbinned": []}
    counts = []
    for seed in range(8):
        out = sky_augment_example(binned, config, np.random.default_rng(seed))
        assert out.image.shape == example.image.shape  # No pixel-scale change on a binned example.
        artifacts = [label for label in out.instances if label.class_id >= 2]
        counts.append(len(artifacts))
        # Scattered-light patches (ghost_faint: class 3; the example has no bright source for ghosts).
        areas["binned"] += [label.area for label in artifacts if label.class_id == 3]
        plain = sky_augment_example(
            example, dataclasses.replace(config, probability=0.0), np.random.default_rng(seed)
        )
        areas["unbinned"] += [label.area for label in plain.instances if label.class_id == 3]
    assert np.mean(counts) > 3  # binned_artifact_rate, not artifact_rate.
    # Drawn at the binned scale: 16 times smaller in area (less where the unbinned ones are clipped).
    assert areas["binned"] and areas["unbinned"]
    assert np.median(areas["unbinned"]) > 4 * np.median(areas["binned"])
