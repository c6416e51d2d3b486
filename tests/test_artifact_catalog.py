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

"""Artifact rows of the detection catalog: is_artifact, flag_in_artifact, families, the artifact mask."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.deepdisc.butler.tables import to_arrow
from lsst.meas.extensions.deepdisc.core.catalog import (
    artifact_mask_image,
    build_artifact_mask,
    build_catalog,
    is_artifact_class,
    set_primary_flags,
)
from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans, spans_covered_area, spans_union
from lsst.meas.extensions.deepdisc.core.ids import IdPacker
from lsst.meas.extensions.deepdisc.core.inference import Detections
from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage

XY0 = (100, 200)
HEIGHT, WIDTH = 60, 80
CLASSES = ["star", "galaxy", "artifact_ghost_bright", "artifact_rays"]
PACKER = IdPacker.from_skymap(tract_max=20000, patch_nx_max=10, patch_ny_max=10)


def _image() -> MultibandImage:
    rng = np.random.default_rng(3)
    image = rng.normal(5.0, 2.0, size=(2, HEIGHT, WIDTH)).astype(np.float32)
    variance = np.ones((2, HEIGHT, WIDTH), dtype=np.float32)
    return MultibandImage(("g", "r"), image, variance, np.zeros((2, HEIGHT, WIDTH), np.int32), xy0=XY0)


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Local mask of the inclusive rectangle [x0, x1] x [y0, y1]."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


# Sources A (10x10, 70% under the ghost), B (10x10, touching A, 30% under the ghost), C far away; a ghost
# and a ray.  A and B overlap by one column, so they form a family of their own.
SOURCES = [_rect(10, 10, 19, 19), _rect(19, 10, 28, 19), _rect(60, 40, 69, 49)]
GHOST = _rect(13, 5, 22, 25)  # Covers columns 13-22: 7 of A's 10 columns, 4 of B's 10.
RAY = _rect(55, 44, 75, 44)  # One row through C: 10 of its 100 pixels.


def _detections(masks: list[np.ndarray], class_ids: list[int], n_classes: int = len(CLASSES)) -> Detections:
    boxes = []
    for mask in masks:
        rows, cols = np.nonzero(mask)
        boxes.append(
            [cols.min() + XY0[0], rows.min() + XY0[1], cols.max() + 1 + XY0[0], rows.max() + 1 + XY0[1]]
        )
    n = len(masks)
    probs = np.zeros((n, n_classes))
    probs[np.arange(n), class_ids] = 1.0
    return Detections(
        boxes=np.array(boxes, dtype=float),
        scores=np.linspace(0.9, 0.5, n),
        class_ids=np.array(class_ids),
        class_probs=probs,
        footprints=[mask_to_spans(m, XY0) for m in masks],
        tile_index=np.zeros(n, dtype=int),
        merged_duplicate=np.zeros(n, dtype=bool),
    )


def _build(detections: Detections, class_names=CLASSES, **kwargs) -> Table:
    return build_catalog(
        detections,
        _image(),
        class_names=class_names,
        tract=1,
        patch=2,
        model_name="m",
        model_version="1",
        id_packer=PACKER,
        **kwargs,
    )


@pytest.fixture(scope="module")
def with_artifacts() -> Table:
    return _build(_detections([*SOURCES, GHOST, RAY], [1, 1, 0, 2, 3]))


def test_artifact_class_names_follow_the_prefix() -> None:
    assert list(is_artifact_class(CLASSES)) == [False, False, True, True]
    assert is_artifact_class("artifact_ghost_faint") and not is_artifact_class("galaxy")


def test_artifact_rows_are_flagged_and_never_primary(with_artifacts: Table) -> None:
    catalog = with_artifacts
    assert list(catalog["is_artifact"]) == [False, False, False, True, True]
    assert list(catalog["class_name"][3:]) == ["artifact_ghost_bright", "artifact_rays"]
    assert list(catalog["detect_isPrimary"]) == [True, True, True, False, False]
    # Regions put every row inside: artifacts stay non-primary, the inner flags are theirs as for sources.
    set_primary_flags(catalog, np.ones(5, bool), np.ones(5, bool), source="test")
    assert list(catalog["detect_isPrimary"]) == [True, True, True, False, False]
    assert catalog["detect_isPatchInner"].all()
    assert catalog.meta["counts"]["primary"] == 3
    assert catalog.meta["counts"]["artifacts"] == 2
    assert catalog.meta["artifact_classes"] == ["artifact_ghost_bright", "artifact_rays"]


def test_flag_in_artifact_uses_the_covered_fraction_of_the_source(with_artifacts: Table) -> None:
    catalog = with_artifacts
    np.testing.assert_allclose(catalog["artifact_overlap_fraction"], [0.7, 0.4, 0.1, 0.0, 0.0], atol=1e-6)
    assert list(catalog["flag_in_artifact"]) == [True, False, False, False, False]
    assert catalog.meta["counts"]["flag_in_artifact"] == 1
    # Any overlap at threshold 0; over 0.65 only A.
    loose = _build(_detections([*SOURCES, GHOST, RAY], [1, 1, 0, 2, 3]), artifact_overlap_threshold=0.0)
    assert list(loose["flag_in_artifact"]) == [True, True, True, False, False]
    with pytest.raises(ValueError, match="artifact_overlap_threshold"):
        _build(_detections(SOURCES, [1, 1, 0]), artifact_overlap_threshold=1.0)


def test_artifacts_join_no_family_and_share_no_flux(with_artifacts: Table) -> None:
    catalog = with_artifacts
    plain = _build(_detections(SOURCES, [1, 1, 0]))
    # The ghost overlaps A and B, the ray C: without the rule all five would be one or two families.
    assert list(catalog["family_size"]) == [2, 2, 1, 1, 1]
    assert list(catalog["nChild"][3:]) == [0, 0] and list(catalog["parent"][3:]) == [0, 0]
    for band in ("g", "r"):
        np.testing.assert_allclose(
            catalog[f"{band}_apportionedFlux"][:3], plain[f"{band}_apportionedFlux"], rtol=1e-12
        )
        np.testing.assert_allclose(
            catalog[f"{band}_apportionedFlux"][3:], catalog[f"{band}_footprintFlux"][3:], rtol=1e-12
        )
    np.testing.assert_array_equal(catalog["parent"][:3] != 0, plain["parent"] != 0)


def test_models_without_artifact_classes_flag_nothing() -> None:
    catalog = _build(_detections(SOURCES, [1, 1, 0], n_classes=2), class_names=["star", "galaxy"])
    assert not catalog["is_artifact"].any() and not catalog["flag_in_artifact"].any()
    assert np.all(catalog["artifact_overlap_fraction"] == 0) and catalog["detect_isPrimary"].all()
    mask = build_artifact_mask(catalog)
    assert len(mask) == 0 and "spans" in mask.colnames
    assert not artifact_mask_image(mask).any()
    to_arrow(mask)  # An empty mask table still converts for the Butler.


def test_artifact_mask_table_is_the_union_per_class(with_artifacts: Table) -> None:
    mask = build_artifact_mask(with_artifacts)
    assert list(mask["class_name"]) == ["artifact_ghost_bright", "artifact_rays"]
    assert list(mask["n_instances"]) == [1, 1]
    assert list(mask["area"]) == [GHOST.sum(), RAY.sum()]
    assert list(mask["ids"][0]) == [with_artifacts["id"][3]]
    image = artifact_mask_image(mask)
    np.testing.assert_array_equal(image, GHOST | RAY)
    np.testing.assert_array_equal(artifact_mask_image(mask, classes=["artifact_rays"]), RAY)
    assert (mask["bbox_x0"][0], mask["bbox_y1"][0]) == (13 + XY0[0], 25 + XY0[1])
    arrow = to_arrow(mask)
    assert arrow.schema.field("spans").type.value_type.bit_width == 32
    # Two overlapping ghosts of one class become one row whose spans are their union.
    second = _rect(20, 20, 30, 30)
    catalog = _build(_detections([*SOURCES, GHOST, second], [1, 1, 0, 2, 2]))
    mask = build_artifact_mask(catalog)
    assert len(mask) == 1 and mask["n_instances"][0] == 2 and mask["area"][0] == (GHOST | second).sum()
    np.testing.assert_array_equal(artifact_mask_image(mask), GHOST | second)


def test_span_union_and_covered_area_match_the_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        masks = [rng.random((HEIGHT, WIDTH)) < 0.15 for _ in range(4)]
        spans = [mask_to_spans(m, XY0) for m in masks]
        union = spans_union(spans[:2])
        np.testing.assert_array_equal(union, mask_to_spans(masks[0] | masks[1], XY0))
        covered = spans_covered_area(spans, union)
        assert covered.tolist() == [int((m & (masks[0] | masks[1])).sum()) for m in masks]


def test_detect_task_writes_artifact_rows_and_mask_with_an_artifact_model() -> None:
    """A random-init model with artifact classes: whatever it finds, the outputs keep the artifact rules."""
    import torch
    from test_detect_task import _image as detect_image
    from test_detect_task import _task as detect_task

    from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
    from lsst.meas.extensions.deepdisc.core.models.factory import ModelSpec, build_model_from_spec
    from lsst.meas.extensions.deepdisc.core.scaling import ScalingSpec

    torch.manual_seed(0)
    spec = ModelSpec(
        architecture="compact-R18-FPN",
        bands=("g", "r", "i"),
        class_names=tuple(CLASSES),
        overrides={"TEST.DETECTIONS_PER_IMAGE": 100},
    )
    package = ModelPackage.from_model(
        build_model_from_spec(spec), spec, ScalingSpec("asinh_per_band"), name="test-artifacts"
    )
    image = detect_image()
    everything = detect_task(minDetectionSnr=0.0).run(image, package, tract=3, patch=7)
    catalog = everything.catalog
    is_artifact = np.asarray(catalog["is_artifact"], dtype=bool)
    assert is_artifact.any() and (~is_artifact).any(), "the seeded random model finds both kinds"
    np.testing.assert_array_equal(
        is_artifact, np.char.startswith(catalog["class_name"].astype(str), "artifact_")
    )
    assert not np.any(catalog["detect_isPrimary"][is_artifact])
    assert not np.any(catalog["flag_in_artifact"][is_artifact])
    assert np.all(catalog["family_size"][is_artifact] == 1)
    mask = everything.artifactMask
    assert int(np.sum(mask["n_instances"])) == int(is_artifact.sum())
    expected = artifact_mask_image(build_artifact_mask(catalog))
    np.testing.assert_array_equal(artifact_mask_image(mask), expected)
    # The S/N cut applies to sources only: every artifact survives even a cut that drops most sources.
    snr = np.asarray(catalog["detection_snr"], dtype=float)
    cut = float(np.nanmax(snr)) + 1.0
    task = detect_task(minDetectionSnr=cut)
    kept = task.run(image, package, tract=3, patch=7).catalog
    assert len(kept) == int(is_artifact.sum()) and np.all(kept["is_artifact"])
    assert task.metadata["n_artifacts"] == len(kept)
