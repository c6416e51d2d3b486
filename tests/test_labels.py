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
"""Tests of core.labels on small synthetic scenes of Gaussian sources with exact scarlet-like models.

Every source is a circular Gaussian, so its model-space morphology (the Gaussian convolved with the model
PSF) convolved with the difference kernel is, analytically, the Gaussian convolved with the band's PSF: the
expected footprints, centroids and blendedness are computed from those closed forms, independently of the
renderer used by `build_labels`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table
from pycocotools import mask as mask_utils
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.coco import CATEGORY_ID_OFFSET
from lsst.meas.extensions.deepdisc.core.footprints import spans_to_mask, unflatten_spans
from lsst.meas.extensions.deepdisc.core.labels import (
    LabelConfig,
    empty_labels,
    examples_to_coco,
    labels_to_coco,
    labels_to_examples,
    tile_origins,
)
from lsst.meas.extensions.deepdisc.core.labels import build_labels as core_build_labels
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MissingBandError, MultibandImage
from lsst.meas.extensions.deepdisc.core.scaling import ScalingSpec
from lsst.meas.extensions.deepdisc.sim.scarlet_archive import model_data_from_deblended
from lsst.meas.extensions.deepdisc.sim.types import DeblendedBlend, DeblendedSource

STACK_RULE = {"threshold_mode": "model", "detection_weighting": "sum"}


def build_labels(*args, **kwargs):
    """`build_labels` with the stack's "model > threshold" rule unless a test names another.

    Most tests here check footprints against rendered models exactly, which that rule makes simple.
    """
    return core_build_labels(*args, **{**STACK_RULE, **kwargs})


BANDS = ("g", "r")
PSF_SIGMA = {"g": 1.7, "r": 1.4}
MODEL_PSF_SIGMA = 0.8
NOISE = {"g": 1.0, "r": 2.0}
SHAPE = (64, 80)  # (height, width)
XY0 = (1000, 2000)  # parent coordinates of pixel [0, 0]
PSF_SIZE = 25
NO_DATA_BIT = 1 << DEFAULT_MASK_PLANES["NO_DATA"]

# id, local x, local y, intrinsic sigma (px), flux per band, blend (None: isolated)
SOURCES = [
    (11, 20.3, 20.6, 1.5, (900.0, 1500.0), 1),
    (12, 26.1, 22.2, 1.0, (500.0, 400.0), 1),
    (21, 60.4, 40.2, 2.0, (1200.0, 1000.0), None),
    (31, 14.0, 50.0, 0.0, (300.0, 600.0), None),
]


def gaussian(shape: tuple[int, int], x: float, y: float, sigma: float) -> np.ndarray:
    """Unit-sum circular Gaussian sampled at the pixel centres of an array."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2.0 * sigma**2))
    return image / (2.0 * math.pi * sigma**2)


