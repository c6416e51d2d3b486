"""Image artifacts: the renderer (core.artifacts), the simulated artifacts and the annotation importer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
from lsst.daf.butler import Butler
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.annotations import (
    DEEPGHOSTBUSTERS_CLASS_MAP,
    annotations_to_label_table,
    default_label_class_names,
    map_class_name,
    polygon_spans,
    read_coco_annotations,
    read_vgg_annotations,
)
from lsst.meas.extensions.deepdisc.core.artifacts import (
    ARTIFACT_CLASSES,
    ARTIFACT_KINDS,
    Artifact,
    ArtifactConfig,
    artifact_class_names,
    artifact_spans,
    draw_artifacts,
    paint_artifacts,
    render_artifact,
    render_artifact_stamp,
)
from lsst.meas.extensions.deepdisc.core.coco import CocoImage
from lsst.meas.extensions.deepdisc.core.footprints import (
    mask_to_spans,
    spans_area,
    spans_bbox,
    spans_to_mask,
    unflatten_spans,
)
from lsst.meas.extensions.deepdisc.core.labels import empty_labels, labels_to_coco
from lsst.meas.extensions.deepdisc.sim import scene as sim_scene
from lsst.meas.extensions.deepdisc.sim.artifacts import (
    ARTIFACT_COUNTER_FLAG,
    cell_artifacts,
    patch_artifacts,
    render_patch_artifacts,
)
from lsst.meas.extensions.deepdisc.sim.ids import MAX_COUNTER, TRUTH_COUNTER_FLAG, unpack_id
from lsst.meas.extensions.deepdisc.sim.presets import PRESETS, get_preset, patch_geometry
from lsst.meas.extensions.deepdisc.sim.repo import ALL_DATASET_TYPES, TRUTH_ARTIFACTS, build_sim_repo
from lsst.meas.extensions.deepdisc.sim.scene import no_data_region, simulate_patch

from sim_fixtures import gaussian_patch

TINY = get_preset("tiny")
TINY_ARTIFACTS = dataclasses.replace(
    TINY,
    name="tiny_artifacts",
    artifact_rate=3.0,
    artifact_anywhere_per_mpix=15.0,
    artifact_star_mag_max=17.0,
)


def _disc(**kwargs) -> Artifact:
    values = dict(kind="ghost_disc", artifact_class="ghost_bright", x=40.0, y=30.0, surface_brightness=(2.0,))
    values.update(kwargs)
    return Artifact(radius=values.pop("radius", 12.0), **values)


# ------------------------------------------------------------------------------------------------ renderer


def test_classes_and_validation() -> None:
    assert ARTIFACT_CLASSES == ("ghost_bright", "ghost_faint", "rays")
    assert artifact_class_names() == ("artifact_ghost_bright", "artifact_ghost_faint", "artifact_rays")
    assert _disc().class_name == "artifact_ghost_bright"
    with pytest.raises(ValueError, match="kind"):
        _disc(kind="blob")
    with pytest.raises(ValueError, match="class"):
        _disc(artifact_class="ghost")
    with pytest.raises(ValueError, match="radius"):
        _disc(radius=0.0)
    with pytest.raises(ValueError, match="width and length"):
        Artifact("ray", "rays", 0.0, 0.0, (1.0,), width=0.0, length=10.0)
    with pytest.raises(ValueError, match="inner_radius"):
        _disc(kind="ghost_annulus", inner_radius=20.0)
    with pytest.raises(ValueError, match="3 values for 2 bands"):
        _disc(surface_brightness=(1.0, 2.0, 3.0)).amplitudes(2)
    with pytest.raises(ValueError, match="mask_fraction"):
        render_artifact(_disc(), (10, 10), 1, mask_fraction=0.0)


def test_disc_stamp_values_mask_and_band_amplitudes() -> None:
    disc = _disc(surface_brightness=(1.0, 2.0, 0.5), colour=(1.0, 1.5, 1.0), edge=0.8)
    x0, y0, stamp, mask = render_artifact_stamp(disc, (80, 100), 3)
    assert stamp.dtype == np.float32 and stamp.shape[0] == 3 and stamp.shape[1:] == mask.shape
    # The stamp only covers the support, around the centre.
    assert x0 <= 40 - 12 and x0 + stamp.shape[2] >= 40 + 12 and stamp.shape[2] < 60
    np.testing.assert_allclose(stamp[:, 30 - y0, 40 - x0], [1.0, 3.0, 0.5], rtol=1e-5)
    assert disc.peak_sb_sigma == pytest.approx(3.0)
    # The mask is the geometric disc.
    yy, xx = np.mgrid[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
    np.testing.assert_array_equal(mask, np.hypot(xx - 40.0, yy - 30.0) <= 12.0)
    assert mask.sum() == pytest.approx(math.pi * 144, rel=0.05)
    # Soft edge: inside the mask at least half the peak, outside at most half.
    assert stamp[1][mask].min() >= 0.5 * 3.0 - 1e-5
    assert stamp[1][~mask].max() <= 0.5 * 3.0 + 1e-5
    # The whole-image rendering holds the stamp at its place and nothing else.
    image, full_mask = render_artifact(disc, (80, 100), 3)
    h, w = mask.shape
    np.testing.assert_array_equal(image[:, y0 : y0 + h, x0 : x0 + w], stamp)
    np.testing.assert_array_equal(full_mask[y0 : y0 + h, x0 : x0 + w], mask)
    assert image.sum() == pytest.approx(stamp.sum(), rel=1e-6) and full_mask.sum() == mask.sum()


def test_annulus_patch_ray_and_streak_profiles() -> None:
    ring = Artifact("ghost_annulus", "ghost_faint", 50.0, 50.0, (0.3,), radius=30.0, inner_radius=15.0)
    image, mask = render_artifact(ring, (100, 100), 1)
    assert not mask[50, 50] and image[0, 50, 50] < 1e-3  # the hole
    assert image[0, 50, 50 + 22] == pytest.approx(0.3, rel=1e-3) and mask[50, 72]
    assert not mask[50, 50 + 33]

    patch = Artifact("scattered_patch", "ghost_faint", 60.0, 40.0, (0.2,), radius=10.0, axis_ratio=0.5)
    image, mask = render_artifact(patch, (100, 120), 1, mask_fraction=0.25)
    np.testing.assert_array_equal(mask, image[0] >= 0.25 * 0.2 * (1 - 1e-6))
    assert mask[40, 60 + 16] and not mask[40, 60 + 17]  # 1.665 sigma along the major axis (x)
    assert mask[40 + 8, 60] and not mask[40 + 9, 60]  # half that along the minor axis

    ray = Artifact("ray", "rays", 10.0, 50.0, (1.0,), width=4.0, length=60.0, angle=0.0)
    image, mask = render_artifact(ray, (100, 100), 1)
    assert image[0, 50, 10] == pytest.approx(1.0, rel=1e-4)
    assert image[0, 50, 70] == pytest.approx(0.3, rel=1e-3)  # fades to 30% at its end
    assert mask[50, 12] and mask[50, 68] and not mask[50, 80] and not mask[50, 5]
    assert mask[:, 40].sum() == 5  # |d| <= 1.665 sigma = 1.41 FWHM / 2: rows 48..52

    streak = Artifact("streak", "rays", 50.0, 50.0, (2.0,), width=3.0, length=1000.0, angle=math.radians(30))
    image, mask = render_artifact(streak, (100, 100), 2)
    assert image.max() == pytest.approx(2.0, rel=1e-3)
    # Crosses the image; the line through the centre is inside the mask everywhere.
    xs = np.arange(0, 100)
    ys = np.rint(50 + (xs - 50) * math.tan(math.radians(30))).astype(int)
    inside = (ys >= 0) & (ys < 100)
    assert mask[ys[inside], xs[inside]].all()


def test_long_streak_is_rendered_row_block_by_row_block_consistently() -> None:
    streak = Artifact("streak", "rays", 300.0, 250.0, (1.5,), width=5.0, length=2000.0, angle=0.35)
    image, mask = render_artifact(streak, (500, 600), 1)
    x0, y0, stamp, stamp_mask = render_artifact_stamp(streak, (500, 600), 1)
    # The stamp spans the image's width and the rows the streak crosses (in blocks of rows).
    assert x0 == 0 and stamp.shape[2] == 600 and 0 < y0 < 250 < y0 + stamp.shape[1] < 500
    h = stamp.shape[1]
    np.testing.assert_array_equal(stamp, image[:, y0 : y0 + h])
    np.testing.assert_array_equal(stamp_mask, mask[y0 : y0 + h])
    assert image[:, :y0].max() == 0 and image[:, y0 + h :].max() == 0
    spans = artifact_spans(streak, (500, 600))
    np.testing.assert_array_equal(spans, mask_to_spans(mask))
    # The mask is a band of constant width about the axis: ~2 x 1.665 sigma / cos(angle) pixels per column.
    per_column = mask.sum(axis=0)
    expected = 2 * 1.665 * 5.0 / 2.3548 / math.cos(0.35)
    assert abs(np.median(per_column) - expected) <= 1.0


def test_clipping_offsets_and_empty_stamps() -> None:
    disc = _disc(x=2.0, y=3.0, radius=10.0)
    x0, y0, stamp, mask = render_artifact_stamp(disc, (50, 50), 1)
    assert (x0, y0) == (0, 0) and mask[3, 2]
    outside = _disc(x=-100.0, y=-100.0)
    x0, y0, stamp, mask = render_artifact_stamp(outside, (50, 50), 2, xy0=(7, 9))
    assert (x0, y0) == (7, 9) and stamp.shape == (2, 0, 0) and mask.shape == (0, 0)
    assert artifact_spans(outside, (50, 50)).shape == (0, 3)
    # Parent coordinates: an image at xy0 sees the artifact as the same image at 0 sees the shifted one.
    image_a, mask_a = render_artifact(_disc(x=140.0, y=230.0), (60, 80), 1, xy0=(100, 200))
    image_b, mask_b = render_artifact(_disc(x=140.0, y=230.0).shifted(-100, -200), (60, 80), 1)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    spans = artifact_spans(_disc(x=140.0, y=230.0), (60, 80), xy0=(100, 200))
    np.testing.assert_array_equal(spans, mask_to_spans(mask_a, (100, 200)))


def test_paint_adds_in_noise_units_and_returns_spans() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(2, 64, 64)).astype(np.float32)
    image = base.copy()
    artifacts = [
        _disc(x=1020.0, y=2020.0, radius=8.0, surface_brightness=(1.0, 2.0)),
        Artifact("ray", "rays", 1040.0, 2040.0, (1.0,), width=3.0, length=30.0, angle=1.0),
    ]
    spans = paint_artifacts(image, artifacts, [2.0, 5.0], xy0=(1000, 2000))
    expected = base.copy()
    for artifact, artifact_spans_ in zip(artifacts, spans):
        light, mask = render_artifact(artifact, (64, 64), 2, xy0=(1000, 2000))
        expected += light * np.array([2.0, 5.0], dtype=np.float32)[:, None, None]
        np.testing.assert_array_equal(artifact_spans_, mask_to_spans(mask, (1000, 2000)))
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert spans_bbox(spans[0]) == (1012, 2012, 1028, 2028) and spans_area(spans[1]) > 30 * 3


def test_draw_artifacts_is_deterministic_and_follows_the_sources() -> None:
    stars = np.array([[60.0, 60.0, 14.0], [250.0, 200.0, 15.0], [160.0, 160.0, 15.5]])
    kwargs = dict(sources=stars, rate=4.0, anywhere_rate=3.0, field_centre=(160.0, 160.0))
    first = draw_artifacts(np.random.default_rng(11), (320, 320), 4, **kwargs)
    again = draw_artifacts(np.random.default_rng(11), (320, 320), 4, **kwargs)
    other = draw_artifacts(np.random.default_rng(12), (320, 320), 4, **kwargs)
    assert first == again and first != other
    assert {a.kind for a in first} <= set(ARTIFACT_KINDS) and {a.artifact_class for a in first} <= set(
        ARTIFACT_CLASSES
    )
    config = ArtifactConfig()
    for artifact in first:
        assert len(artifact.surface_brightness) == 4
        if artifact.source_index < 0:
            assert artifact.kind in ("scattered_patch", "streak")
            continue
        star = stars[artifact.source_index]
        if artifact.kind == "ray":
            assert (artifact.x, artifact.y) == (star[0], star[1]) and artifact.artifact_class == "rays"
            continue
        assert artifact.kind in ("ghost_disc", "ghost_annulus")
        low, high = config.bright_sb if artifact.artifact_class == "ghost_bright" else config.faint_sb
        assert low <= artifact.peak_sb_sigma <= high
        # Ghosts sit on the line through the optical axis and their star (star 2 is on the axis).
        if artifact.source_index != 2:
            radial = star[:2] - 160.0
            offset = np.array([artifact.x, artifact.y]) - star[:2]
            assert abs(radial[0] * offset[1] - radial[1] * offset[0]) <= 1e-6 * np.hypot(*radial) * np.hypot(
                *offset
            )
            assert config.ghost_offset[0] <= np.hypot(*offset) <= config.ghost_offset[1]
    assert draw_artifacts(np.random.default_rng(1), (50, 50), 1) == []
    # Brighter stars make more artifacts (rate x 10**(-0.2 (mag - 15)): 1.58 at 14, 0.4 at 17).
    pair = np.array([[50.0, 50.0, 14.0], [50.0, 50.0, 17.0]])
    per_star = np.zeros(2)
    for seed in range(200):
        for artifact in draw_artifacts(np.random.default_rng(seed), (100, 100), 1, sources=pair):
            per_star[artifact.source_index] += 1
    assert per_star[0] / 200 == pytest.approx(1.58, rel=0.2) and per_star[1] / 200 == pytest.approx(
        0.4, rel=0.3
    )


# ------------------------------------------------------------------------------------------------ simulation


def test_presets_without_artifacts_never_run_the_artifact_code(monkeypatch) -> None:
    assert [name for name, preset in PRESETS.items() if preset.has_artifacts] == ["artifacts"]

    def refuse(*args, **kwargs):
        raise AssertionError("a preset without artifacts must not render any")

    monkeypatch.setattr(sim_scene, "render_patch_artifacts", refuse)
    patch = simulate_patch(TINY, 0, 0, 0, truth_models=True)
    assert patch.truth_artifacts is None and "n_artifacts" not in patch.metadata
    assert cell_artifacts(TINY, 0, 0, 0, 1234) == ()


def test_artifacts_preset_is_the_small_tract_plus_artifacts() -> None:
    small, artifacts = get_preset("small"), get_preset("artifacts")
    assert artifacts.has_artifacts and not small.has_artifacts
    plain = dataclasses.replace(
        artifacts,
        name=small.name,
        tracts=small.tracts,
        artifact_rate=0.0,
        artifact_anywhere_per_mpix=0.0,
        artifact_star_mag_max=small.artifact_star_mag_max,
    )
    assert plain == small  # Same geometry, seed and scene knobs: the same objects and noise.
    assert [t.seed for t in artifacts.tracts] == [t.seed for t in small.tracts]
    # Most patches have an artifact, not all (image-level metrics need both).
    with_artifacts = []
    for patch_x, patch_y in artifacts.patches():
        geometry = patch_geometry(artifacts, 0, patch_x, patch_y)
        _, truth = render_patch_artifacts(artifacts, geometry, artifacts.tracts[0].seed, [1.0] * 6)
        with_artifacts.append(len(truth) > 0)
    assert 0.5 * artifacts.n_patches <= sum(with_artifacts) < artifacts.n_patches


@pytest.fixture(scope="module")
def artifact_patches():
    """Patch (0, 0) of the tiny geometry with and without artifacts (same seed)."""
    return simulate_patch(TINY_ARTIFACTS, 0, 0, 0), simulate_patch(TINY, 0, 0, 0)


def test_simulated_artifacts_truth_table(artifact_patches) -> None:
    with_artifacts, _ = artifact_patches
    truth = with_artifacts.truth_artifacts
    geometry = with_artifacts.geometry
    assert len(truth) >= 3 and with_artifacts.metadata["n_artifacts"] == len(truth)
    for name in ("id", "star_id"):
        assert truth[name].dtype == np.int64
    for name in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area"):
        assert np.issubdtype(truth[name].dtype, np.integer)
    assert set(truth["artifact_class"]) <= set(ARTIFACT_CLASSES) and set(truth["kind"]) <= set(ARTIFACT_KINDS)
    assert len(set(truth["id"])) == len(truth)
    tract, _, counter = unpack_id(np.asarray(truth["id"]))
    assert np.all(tract == 0) and np.all((counter & ARTIFACT_COUNTER_FLAG) == ARTIFACT_COUNTER_FLAG)
    assert np.all(counter <= MAX_COUNTER)
    assert not set(truth["id"]) & set(with_artifacts.truth["id"])
    # Ghosts and rays name their star (a truth object, possibly outside the patch); the others none.
    from_star = np.isin(truth["kind"], ["ghost_disc", "ghost_annulus", "ray"])
    np.testing.assert_array_equal(np.asarray(truth["star_id"]) >= 0, from_star)
    _, _, star_counter = unpack_id(np.asarray(truth["star_id"][from_star]))
    assert np.all((star_counter & ARTIFACT_COUNTER_FLAG) == TRUTH_COUNTER_FLAG)
    seed = TINY_ARTIFACTS.tracts[0].seed
    bbox = (geometry.x0, geometry.y0, geometry.x0 + geometry.width, geometry.y0 + geometry.height)
    no_data = no_data_region(TINY_ARTIFACTS, 0, seed, bbox)
    by_id = {entry[0]: entry[2] for entry in patch_artifacts(TINY_ARTIFACTS, 0, bbox, seed)}
    shape, xy0 = (geometry.height, geometry.width), (geometry.x0, geometry.y0)
    for row in truth:
        spans = unflatten_spans(row["spans"])
        assert spans_area(spans) == row["area"] > 0
        assert spans_bbox(spans) == (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"])
        mask = spans_to_mask(spans, shape, xy0)  # raises if outside the patch
        assert not (mask & no_data).any()
        artifact = by_id[int(row["id"])]
        assert (artifact.x, artifact.y, artifact.kind) == (row["x"], row["y"], row["kind"])
        light, rendered = render_artifact(artifact, shape, len(TINY.bands), xy0=xy0)
        # The truth footprint is the label mask, and covers every bright pixel of the artifact.
        np.testing.assert_array_equal(mask, rendered & ~no_data)
        bright = light.max(axis=0) >= 0.6 * row["peak_sb_sigma"]
        assert not (bright & ~no_data & ~mask).any()
        assert row["peak_sb_sigma"] == pytest.approx(artifact.amplitudes(len(TINY.bands)).max())
        assert light.max() <= row["peak_sb_sigma"] * (1 + 1e-5)
        for band, amplitude in zip(TINY.bands, artifact.amplitudes(len(TINY.bands))):
            assert row[f"sb_sigma_{band}"] == pytest.approx(amplitude)


def test_artifacts_add_light_that_the_deblender_sees(artifact_patches) -> None:
    with_artifacts, without = artifact_patches
    geometry = with_artifacts.geometry
    sigmas = np.array([with_artifacts.metadata["pixel_noise_njy"][b] for b in TINY.bands])
    light, _ = render_patch_artifacts(TINY_ARTIFACTS, geometry, TINY.tracts[0].seed, sigmas)
    difference = with_artifacts.image.image.astype(float) - without.image.image
    saturated = (without.image.mask & (1 << without.image.mask_planes["SAT"])) != 0
    finite = np.isfinite(difference) & ~saturated  # saturated pixels stay at the saturation level
    # Same seed, same noise deviates: the only change is the artifacts' light (and its tiny photon noise).
    residual = (np.abs(difference - light) / sigmas[:, None, None])[finite]
    assert np.median(residual) < 1e-3 and np.percentile(residual, 99.9) < 0.2
    np.testing.assert_array_equal(with_artifacts.truth["id"], without.truth["id"])
    np.testing.assert_array_equal(with_artifacts.truth["footprint_area"], without.truth["footprint_area"])
    # The deblender detects (more) pixels inside the artifacts.
    union = np.zeros((geometry.height, geometry.width), dtype=bool)
    for spans in with_artifacts.truth_artifacts["spans"]:
        union |= spans_to_mask(unflatten_spans(spans), union.shape, (geometry.x0, geometry.y0))

    def detected(patch) -> np.ndarray:
        return (patch.image.mask[0] & (1 << patch.image.mask_planes["DETECTED"])) != 0

    assert (detected(with_artifacts) & union).sum() > (detected(without) & union).sum()


def test_overlapping_patches_agree_on_artifacts() -> None:
    seed = TINY_ARTIFACTS.tracts[0].seed
    first = cell_artifacts.__wrapped__(TINY_ARTIFACTS, 0, 0, 0, seed)
    assert first == cell_artifacts.__wrapped__(TINY_ARTIFACTS, 0, 0, 0, seed)
    left, right = (patch_geometry(TINY_ARTIFACTS, 0, i, 0) for i in range(2))
    _, truth_left = render_patch_artifacts(TINY_ARTIFACTS, left, seed, [1.0] * 3)
    _, truth_right = render_patch_artifacts(TINY_ARTIFACTS, right, seed, [1.0] * 3)
    shared = set(truth_left["id"]) & set(truth_right["id"])
    assert shared
    overlap = (right.x0, left.x0 + left.width)
    for artifact_id in shared:
        spans = [
            unflatten_spans(t["spans"][list(t["id"]).index(artifact_id)]) for t in (truth_left, truth_right)
        ]
        clipped = [s[(s[:, 2] >= overlap[0]) & (s[:, 1] < overlap[1])].copy() for s in spans]
        for s in clipped:
            s[:, 1] = np.maximum(s[:, 1], overlap[0])
            s[:, 2] = np.minimum(s[:, 2], overlap[1] - 1)
        np.testing.assert_array_equal(clipped[0], clipped[1])
    # Each artifact is inner in exactly one patch of the tract.
    inner = list(truth_left["id"][truth_left["is_inner"]]) + list(truth_right["id"][truth_right["is_inner"]])
    assert len(inner) == len(set(inner))


def test_sim_repo_writes_truth_artifacts(tmp_path) -> None:
    assert ALL_DATASET_TYPES[TRUTH_ARTIFACTS] == (("skymap", "tract", "patch"), "ArrowAstropy")
    info = build_sim_repo(tmp_path / "repo", preset=TINY_ARTIFACTS, patches=[0])
    butler = Butler.from_config(info.root, collections=info.collection)
    stored = butler.get(TRUTH_ARTIFACTS, info.data_ids[0])
    expected = simulate_patch(TINY_ARTIFACTS, 0, 0, 0).truth_artifacts
    assert stored.colnames == expected.colnames and len(stored) == len(expected) > 0
    np.testing.assert_array_equal(stored["id"], expected["id"])
    for a, b in zip(stored["spans"], expected["spans"]):
        np.testing.assert_array_equal(unflatten_spans(a), unflatten_spans(b))
    assert list(stored["artifact_class"]) == list(expected["artifact_class"])
    again = build_sim_repo(tmp_path / "repo", preset=TINY_ARTIFACTS, patches=[0])
    assert (again.written, again.skipped) == (0, 1)
    # A preset without artifacts registers the dataset type but writes none.
    plain = build_sim_repo(tmp_path / "plain", preset="tiny", patches=[0], simulate=gaussian_patch, seed=5)
    plain_butler = Butler.from_config(plain.root, collections=plain.collection)
    assert TRUTH_ARTIFACTS in {t.name for t in plain_butler.registry.queryDatasetTypes()}
    assert not plain_butler.query_datasets(TRUTH_ARTIFACTS, explain=False)


# ------------------------------------------------------------------------------------------------ importer


def test_polygon_rasterisation() -> None:
    # A square through pixel centres 2..6 covers 5 x 5 pixels; a triangle about half its box.
    square = polygon_spans([2, 6, 6, 2], [2, 2, 6, 6])
    assert spans_area(square) == 25 and spans_bbox(square) == (2, 2, 6, 6)
    triangle = polygon_spans([0, 100, 0], [0, 0, 100])
    assert spans_area(triangle) == 101 * 102 // 2  # every lattice point of the closed triangle
    # Self-touching outline (two lobes): the runs of one row are merged canonically.
    bow = polygon_spans([0, 10, 10, 20, 20, 0], [0, 0, 5, 5, 10, 10])
    mask = spans_to_mask(bow, (11, 21))
    np.testing.assert_array_equal(bow, mask_to_spans(mask))
    clipped = polygon_spans([-5, 5, 5, -5], [-5, -5, 5, 5], clip_shape=(3, 4), xy0=(0, 0))
    assert spans_area(clipped) == 12
    with pytest.raises(ValueError, match="3 vertices"):
        polygon_spans([0, 1], [0, 1])


def _via_records() -> list[dict]:
    return [
        {
            "filename": "ghost_a.jpg",
            "size": 1,
            "regions": [
                {
                    "shape_attributes": {
                        "name": "polygon",
                        "all_points_x": [10, 30, 30, 10],
                        "all_points_y": [5, 5, 15, 15],
                    },
                    "region_attributes": {"Type": "Bright"},
                },
                {
                    "shape_attributes": {"name": "circle", "cx": 60, "cy": 60, "r": 10},
                    "region_attributes": {"Type": "Faint"},
                },
                {
                    "shape_attributes": {
                        "name": "ellipse",
                        "cx": 100,
                        "cy": 40,
                        "rx": 20,
                        "ry": 5,
                        "theta": math.pi / 2,
                    },
                    "region_attributes": {"Type": "Rays"},
                },
                {
                    "shape_attributes": {
                        "name": "polyline",
                        "all_points_x": [0, 8, 8, 0],
                        "all_points_y": [70, 70, 78, 78],
                    },
                    "region_attributes": {"Type": "Rays"},
                },
                {
                    "shape_attributes": {"name": "rect", "x": 120, "y": 0, "width": 4, "height": 9},
                    "region_attributes": {"Type": "Faint"},
                },
            ],
            "file_attributes": {},
        },
        {"filename": "empty.jpg", "size": 1, "regions": [], "file_attributes": {}},
    ]


def test_vgg_annotations(tmp_path) -> None:
    path = tmp_path / "via.json"
    path.write_text(json.dumps(_via_records()))
    records = read_vgg_annotations(path)
    assert list(records) == ["ghost_a.jpg", "empty.jpg"] and records["empty.jpg"] == []
    regions = records["ghost_a.jpg"]
    assert [r.artifact_class for r in regions] == [
        "ghost_bright",
        "ghost_faint",
        "rays",
        "rays",
        "ghost_faint",
    ]
    assert [r.source_class for r in regions] == ["Bright", "Faint", "Rays", "Rays", "Faint"]
    assert [r.shape for r in regions] == ["polygon", "circle", "ellipse", "polyline", "rect"]
    assert regions[0].area == 21 * 11 and regions[0].bbox == (10, 5, 30, 15)
    assert regions[1].area == pytest.approx(math.pi * 100, rel=0.05) and regions[1].bbox == (50, 50, 70, 70)
    # theta = 90 degrees turns the major axis (rx = 20) along y.
    x0, y0, x1, y1 = regions[2].bbox
    assert (
        36 <= y1 - y0 <= 40
        and 8 <= x1 - x0 <= 10
        and regions[2].area == pytest.approx(math.pi * 100, rel=0.06)
    )
    assert regions[3].area == 81 and regions[4].area == 5 * 10
    # Other layouts of the same content: a VIA 2 mapping, a VIA project, VIA 1 region dicts.
    as_mapping = {r["filename"] + "1": r for r in _via_records()}
    project = {"_via_settings": {}, "_via_img_metadata": as_mapping}
    legacy = _via_records()
    legacy[0]["regions"] = {str(i): region for i, region in enumerate(legacy[0]["regions"])}
    for variant in (as_mapping, project, legacy):
        again = read_vgg_annotations(variant)["ghost_a.jpg"]
        for a, b in zip(again, regions):
            np.testing.assert_array_equal(a.spans, b.spans)
    # Placement on the coadd: scale, offset, vertical flip, clipping.
    placed = read_vgg_annotations(_via_records(), scale=2.0, xy0=(1000, 500))["ghost_a.jpg"][0]
    assert placed.bbox == (1000 + 21, 500 + 11, 1000 + 60, 500 + 30)
    flipped = read_vgg_annotations(_via_records(), flip_y_height=100.0)["ghost_a.jpg"][0]
    assert flipped.bbox == (10, 100 - 1 - 15, 30, 100 - 1 - 5)
    clipped = read_vgg_annotations(_via_records(), clip_shape=(12, 200))["ghost_a.jpg"]
    assert clipped[0].bbox == (10, 5, 30, 11) and [r.shape for r in clipped] == ["polygon", "rect"]


def test_class_mapping_and_unknown_classes() -> None:
    assert map_class_name("bright") == "ghost_bright" and map_class_name(" RAYS ") == "rays"
    assert (
        map_class_name("artifact_ghost_faint") == "ghost_faint"
        and map_class_name("ghost_faint") == "ghost_faint"
    )
    assert map_class_name("satellite") is None
    assert map_class_name("satellite", {"Satellite": "rays"}) == "rays"
    assert set(DEEPGHOSTBUSTERS_CLASS_MAP.values()) == set(ARTIFACT_CLASSES)
    with pytest.raises(ValueError, match="not one of"):
        map_class_name("x", {"x": "ghost"})
    records = _via_records()
    records[0]["regions"][1]["region_attributes"] = {"Type": "Satellite"}
    with pytest.raises(ValueError, match="Satellite"):
        read_vgg_annotations(records)
    assert len(read_vgg_annotations(records, on_unknown="skip")["ghost_a.jpg"]) == 4
    assert (
        len(
            read_vgg_annotations(records, class_map={"satellite": "rays", **DEEPGHOSTBUSTERS_CLASS_MAP})[
                "ghost_a.jpg"
            ]
        )
        == 5
    )
    for region in records[0]["regions"]:
        region["region_attributes"] = {"artefact": {"Faint": True, "Bright": False}, "note": "x"}
    with pytest.raises(ValueError, match="class_attribute"):
        read_vgg_annotations(records)
    assert (
        read_vgg_annotations(records, class_attribute="artefact")["ghost_a.jpg"][1].artifact_class
        == "ghost_faint"
    )


def test_coco_polygons_and_rle(tmp_path) -> None:
    from pycocotools import mask as mask_utils

    disc = np.zeros((40, 50), dtype=np.uint8)
    yy, xx = np.mgrid[:40, :50]
    disc[np.hypot(xx - 30, yy - 20) <= 8] = 1
    rle = mask_utils.encode(np.asfortranarray(disc))
    dataset = {
        "images": [{"id": 7, "file_name": "tile.png", "width": 50, "height": 40}],
        "categories": [{"id": 1, "name": "Bright"}, {"id": 2, "name": "artifact_rays"}],
        "annotations": [
            # Pixel edges 0..10 x 0..5: COCO's convention covers exactly 10 x 5 pixels.
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "segmentation": [[0, 0, 10, 0, 10, 5, 0, 5]],
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 2,
                "segmentation": {"size": [40, 50], "counts": rle["counts"].decode()},
            },
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(dataset))
    records = read_coco_annotations(path)["tile.png"]
    assert [r.artifact_class for r in records] == ["ghost_bright", "rays"]
    assert [r.shape for r in records] == ["coco_polygon", "coco_rle"] and [
        r.annotation_id for r in records
    ] == [1, 2]
    assert records[0].area == 50 and records[0].bbox == (0, 0, 9, 4)
    np.testing.assert_array_equal(records[1].spans, mask_to_spans(disc))
    scaled = read_coco_annotations(dataset, scale=2.0, xy0=(100, 200))["tile.png"]
    assert scaled[0].area == 200 and scaled[0].bbox == (100, 200, 119, 209)
    assert scaled[1].area == 4 * records[1].area
    flipped = read_coco_annotations(dataset, flip_y_height=40)["tile.png"]
    np.testing.assert_array_equal(flipped[1].spans, mask_to_spans(disc[::-1]))
    assert flipped[0].bbox == (0, 35, 9, 39)


def test_annotations_become_a_label_table_and_round_trip_through_coco() -> None:
    records = read_vgg_annotations(_via_records(), xy0=(500, 600))["ghost_a.jpg"]
    wcs = tan_wcs((150.0, 2.0), scale_arcsec=0.198)
    labels = annotations_to_label_table(records, first_id=1000, wcs=wcs, tract=3)
    reference = empty_labels()
    assert labels.colnames == reference.colnames
    for name in reference.colnames:
        if name != "footprint":
            assert labels[name].dtype.kind == reference[name].dtype.kind, name
    names = default_label_class_names()
    assert names[:2] == ("star", "galaxy") and labels.meta["class_names"] == list(names)
    assert labels.meta["tract"] == 3 and labels.meta["label_source"] == "annotations"
    assert list(labels["class_name"]) == [r.class_name for r in records]
    assert list(labels["class_id"]) == [names.index(r.class_name) for r in records]
    assert list(labels["source_id"]) == list(range(1000, 1000 + len(records)))
    assert np.all(np.isfinite(labels["coord_ra"])) and np.all(np.isnan(labels["mag"]))
    assert labels["bbox_x0"][0] == records[0].bbox[0] and labels["footprint_area"][0] == records[0].area
    # Through this package's COCO export (RLE masks) and back: the same footprints and classes.
    coco = labels_to_coco(labels, CocoImage(width=200, height=100, xy0=(500, 600), file_name="patch"))
    back = read_coco_annotations(coco, xy0=(500, 600))["patch"]
    assert [r.artifact_class for r in back] == [r.artifact_class for r in records]
    for a, b in zip(back, records):
        np.testing.assert_array_equal(a.spans, b.spans)
    with pytest.raises(ValueError, match="class_names"):
        annotations_to_label_table(records, class_names=("star", "galaxy"))
    mixed = (
        read_vgg_annotations(_via_records())["ghost_a.jpg"][:1]
        + read_coco_annotations(
            {
                "images": [{"id": 1, "file_name": "b"}],
                "categories": [{"id": 1, "name": "Faint"}],
                "annotations": [
                    {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 4]]}
                ],
            }
        )["b"]
    )
    with pytest.raises(ValueError, match="2 images"):
        annotations_to_label_table(mixed)


def test_a_preset_with_artifacts_can_share_a_repository_with_its_clean_twin() -> None:
    """The registry needs a unique skymap hash: ``artifacts`` has ``small``'s geometry but its own hash."""
    from lsst.meas.extensions.deepdisc.sim.presets import get_preset
    from lsst.meas.extensions.deepdisc.sim.repo import _skymap_hash

    small, artifacts = get_preset("small"), get_preset("artifacts")
    assert (small.n_patches_x, small.patch_inner_size) == (artifacts.n_patches_x, artifacts.patch_inner_size)
    assert _skymap_hash(small) != _skymap_hash(artifacts)
    # Clean presets keep the hash of their geometry alone (existing repositories stay valid).
    geometry = {
        "n_patches": [small.n_patches_x, small.n_patches_y],
        "inner": small.patch_inner_size,
        "border": small.patch_border,
        "scale": small.pixel_scale_arcsec,
        "tracts": [[t.tract, t.ra, t.dec] for t in small.tracts],
    }
    assert _skymap_hash(small) == hashlib.sha1(json.dumps(geometry, sort_keys=True).encode()).digest()
