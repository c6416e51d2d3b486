"""Detection catalog: fluxes, apportioning, families and ids, flags, coordinates, empty schema."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from catalog_asserts import assert_same_catalog
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.catalog import build_catalog, catalog_columns
from lsst.meas.extensions.deepdisc.core.footprints import (
    mask_to_spans,
    spans_intersection_area,
    unflatten_spans,
)
from lsst.meas.extensions.deepdisc.core.ids import IdPacker
from lsst.meas.extensions.deepdisc.core.inference import Detections
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MultibandImage

XY0 = (500, 700)
HEIGHT, WIDTH = 60, 80
CLASSES = ["star", "galaxy"]
PACKER = IdPacker.from_skymap(tract_max=20000, patch_nx_max=10, patch_ny_max=10)
NO_DATA = 1 << DEFAULT_MASK_PLANES["NO_DATA"]
SAT = 1 << DEFAULT_MASK_PLANES["SAT"]


def _wcs() -> WCS:
    # FITS 1-based reference pixel in parent coordinates.
    wcs = tan_wcs((150.1, 2.2), crpix=(XY0[0] + 31.0, XY0[1] + 22.0))
    return wcs


def _image(seed: int = 0) -> MultibandImage:
    rng = np.random.default_rng(seed)
    image = rng.normal(5.0, 2.0, size=(2, HEIGHT, WIDTH)).astype(np.float32)
    variance = rng.uniform(0.5, 2.0, size=(2, HEIGHT, WIDTH)).astype(np.float32)
    mask = np.zeros((2, HEIGHT, WIDTH), dtype=np.int32)
    return MultibandImage(("g", "r"), image, variance, mask, wcs=_wcs(), xy0=XY0)


def _disc(cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def _scene() -> tuple[list[np.ndarray], Detections]:
    """Local masks A, B (overlapping) and C (isolated), and detections for them with scores 0.6, 0.9, 0.7."""
    masks = [_disc(20, 25, 7), _disc(29, 27, 6), _disc(62, 40, 5)]
    footprints = [mask_to_spans(m, XY0) for m in masks]
    boxes = []
    for m in masks:
        rows, cols = np.nonzero(m)
        boxes.append(
            [cols.min() + XY0[0], rows.min() + XY0[1], cols.max() + 1 + XY0[0], rows.max() + 1 + XY0[1]]
        )
    detections = Detections(
        boxes=np.array(boxes, dtype=float),
        scores=np.array([0.6, 0.9, 0.7]),
        class_ids=np.array([1, 1, 0]),
        class_probs=np.array([[0.2, 0.8], [0.1, 0.9], [0.7, 0.3]]),
        footprints=footprints,
        tile_index=np.array([0, 1, 1]),
        merged_duplicate=np.array([False, True, False]),
    )
    return masks, detections


def _build(detections: Detections, image: MultibandImage, patch: int = 42, **kwargs):
    return build_catalog(
        detections,
        image,
        class_names=CLASSES,
        tract=9813,
        patch=patch,
        model_name="deepdisc-test",
        model_version="1.2.3",
        id_packer=PACKER,
        **kwargs,
    )


def test_footprint_fluxes_errors_and_footprints_are_exact() -> None:
    image = _image()
    masks, detections = _scene()
    catalog = _build(detections, image)
    assert len(catalog) == 3
    for i, mask in enumerate(masks):
        for b, band in enumerate(image.bands):
            expected = image.image[b][mask].astype(np.float64).sum()
            assert catalog[f"{band}_footprintFlux"][i] == pytest.approx(expected, rel=1e-10)
            expected_err = np.sqrt(image.variance[b][mask].astype(np.float64).sum())
            assert catalog[f"{band}_footprintFluxErr"][i] == pytest.approx(expected_err, rel=1e-10)
        assert catalog["footprint_area"][i] == mask.sum()
        np.testing.assert_array_equal(unflatten_spans(catalog["footprint"][i]), detections.footprints[i])
        assert catalog["footprint"][i].dtype == np.int32
        rows, cols = np.nonzero(mask)
        assert (catalog["bbox_x0"][i], catalog["bbox_y0"][i]) == (cols.min() + XY0[0], rows.min() + XY0[1])
        assert (catalog["bbox_x1"][i], catalog["bbox_y1"][i]) == (cols.max() + XY0[0], rows.max() + XY0[1])
    np.testing.assert_array_equal(catalog["box_x1"], detections.boxes[:, 2])
    assert list(catalog["class_name"]) == ["galaxy", "galaxy", "star"]
    np.testing.assert_allclose(catalog["prob_galaxy"], [0.8, 0.9, 0.3], rtol=1e-6)
    assert list(catalog["flag_merged_duplicate"]) == [False, True, False]
    assert str(catalog["g_footprintFlux"].unit) == "nJy" and str(catalog["coord_ra"].unit) == "deg"


def test_apportioned_flux_adds_up_to_the_union_and_follows_the_weights() -> None:
    image = _image(1)
    masks, detections = _scene()
    catalog = _build(detections, image)
    union = masks[0] | masks[1]
    overlap = masks[0] & masks[1]
    assert overlap.sum() > 0
    detection_image = image.image.astype(np.float64).sum(axis=0)
    weights = [max(detection_image[m].sum(), 0.0) for m in masks[:2]]
    for b, band in enumerate(image.bands):
        plane = image.image[b].astype(np.float64)
        family_total = catalog[f"{band}_apportionedFlux"][0] + catalog[f"{band}_apportionedFlux"][1]
        assert family_total == pytest.approx(plane[union].sum(), rel=1e-10)
        for i in range(2):
            own = plane[masks[i] & ~overlap].sum() + plane[overlap].sum() * weights[i] / sum(weights)
            assert catalog[f"{band}_apportionedFlux"][i] == pytest.approx(own, rel=1e-10)
        # The isolated source keeps its whole footprint flux.
        assert catalog[f"{band}_apportionedFlux"][2] == pytest.approx(catalog[f"{band}_footprintFlux"][2])


def test_sources_without_weight_share_their_overlap_equally() -> None:
    image = _image(1)
    masks, detections = _scene()
    # B's pixels sum to a negative detection weight (clipped to zero), A's to zero: the overlap they
    # both cover is shared half and half.
    image.image[:, masks[0] | masks[1]] = 0.0
    image.image[:, masks[1] & ~masks[0]] = -1.0
    overlap = masks[0] & masks[1]
    image.image[0][overlap] = np.linspace(1.0, 2.0, int(overlap.sum()))
    image.image[1][overlap] = -image.image[0][overlap]
    catalog = _build(detections, image)
    for b, band in enumerate(image.bands):
        plane = image.image[b].astype(np.float64)
        a_own, b_own = plane[masks[0] & ~overlap].sum(), plane[masks[1] & ~overlap].sum()
        half = plane[overlap].sum() / 2
        assert catalog[f"{band}_apportionedFlux"][0] == pytest.approx(a_own + half, rel=1e-12)
        assert catalog[f"{band}_apportionedFlux"][1] == pytest.approx(b_own + half, rel=1e-12)


def test_families_parents_and_ids() -> None:
    image = _image()
    _, detections = _scene()
    catalog = _build(detections, image)
    ids = list(catalog["id"])
    # B has the higher score in the {A, B} family: it is the head, A its child; C is isolated.
    assert list(catalog["parent"]) == [ids[1], 0, 0]
    assert list(catalog["nChild"]) == [0, 1, 0]
    assert list(catalog["family_size"]) == [2, 2, 1]
    assert list(catalog["family_id"]) == [ids[1], ids[1], ids[2]]
    assert catalog.meta["counts"]["families"] == 1 and catalog.meta["counts"]["isolated"] == 1
    for counter, source_id in enumerate(ids, start=1):
        assert PACKER.unpack(source_id) == (9813, 42, counter)
    other_patch = _build(detections, image, patch=43)
    assert not set(ids) & set(other_patch["id"])
    assert len(set(ids) | set(other_patch["id"])) == 6


def test_nodata_and_saturated_pixels_are_flagged_and_excluded() -> None:
    image = _image()
    masks, detections = _scene()
    rows, cols = np.nonzero(masks[2])
    image.image[0, rows[:3], cols[:3]] = np.nan  # 3 NaN pixels in g ...
    image.mask[1, rows[2:6], cols[2:6]] |= NO_DATA  # ... and 4 NO_DATA pixels in r, one of them shared.
    image.mask[1, rows[10], cols[10]] |= SAT
    catalog = _build(detections, image)
    assert catalog["nodata_fraction"][2] == pytest.approx(6 / masks[2].sum())
    assert list(catalog["flag_nodata"]) == [False, False, True]
    assert list(catalog["flag_saturated"]) == [False, False, True]
    g_valid = masks[2].copy()
    g_valid[rows[:3], cols[:3]] = False
    r_valid = masks[2].copy()
    r_valid[rows[2:6], cols[2:6]] = False
    assert catalog["g_footprintFlux"][2] == pytest.approx(
        image.image[0][g_valid].astype(float).sum(), rel=1e-10
    )
    assert catalog["r_footprintFlux"][2] == pytest.approx(
        image.image[1][r_valid].astype(float).sum(), rel=1e-10
    )
    err = np.sqrt(image.variance[0][g_valid].astype(float).sum())
    assert catalog["g_footprintFluxErr"][2] == pytest.approx(err, rel=1e-10)
    assert np.all(np.isfinite(catalog["coord_ra"])) and np.all(np.isfinite(catalog["g_apportionedFlux"]))
    assert catalog.meta["counts"]["flag_nodata"] == 1


def test_centroids_and_sky_coordinates_follow_the_wcs() -> None:
    image = _image(2)
    masks, detections = _scene()
    catalog = _build(detections, image)
    detection_image = image.image.astype(np.float64).sum(axis=0)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for i, mask in enumerate(masks):
        weight = np.clip(detection_image, 0, None) * mask
        expected_x = (weight * (xx + XY0[0])).sum() / weight.sum()
        expected_y = (weight * (yy + XY0[1])).sum() / weight.sum()
        assert catalog["centroid_x"][i] == pytest.approx(expected_x, rel=1e-12)
        assert catalog["centroid_y"][i] == pytest.approx(expected_y, rel=1e-12)
        ra, dec = _wcs().pixel_to_world_values(expected_x, expected_y)
        assert catalog["coord_ra"][i] == pytest.approx(float(ra) % 360, abs=1e-9)
        assert catalog["coord_dec"][i] == pytest.approx(float(dec), abs=1e-9)
    # The reference pixel (FITS 1-based crpix) maps to crval.
    ra0, dec0 = _wcs().pixel_to_world_values(XY0[0] + 30.0, XY0[1] + 21.0)
    assert (float(ra0), float(dec0)) == pytest.approx((150.1, 2.2))
    # Without a WCS the sky coordinates are NaN but the rest is unchanged.
    image.wcs = None
    no_wcs = _build(detections, image)
    assert np.all(np.isnan(no_wcs["coord_ra"])) and np.allclose(no_wcs["centroid_x"], catalog["centroid_x"])


def test_patch_edge_flag_and_margin() -> None:
    image = _image()
    near_edge = np.zeros((HEIGHT, WIDTH), dtype=bool)
    near_edge[10:14, 2:6] = True  # Two pixels from the left border.
    on_edge = np.zeros((HEIGHT, WIDTH), dtype=bool)
    on_edge[HEIGHT - 3 :, 40:44] = True  # Touching the last row.
    inside = np.zeros((HEIGHT, WIDTH), dtype=bool)
    inside[30:33, 30:33] = True
    footprints = [mask_to_spans(m, XY0) for m in (near_edge, on_edge, inside)]
    detections = Detections(
        np.zeros((3, 4)), np.ones(3), np.zeros(3), np.eye(2)[[0, 0, 0]], footprints, np.zeros(3), np.zeros(3)
    )
    assert list(_build(detections, image)["flag_patch_edge"]) == [False, True, False]
    assert list(_build(detections, image, edge_margin=2)["flag_patch_edge"]) == [True, True, False]


def test_empty_detections_give_an_empty_table_with_the_full_schema() -> None:
    image = _image()
    empty = _build(Detections.empty(2), image)
    full = _build(_scene()[1], image)
    assert len(empty) == 0
    expected = [name for name, *_ in catalog_columns(image.bands, CLASSES)]
    assert empty.colnames == full.colnames == expected
    for name in expected:
        assert empty[name].dtype.kind == full[name].dtype.kind, name
        if full[name].dtype.kind != "U":
            assert empty[name].dtype == full[name].dtype, name
        assert empty[name].description and full[name].description, name
        assert empty[name].unit == full[name].unit
    assert empty.meta["counts"]["sources"] == 0
    assert {"g_footprintFlux", "r_apportionedFlux", "prob_star", "prob_galaxy", "id", "parent"} <= set(
        expected
    )


def test_tables_convert_to_arrow_for_the_butler() -> None:
    tables = pytest.importorskip("lsst.meas.extensions.deepdisc.butler.tables")
    image = _image()
    parquet = pytest.importorskip("lsst.daf.butler.formatters.parquet")
    for detections in (_scene()[1], Detections.empty(2)):
        detections.stats = {"tiles": np.int64(4), "device": "cpu", "seconds_total": np.float64(1.5)}
        catalog = _build(detections, image)
        arrow = tables.to_arrow(catalog)
        back = parquet.arrow_to_astropy(arrow)
        assert back.meta["inference"] == {"tiles": 4, "device": "cpu", "seconds_total": 1.5}
        assert back.meta["model"] == {"name": "deepdisc-test", "version": "1.2.3"}
        assert back["g_footprintFlux"].unit == "nJy" and back["id"].description
        assert arrow.column_names == catalog.colnames
        assert str(arrow.schema.field("footprint").type) == "list<item: int32>"
        if len(catalog):
            assert arrow.column("footprint").to_pylist()[0] == catalog["footprint"][0].tolist()
        assert arrow.schema.field("footprint").metadata[b"description"]


def test_many_random_overlapping_sources_match_a_brute_force_reference() -> None:
    rng = np.random.default_rng(5)
    height, width = 200, 240
    image = MultibandImage(
        ("i",), rng.normal(3.0, 1.0, (1, height, width)), np.ones((1, height, width)), xy0=(0, 0)
    )
    masks = []
    for _ in range(150):
        yy, xx = np.mgrid[:height, :width]
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(2, 8)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        if disc.any():
            masks.append(disc)
    footprints = [mask_to_spans(m) for m in masks]
    n = len(footprints)
    detections = Detections(
        np.zeros((n, 4)),
        rng.uniform(0, 1, n),
        np.zeros(n),
        np.ones((n, 1)),
        footprints,
        np.zeros(n),
        np.zeros(n),
    )
    catalog = build_catalog(
        detections,
        image,
        class_names=["object"],
        tract=0,
        patch=0,
        model_name="m",
        model_version="v",
        id_packer=PACKER,
    )
    # Families by union-find over pairwise overlaps.
    family = list(range(n))

    def root(i: int) -> int:
        while family[i] != i:
            i = family[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if spans_intersection_area(footprints[i], footprints[j]):
                family[root(i)] = root(j)
    roots = np.array([root(i) for i in range(n)])
    plane = image.image[0].astype(np.float64)
    for r in np.unique(roots):
        members = np.flatnonzero(roots == r)
        assert set(catalog["family_size"][members]) == {members.size}
        head = members[np.argmax(detections.scores[members])]
        assert set(catalog["family_id"][members]) == {catalog["id"][head]}
        assert catalog["nChild"][head] == members.size - 1
        union = np.logical_or.reduce([masks[i] for i in members])
        assert catalog["i_apportionedFlux"][members].sum() == pytest.approx(plane[union].sum(), rel=1e-9)
    assert (catalog["parent"] == 0).sum() == np.unique(roots).size
    assert catalog.meta["counts"]["families"] == sum(np.sum(roots == r) > 1 for r in np.unique(roots))


def test_bad_input_raises() -> None:
    image = _image()
    _, detections = _scene()
    with pytest.raises(ValueError, match="class names"):
        build_catalog(
            detections,
            image,
            class_names=["star"],
            tract=1,
            patch=1,
            model_name="m",
            model_version="v",
            id_packer=PACKER,
        )
    shifted = Detections(
        detections.boxes,
        detections.scores,
        detections.class_ids,
        detections.class_probs,
        [f + np.array([0, 75, 75], dtype=np.int32) for f in detections.footprints],
        detections.tile_index,
        detections.merged_duplicate,
    )
    with pytest.raises(ValueError, match="outside the image"):
        _build(shifted, image)
    hollow = detections.select([0])
    hollow.footprints[0] = np.zeros((0, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="empty footprints"):
        _build(hollow, image)
    with pytest.raises(ValueError, match="edge_margin"):
        _build(detections, image, edge_margin=-1)


@pytest.mark.parametrize("bad_value", [0.0, -1.0, np.nan, np.inf])
def test_bad_variance_is_left_out_of_errors_and_flagged(bad_value: float) -> None:
    masks, detections = _scene()
    image = _image()
    good = _build(detections, image)
    assert not np.any(good["flag_bad_variance"])
    assert np.all(np.isfinite(good["g_footprintFluxErr"])) and np.all(good["g_footprintFluxErr"] > 0)
    # One pixel of source C gets bad variance in g; all of source A's pixels in r.
    rows, cols = np.nonzero(masks[2])
    image.variance[0, rows[0], cols[0]] = bad_value
    image.variance[1][masks[0]] = bad_value
    catalog = _build(detections, image)
    assert list(catalog["flag_bad_variance"]) == [True, True, True]  # B shares A's pixels in r
    # C: the bad pixel is left out of the g error, which stays finite and positive.
    expected = np.sqrt(np.sum(image.variance[0][masks[2]][1:].astype(np.float64)))
    assert np.isclose(catalog["g_footprintFluxErr"][2], expected)
    # A: no usable variance pixel in r: NaN, never 0.
    assert np.isnan(catalog["r_footprintFluxErr"][0])
    assert np.isfinite(catalog["r_footprintFluxErr"][1]) and catalog["r_footprintFluxErr"][1] > 0
    assert catalog.meta["counts"]["flag_bad_variance"] == 3
    assert np.all(np.isfinite(catalog["g_footprintFlux"]))


def test_primary_flags_default_true_until_set() -> None:
    from lsst.meas.extensions.deepdisc.core.catalog import set_primary_flags

    _, detections = _scene()
    catalog = _build(detections, _image())
    assert np.all(catalog["detect_isPrimary"]) and "no patch or tract region" in catalog.meta["primary_flags"]
    set_primary_flags(catalog, np.array([True, False, True]), np.array([True, True, False]), source="test")
    assert list(catalog["detect_isPrimary"]) == [True, False, False]
    assert catalog.meta["primary_flags"] == "test" and catalog.meta["counts"]["primary"] == 1
    with pytest.raises(ValueError, match="rows"):
        set_primary_flags(catalog, np.array([True]), np.array([True]), source="test")


def test_detection_snr_is_the_inverse_variance_weighted_flux_over_its_error() -> None:
    from lsst.meas.extensions.deepdisc.core.catalog import detection_snr

    flux = np.array([[10.0, 0.0, 5.0], [20.0, 0.0, np.nan]])
    variance = np.array([[4.0, 1.0, 1.0], [16.0, 0.0, 4.0]])
    snr = detection_snr(flux, variance)
    weighted = (10 / 4 + 20 / 16) / np.sqrt(1 / 4 + 1 / 16)
    assert snr[0] == pytest.approx(weighted)
    assert snr[1] == 0.0  # Only the first band is usable; it holds no flux.
    assert snr[2] == pytest.approx(5.0)  # The NaN flux band is left out.
    assert np.isnan(detection_snr(np.ones((2, 1)), np.zeros((2, 1))))[0]
    _, detections = _scene()
    catalog = _build(detections, _image())
    assert np.all(np.isfinite(catalog["detection_snr"]))


def test_footprint_detection_snr_is_the_catalogs_column_without_a_catalog() -> None:
    """The detection task cuts on S/N before building the catalog once: the two must agree exactly."""
    from lsst.meas.extensions.deepdisc.core.catalog import footprint_detection_snr

    image = _image(5)
    masks, detections = _scene()
    rows, cols = np.nonzero(masks[0])
    image.image[0, rows[:4], cols[:4]] = np.nan
    image.mask[1, rows[3:9], cols[3:9]] |= NO_DATA
    image.variance[0, rows[20], cols[20]] = 0.0
    image.image[1] -= 5.0  # Near-zero fluxes in r: S/N values of both signs.
    snr = footprint_detection_snr(detections, image, invalid_planes=("NO_DATA",))
    column = _build(detections, image)["detection_snr"]
    np.testing.assert_array_equal(snr.astype(column.dtype), np.asarray(column))
    # A source's S/N depends on its own footprint only.
    np.testing.assert_array_equal(footprint_detection_snr(detections.select(np.array([2])), image), snr[2:])


def test_select_catalog_rows_equals_a_catalog_built_from_the_kept_detections() -> None:
    """Dropping rows splits families, renumbers ids and re-apportions, exactly as building again would."""
    from lsst.meas.extensions.deepdisc.core.catalog import select_catalog_rows

    rng = np.random.default_rng(11)
    image = _image(3)
    rows, cols = np.nonzero(_disc(29, 27, 6))
    image.mask[0, rows[:5], cols[:5]] |= NO_DATA
    # A chain A - B - D (B links A and D), an isolated C, and an artifact E over C.
    masks = [_disc(20, 25, 7), _disc(29, 27, 6), _disc(62, 40, 5), _disc(38, 28, 5), _disc(64, 42, 9)]
    footprints = [mask_to_spans(m, XY0) for m in masks]
    n = len(masks)
    detections = Detections(
        boxes=rng.uniform(0, 50, (n, 4)),
        scores=np.array([0.6, 0.9, 0.7, 0.5, 0.8]),
        class_ids=np.array([1, 1, 0, 1, 2]),
        class_probs=rng.dirichlet(np.ones(3), n),
        footprints=footprints,
        tile_index=np.zeros(n, dtype=int),
        merged_duplicate=np.array([False, True, False, False, False]),
    )
    kwargs = dict(
        class_names=["star", "galaxy", "artifact_ghost_bright"],
        tract=9813,
        patch=42,
        model_name="m",
        model_version="1",
        id_packer=PACKER,
        artifact_overlap_threshold=0.3,
    )
    catalog = build_catalog(detections, image, **kwargs)
    catalog["reliability"][:] = np.arange(n) / 10
    assert catalog["family_size"][1] == 3 and catalog["flag_in_artifact"][2]
    for keep in ([True, False, True, True, True], [True, True, True, True, False], [False] * n):
        keep = np.array(keep)
        selected = select_catalog_rows(catalog, keep, detections, image)
        expected = build_catalog(detections.select(keep), image, **kwargs)
        expected["reliability"][:] = (np.arange(n) / 10)[keep]
        assert_same_catalog(selected, expected)
    without_b = select_catalog_rows(catalog, np.array([True, False, True, True, True]), detections, image)
    assert list(without_b["family_size"]) == [1, 1, 1, 1]  # B linked A and D.
    assert without_b["flag_in_artifact"][1]  # C, still under the artifact.
    assert catalog["family_size"][1] == 3  # The input is left as it was.


def test_select_catalog_rows_refuses_a_mask_or_detections_that_do_not_fit() -> None:
    from lsst.meas.extensions.deepdisc.core.catalog import select_catalog_rows

    _, detections = _scene()
    image = _image()
    catalog = _build(detections, image)
    with pytest.raises(ValueError, match="one per row"):
        select_catalog_rows(catalog, np.array([True, False]), detections, image)
    with pytest.raises(ValueError, match="one per row"):
        select_catalog_rows(catalog, np.array([1, 0, 1]), detections, image)
    with pytest.raises(ValueError, match="not the ones"):
        select_catalog_rows(
            catalog, np.array([True, False, True]), detections.select(np.array([0, 2, 1])), image
        )