def psf_image(sigma: float) -> np.ndarray:
    kernel = gaussian((PSF_SIZE, PSF_SIZE), PSF_SIZE // 2, PSF_SIZE // 2, sigma)
    return kernel / kernel.sum()


def observed(index: int, band: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Analytic observed image of a source in a band, on the local grid."""
    _, x, y, size, fluxes, _ = SOURCES[index]
    return fluxes[BANDS.index(band)] * gaussian(shape, x, y, math.hypot(size, PSF_SIGMA[band]))


def make_scene(no_data: np.ndarray | None = None, seed: int = 5, keep_isolated_models: bool = True):
    """Image, scarlet models and object table of the synthetic scene."""
    rng = np.random.default_rng(seed)
    blends: dict[object, DeblendedBlend] = {}
    for source_id, x, y, size, fluxes, blend_key in SOURCES:
        sigma_model = math.hypot(size, MODEL_PSF_SIGMA)
        half = int(math.ceil(5 * sigma_model))
        cx, cy = int(round(x)), int(round(y))
        morph = gaussian((2 * half + 1, 2 * half + 1), half + x - cx, half + y - cy, sigma_model)
        peak = morph.max()
        key = blend_key if blend_key is not None else source_id
        parent_id = 100 + key if blend_key is not None else source_id
        child = DeblendedSource(
            source_id=source_id,
            parent_id=parent_id,
            peak=(x + XY0[0], y + XY0[1]),
            origin=(cy - half + XY0[1], cx - half + XY0[0]),
            spectrum=(np.asarray(fluxes) * peak).astype(np.float32),
            morph=(morph / peak).astype(np.float32),
            is_isolated=blend_key is None,
        )
        if key not in blends:
            blends[key] = DeblendedBlend(parent_id, (0, 0), (0, 0), np.zeros((0, 3)), [])
        blends[key].children.append(child)
    # Parent boxes: generous squares around the members (as a detection footprint would be).
    for blend in blends.values():
        xs = [c.peak[0] for c in blend.children]
        ys = [c.peak[1] for c in blend.children]
        x0, y0 = int(min(xs)) - 9, int(min(ys)) - 9
        x1, y1 = int(max(xs)) + 10, int(max(ys)) + 10
        blend.origin, blend.shape = (y0, x0), (y1 - y0, x1 - x0)
        rows = np.arange(y0, y1, dtype=np.int32)
        blend.spans = np.stack([rows, np.full_like(rows, x0), np.full_like(rows, x1 - 1)], axis=1)
    psfs = {band: psf_image(PSF_SIGMA[band]) for band in BANDS}
    models = model_data_from_deblended(
        list(blends.values()),
        BANDS,
        psfs,
        psf_image(MODEL_PSF_SIGMA),
        keep_isolated_models=keep_isolated_models,
    )
    noise_free = np.stack([sum(observed(i, band) for i in range(len(SOURCES))) for band in BANDS])
    sigma = np.array([NOISE[b] for b in BANDS])[:, None, None]
    image = noise_free + sigma * rng.standard_normal(noise_free.shape)
    variance = np.broadcast_to(sigma**2, noise_free.shape).copy()
    mask = np.zeros(noise_free.shape, dtype=np.int32)
    if no_data is not None:
        image[:, no_data] = np.nan
        variance[:, no_data] = np.nan
        mask[:, no_data] |= NO_DATA_BIT
    # FITS pixels are 1-based; parent coordinates
    wcs = tan_wcs((150.0, 2.0), crpix=(XY0[0] + 40.0, XY0[1] + 32.0))
    multiband = MultibandImage(bands=BANDS, image=image, variance=variance, mask=mask, wcs=wcs, xy0=XY0)
    objects = Table()
    objects["objectId"] = np.array([s[0] for s in SOURCES], dtype=np.int64)
    objects["refExtendedness"] = np.array([1.0, 0.7, np.nan, 0.0])
    objects["refBand"] = np.array(["r", "g", "r", "r"])
    for b, band in enumerate(BANDS):
        objects[f"{band}_cModelFlux"] = np.array([s[4][b] for s in SOURCES])
    objects["detect_isPrimary"] = np.array([True, True, True, False])
    return multiband, models, objects


def expected_footprint(index: int, weights: np.ndarray, threshold: float) -> np.ndarray:
    detection = sum(w * observed(index, band) for w, band in zip(weights, BANDS))
    return detection >= threshold


def label_mask(row) -> np.ndarray:
    return spans_to_mask(unflatten_spans(row["footprint"]), SHAPE, XY0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def scene():
    return make_scene()


@pytest.mark.parametrize("weighting", ["sum", "inverse_variance"])
def test_background_sigma_footprints_match_the_analytic_threshold(scene, weighting):
    image, models, objects = scene
    objects = objects.copy()
    objects["refExtendedness"] = 1.0
    labels = build_labels(
        image,
        models,
        objects,
        threshold_mode="background_sigma",
        sigma_threshold=3.0,
        detection_weighting=weighting,
    )
    sigmas = np.array([NOISE[b] for b in BANDS])
    weights = np.ones(2) if weighting == "sum" else 1.0 / sigmas**2
    threshold = 3.0 * math.sqrt(float(np.sum(weights**2 * sigmas**2)))
    assert labels.meta["detection_threshold"] == pytest.approx(threshold, rel=1e-3)
    assert list(labels["source_id"]) == sorted(s[0] for s in SOURCES)
    for row in labels:
        index = [s[0] for s in SOURCES].index(row["source_id"])
        expected = expected_footprint(index, weights, threshold)
        assert iou(label_mask(row), expected) > 0.97, row["source_id"]
        assert row["footprint_area"] == label_mask(row).sum()
        x0, y0 = int(row["bbox_x0"]) - XY0[0], int(row["bbox_y0"]) - XY0[1]
        rows, cols = np.nonzero(label_mask(row))
        assert (x0, y0) == (cols.min(), rows.min())
        assert (row["bbox_x1"] - XY0[0], row["bbox_y1"] - XY0[1]) == (cols.max(), rows.max())
        # The model-weighted centroid sits on the (Gaussian) source centre.
        _, x, y, *_ = SOURCES[index]
        assert row["centroid_x"] == pytest.approx(x + XY0[0], abs=0.25)
        assert row["centroid_y"] == pytest.approx(y + XY0[1], abs=0.25)
        ra, dec = image.pixel_to_sky(np.array([row["centroid_x"]]), np.array([row["centroid_y"]]))
        assert row["coord_ra"] == pytest.approx(ra[0]) and row["coord_dec"] == pytest.approx(dec[0])


def test_model_mode_is_the_stack_rule_and_clips_to_the_blend_box(scene):
    image, models, objects = scene
    strict = build_labels(image, models, objects, threshold_mode="background_sigma", sigma_threshold=3.0)
    loose = build_labels(image, models, objects)
    for a, b in zip(strict, loose):
        small, large = label_mask(a), label_mask(b)
        assert not np.any(small & ~large)
        assert large.sum() > small.sum()
    # The stack's rule clips to the scarlet blend box; without the clip the PSF wings reach further.
    blend = models.blends[101]
    leaf = next(iter(blend.iter_blends()))
    (by0, bx0), (bh, bw) = leaf.origin, leaf.shape
    for row in loose[np.isin(loose["source_id"], [11, 12])]:
        assert row["bbox_x0"] >= bx0 and row["bbox_x1"] < bx0 + bw
        assert row["bbox_y0"] >= by0 and row["bbox_y1"] < by0 + bh
    unclipped = build_labels(image, models, objects, clip_to_blend_box=False)
    assert np.all(unclipped["footprint_area"][:2] > loose["footprint_area"][:2])
    # A positive threshold keeps fewer pixels than the 'model > 0' rule.
    higher = build_labels(image, models, objects, model_threshold=1.0)
    assert np.all(higher["footprint_area"] < loose["footprint_area"])


def test_classes_from_extendedness_and_the_object_join(scene):
    image, models, objects = scene
    labels = build_labels(image, models, objects, threshold_mode="background_sigma", sigma_threshold=3.0)
    # Source 21 has a NaN extendedness: no class, dropped and counted.
    assert list(labels["source_id"]) == [11, 12, 31]
    assert labels.meta["n_dropped"]["no_class"] == 1
    assert list(labels["class_name"]) == ["galaxy", "galaxy", "star"]
    assert list(labels["class_id"]) == [1, 1, 0]
    assert list(labels["extendedness"]) == [1.0, 0.7, 0.0]
    stricter = build_labels(image, models, objects, extendedness_threshold=0.8)
    assert list(stricter["class_name"]) == ["galaxy", "star", "star"]
    # Class names are configurable; ids follow their order.
    swapped = build_labels(image, models, objects, class_names=("galaxy", "star", "artifact"))
    assert list(swapped["class_id"]) == [0, 0, 1]
    # Sources missing from the object table are dropped and counted.
    partial = build_labels(image, models, objects[objects["objectId"] != 12])
    assert 12 not in partial["source_id"]
    assert partial.meta["n_dropped"]["not_in_objects"] == 1
    assert list(labels["is_primary"]) == [True, True, False]
    assert list(labels["flag_isolated"]) == [False, False, True]
    assert list(labels["parent_id"]) == [101, 101, 31]


def test_magnitudes_and_blendedness(scene):
    image, models, objects = scene
    objects = objects.copy()
    objects["refExtendedness"] = 1.0
    labels = build_labels(image, models, objects, threshold_mode="background_sigma", sigma_threshold=3.0)
    fluxes = {s[0]: dict(zip(BANDS, s[4])) for s in SOURCES}
    ref_band = dict(zip(objects["objectId"], objects["refBand"]))
    for row in labels:
        band = ref_band[row["source_id"]]
        assert row["mag_band"] == band
        assert row["mag"] == pytest.approx(31.4 - 2.5 * math.log10(fluxes[row["source_id"]][band]))
    fixed = build_labels(image, models, objects, ref_band="g")
    assert set(fixed["mag_band"]) == {"g"}
    # Blendedness of the analytic models on the detection image (sum of bands), over the whole patch.
    detection = [sum(observed(i, band) for band in BANDS) for i in range(len(SOURCES))]
    total = sum(detection)
    for row in labels:
        index = [s[0] for s in SOURCES].index(row["source_id"])
        own = detection[index]
        expected = 1.0 - float(np.sum(own * own)) / float(np.sum(total * own))
        assert row["blendedness"] == pytest.approx(expected, abs=0.02)
    blended = labels["blendedness"][np.isin(labels["source_id"], [11, 12])]
    assert np.all(blended > 0.02)
    assert labels["blendedness"][labels["source_id"] == 21][0] < 1e-3


def test_no_data_cut_and_no_data_pixels():
    heavy = np.zeros(SHAPE, dtype=bool)
    heavy[:, :36] = True  # 45% of the patch
    image, models, objects = make_scene(no_data=heavy)
    labels = build_labels(image, models, objects)
    assert len(labels) == 0
    assert "no data" in labels.meta["skipped_reason"]
    assert labels.meta["no_data_fraction"] == pytest.approx(0.45)
    assert labels.colnames == empty_labels().colnames
    # The cut is configurable; sources entirely without data then have no footprint left.
    objects["refExtendedness"] = 1.0
    relaxed = build_labels(image, models, objects, max_no_data_fraction=0.5)
    assert list(relaxed["source_id"]) == [21]
    assert relaxed.meta["n_dropped"]["too_small"] == 3

    light = np.zeros(SHAPE, dtype=bool)
    light[:, 62:] = True  # 22.5% of the patch, through source 21 at x = 60.4
    image, models, objects = make_scene(no_data=light)
    objects["refExtendedness"] = 1.0
    labels = build_labels(image, models, objects, threshold_mode="background_sigma", sigma_threshold=3.0)
    assert labels.meta["skipped_reason"] == ""
    row = labels[labels["source_id"] == 21][0]
    assert row["flag_nodata"] and 0.2 < row["nodata_fraction"] < 0.6
    assert not np.any(label_mask(row) & light)
    others = labels[labels["source_id"] != 21]
    assert not np.any(others["flag_nodata"]) and np.all(others["nodata_fraction"] == 0)


def test_isolated_sources_without_a_stored_model_use_their_footprint():
    image, models, objects = make_scene(keep_isolated_models=False)
    labels = build_labels(image, models, objects, extendedness_threshold=0.5)
    row = labels[labels["source_id"] == 31][0]
    assert row["flag_model_from_image"] and row["flag_isolated"]
    stored = models.isolated[31]
    y0, x0 = stored.origin
    expected = np.zeros(SHAPE, dtype=bool)
    height, width = stored.span_array.shape
    expected[y0 - XY0[1] : y0 - XY0[1] + height, x0 - XY0[0] : x0 - XY0[0] + width] = stored.span_array != 0
    assert np.array_equal(label_mask(row), expected)
    # In background_sigma mode the image inside the stored footprint is thresholded.
    sigma = build_labels(image, models, objects, threshold_mode="background_sigma", sigma_threshold=3.0)
    row = sigma[sigma["source_id"] == 31][0]
    assert 0 < row["footprint_area"] < expected.sum()
    assert not np.any(label_mask(row) & ~expected)


def test_classes_from_a_reference_catalog(scene):
    image, models, objects = scene
    xs = np.array([s[1] for s in SOURCES]) + XY0[0]
    ys = np.array([s[2] for s in SOURCES]) + XY0[1]
    ra, dec = image.pixel_to_sky(xs + 0.5, ys - 0.5)  # 0.14 arcsec away
    reference = Table()
    reference["ra"], reference["dec"] = ra, dec
    reference["is_star"] = np.array([False, True, True, False])
    # Within 1 mag of the object-table magnitudes (refBand r, g, r), except source 12's g magnitude.
    reference["mag_r"] = np.array([23.0, 24.0, 23.7, 24.0])
    reference["mag_g"] = np.array([23.0, 26.0, 23.7, 24.0])
    # Source 31 has no counterpart within the radius.
    reference["ra"][3] += 5.0 / 3600.0
    options = dict(class_source="reference", reference=reference, reference_match_radius_arcsec=0.5)
    labels = build_labels(image, models, objects, **options)
    assert list(labels["source_id"]) == [11, 12, 21]
    assert list(labels["class_name"]) == ["galaxy", "star", "star"]
    assert np.all(labels["ref_separation_arcsec"] < 0.3)
    assert labels.meta["n_dropped"]["no_reference_match"] == 1
    # With a magnitude check, sources whose reference magnitude disagrees by more than 1 mag are dropped.
    checked = build_labels(
        image,
        models,
        objects,
        class_source="reference",
        reference=reference,
        reference_mag_column="mag_{band}",
    )
    assert list(checked["source_id"]) == [11, 21]
    assert checked.meta["n_dropped"]["reference_mag_mismatch"] == 1
    # Keeping unmatched sources with their extendedness class keeps every footprint.
    kept = build_labels(
        image,
        models,
        objects,
        class_source="reference",
        reference=reference,
        reference_mag_column="mag_{band}",
        reference_unmatched="extendedness",
    )
    extendedness = dict(zip(objects["objectId"].tolist(), np.asarray(objects["refExtendedness"]).tolist()))
    assert list(kept["source_id"]) == [11, 12, 21, 31]
    assert kept.meta["n_class_from_extendedness"] == 2
    assert sum(kept.meta["n_dropped"].values()) == 0
    for row in kept:
        if int(row["source_id"]) in (12, 31):
            expected = "galaxy" if extendedness[int(row["source_id"])] >= 0.5 else "star"
            assert row["class_name"] == expected
    with pytest.raises(ValueError, match="reference_unmatched"):
        LabelConfig(reference_unmatched="guess")


def test_bad_inputs_give_clear_errors(scene):
    image, models, objects = scene
    with pytest.raises(ValueError, match="threshold_mode"):
        LabelConfig(threshold_mode="peak")
    with pytest.raises(ValueError, match="star"):
        LabelConfig(class_names=("point", "extended"))
    with pytest.raises(MissingBandError, match="'r'"):
        build_labels(image.select_bands(["g"]), models, objects)
    no_variance = MultibandImage(bands=image.bands, image=image.image, mask=image.mask, xy0=image.xy0)
    with pytest.raises(ValueError, match="variance"):
        build_labels(no_variance, models, objects, threshold_mode="background_sigma")
    assert len(build_labels(no_variance, models, objects)) == 3  # the model rule needs no noise
    with pytest.raises(KeyError, match="refExtendedness"):
        build_labels(image, models, objects[["objectId", "refBand", "g_cModelFlux", "r_cModelFlux"]])
    with pytest.raises(KeyError, match="r_psfFlux"):
        build_labels(image, models, objects, flux_column="{band}_psfFlux")
    with pytest.raises(ValueError, match="object table"):
        build_labels(image, models, None)
    with pytest.raises(ValueError, match="reference catalog"):
        build_labels(image, models, objects, class_source="reference")


def test_tile_origins_cover_the_axis():
    assert tile_origins(100, 40) == [0, 40, 60]
    assert tile_origins(100, 40, overlap=10) == [0, 30, 60]
    assert tile_origins(80, 40) == [0, 40]
    assert tile_origins(30, 40) == [0]
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(100, 40, overlap=40)


@pytest.mark.parametrize("through_arrow", [False, True])
def test_labels_to_examples_crops_and_clips_consistently(through_arrow):
    no_data = np.zeros(SHAPE, dtype=bool)
    no_data[:24, 56:] = True  # the whole top-right tile
    image, models, objects = make_scene(no_data=no_data)
    objects["refExtendedness"] = 1.0
    labels = build_labels(image, models, objects, min_area=1)
    if through_arrow:
        # What a task reading `deepdisc_labels` back gets: flattened int32 spans in a list column.
        from lsst.daf.butler.formatters.parquet import arrow_to_astropy

        from lsst.meas.extensions.deepdisc.butler.tables import to_arrow

        labels = arrow_to_astropy(to_arrow(labels))
    scaling = ScalingSpec("zscore", {})
    scaled, _ = scaling.apply(image)
    tile, overlap, fraction = 24, 4, 0.6
    options = dict(tile_size=tile, overlap=overlap, min_fraction_inside=fraction)
    examples = labels_to_examples(image, labels, scaling, skip_empty=False, **options)
    starts_x, starts_y = tile_origins(SHAPE[1], tile, overlap), tile_origins(SHAPE[0], tile, overlap)
    all_tiles = {(x, y) for x in starts_x for y in starts_y}
    seen = {(e.metadata["tile"][0], e.metadata["tile"][1]) for e in examples}
    skipped = all_tiles - seen
    assert skipped and all(no_data[y : y + tile, x : x + tile].mean() > 0.3 for x, y in skipped)
    full_masks = {int(row["source_id"]): label_mask(row) for row in labels}
    for example in examples:
        tx, ty, width, height = example.metadata["tile"]
        assert example.example_id == f"x{XY0[0] + tx}_y{XY0[1] + ty}"
        assert np.array_equal(example.image, scaled[:, ty : ty + height, tx : tx + width])
        assert np.array_equal(example.valid, ~no_data[ty : ty + height, tx : tx + width])
        kept = {label.source_id for label in example.instances}
        for source_id, full in full_masks.items():
            inside = full[ty : ty + height, tx : tx + width]
            if inside.sum() >= fraction * full.sum() and inside.any():
                assert source_id in kept
            else:
                assert source_id not in kept
        for label, mask in zip(example.instances, example.masks()):
            assert np.array_equal(mask, full_masks[label.source_id][ty : ty + height, tx : tx + width])
            row = labels[labels["source_id"] == label.source_id][0]
            assert label.class_id == row["class_id"] and label.magnitude == pytest.approx(row["mag"])
    assert any(len(e.instances) < len(labels) for e in examples)
    non_empty = labels_to_examples(image, labels, scaling, tile_size=tile, overlap=overlap)
    assert all(e.instances for e in non_empty) and len(non_empty) <= len(examples)


def test_coco_export_round_trips_the_masks(scene):
    image, models, objects = scene
    labels = build_labels(image, models, objects)
    dataset = labels_to_coco(labels, image, image_id=7, file_name="patch")
    assert dataset["images"][0] == {
        "id": 7,
        "width": SHAPE[1],
        "height": SHAPE[0],
        "file_name": "patch",
        "xy0": list(XY0),
    }
    assert {c["name"] for c in dataset["categories"]} == {"star", "galaxy"}
    assert len(dataset["annotations"]) == len(labels)
    for annotation, row in zip(dataset["annotations"], labels):
        assert annotation["category_id"] == row["class_id"] + CATEGORY_ID_OFFSET
        rle = {"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"]}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), label_mask(row))
        assert annotation["bbox"] == [
            row["bbox_x0"] - XY0[0],
            row["bbox_y0"] - XY0[1],
            row["bbox_x1"] - row["bbox_x0"] + 1,
            row["bbox_y1"] - row["bbox_y0"] + 1,
        ]
    examples = labels_to_examples(image, labels, ScalingSpec("zscore", {}), tile_size=40)
    per_tile = examples_to_coco(examples)
    assert [img["file_name"] for img in per_tile["images"]] == [e.example_id for e in examples]
    assert len(per_tile["annotations"]) == sum(len(e.instances) for e in examples)
    first = per_tile["annotations"][0]
    segmentation = first["segmentation"]
    decoded = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"]})
    assert np.array_equal(decoded.astype(bool), examples[0].masks()[0])
    empty = labels_to_coco(empty_labels(), image)
    assert empty["annotations"] == []


def test_default_rule_is_truth_aligned_and_shared_with_the_task() -> None:
    from lsst.meas.extensions.deepdisc.tasks.labels import BuildDeepDiscLabelsConfig

    default = LabelConfig()
    assert (default.threshold_mode, default.sigma_threshold, default.detection_weighting) == (
        "background_sigma",
        1.0,
        "inverse_variance",
    )
    assert BuildDeepDiscLabelsConfig().label_config() == default
