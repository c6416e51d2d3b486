"""Simulated DRP patches: geometry, determinism, noise, masks, truth and exact models (tiny preset)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from lsst.meas.extensions.deepdisc.core.footprints import spans_to_mask, unflatten_spans
from lsst.meas.extensions.deepdisc.sim.catalog import draw_cell_sources
from lsst.meas.extensions.deepdisc.sim.ids import TRUTH_COUNTER_FLAG, pack_id, unpack_id
from lsst.meas.extensions.deepdisc.sim.models import difference_kernels, render_sources
from lsst.meas.extensions.deepdisc.sim.presets import (
    available_presets,
    get_preset,
    make_tract_wcs,
    patch_geometry,
)
from lsst.meas.extensions.deepdisc.sim.scene import render_scene, simulate_patch
from lsst.meas.extensions.deepdisc.sim.survey import lsst_band_conditions

TINY = get_preset("tiny")
TRACT = TINY.tracts[0].tract


@pytest.fixture(scope="module")
def tiny_patches():
    """Both patches of the tiny preset, deblended (default seed)."""
    return [simulate_patch(TINY, TRACT, patch_x, 0) for patch_x in range(TINY.n_patches_x)]


@pytest.fixture(scope="module")
def exact_patch():
    """Patch 0 with exact models instead of the deblender, and its noise-free scene."""
    return simulate_patch(TINY, TRACT, 0, 0, truth_models=True), render_scene(TINY, TRACT, 0, 0)


def _plane(patch, name: str) -> np.ndarray:
    return (patch.image.mask & (1 << patch.image.mask_planes[name])) != 0


# ------------------------------------------------------------------------------------------------- presets


def test_presets_and_errors() -> None:
    assert {"tiny", "small", "benchmark"} <= set(available_presets())
    small, bench = get_preset("small"), get_preset("benchmark")
    assert small.n_patches == 8 and small.patch_size == 1024 and small.bands == tuple("ugrizy")
    assert TINY.n_patches == 2 and TINY.patch_size == 256 and TINY.bands == ("g", "r", "i")
    assert bench.patch_size == 4100 and bench.patch_border == 100
    roles = {spec.role for spec in bench.tracts}
    assert "held_out" in roles and len({spec.seed for spec in bench.tracts}) == len(bench.tracts)
    with pytest.raises(ValueError, match="unknown simulation preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="outside"):
        patch_geometry(TINY, TRACT, 2, 0)
    with pytest.raises(ValueError, match="no tract"):
        make_tract_wcs(TINY, 99)


def test_patch_geometry_overlaps_and_wcs() -> None:
    left, right = patch_geometry(TINY, TRACT, 0, 0), patch_geometry(TINY, TRACT, 1, 0)
    assert (left.patch, right.patch) == (0, 1)
    assert left.width == left.height == TINY.patch_size
    # Neighbours share twice the border.
    assert left.x0 + left.width - right.x0 == 2 * TINY.patch_border
    inner_left, inner_right = TINY.inner_bbox(0, 0), TINY.inner_bbox(1, 0)
    assert inner_left[2] == inner_right[0]  # inner regions tile the tract
    wcs = left.wcs
    ra0, dec0 = wcs.pixel_to_world_values(100.0, 100.0)
    ra1, dec1 = wcs.pixel_to_world_values(101.0, 100.0)
    step = math.hypot((ra1 - ra0) * math.cos(math.radians(dec0)), dec1 - dec0) * 3600.0
    assert step == pytest.approx(TINY.pixel_scale_arcsec, rel=1e-4)
    assert ra1 < ra0  # east is left


def test_ids_round_trip() -> None:
    ids = pack_id(3, 17, np.array([1, 2, TRUTH_COUNTER_FLAG | 5]))
    tract, patch, counter = unpack_id(ids)
    assert np.all(tract == 3) and np.all(patch == 17)
    assert list(counter) == [1, 2, TRUTH_COUNTER_FLAG | 5]
    assert unpack_id(pack_id(1, 2, 3)) == (1, 2, 3)
    with pytest.raises(ValueError):
        pack_id(1 << 15, 0, 1)


# --------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_pixels_other_seed_other_pixels(tiny_patches) -> None:
    again = simulate_patch(TINY, TRACT, 0, 0)
    first = tiny_patches[0]
    np.testing.assert_array_equal(again.image.image, first.image.image)
    np.testing.assert_array_equal(again.image.mask, first.image.mask)
    np.testing.assert_array_equal(again.truth["id"], first.truth["id"])
    np.testing.assert_array_equal(again.object_patch["objectId"], first.object_patch["objectId"])
    other = simulate_patch(TINY, TRACT, 0, 0, seed=TINY.tracts[0].seed + 1, truth_models=True)
    assert other.metadata["seed"] != first.metadata["seed"]
    assert not np.array_equal(np.nan_to_num(other.image.image), np.nan_to_num(first.image.image))
    assert set(other.truth["id"]) != set(first.truth["id"]) or not np.allclose(
        other.truth["x"], first.truth["x"]
    )


def test_stamps_drawn_by_several_processes_and_no_object_tables_leave_the_patch_unchanged(
    exact_patch,
) -> None:
    patch, scene = exact_patch
    fast = simulate_patch(TINY, TRACT, 0, 0, truth_models=True, jobs=2, object_tables=False)
    assert len(scene.sources) >= 4  # Enough rows for the work to be split.
    np.testing.assert_array_equal(fast.image.image, patch.image.image)
    np.testing.assert_array_equal(fast.image.variance, patch.image.variance)
    np.testing.assert_array_equal(fast.image.mask, patch.image.mask)
    np.testing.assert_array_equal(fast.truth["id"], patch.truth["id"])
    np.testing.assert_array_equal(fast.truth["snr_detection"], patch.truth["snr_detection"])
    assert len(fast.object_patch) == len(fast.object_deblend) == 0 and len(patch.object_patch) > 0


def test_overlapping_patches_share_sources(tiny_patches) -> None:
    left, right = (p.truth for p in tiny_patches)
    x_begin, x_end = tiny_patches[1].geometry.x0, tiny_patches[0].geometry.x0 + tiny_patches[0].geometry.width
    in_overlap_left = left[(left["x"] > x_begin + 3) & (left["x"] < x_end - 4) & (left["footprint_area"] > 0)]
    assert len(in_overlap_left) > 5
    by_id = {int(i): k for k, i in enumerate(right["id"])}
    for row in in_overlap_left:
        match = right[by_id[int(row["id"])]]
        assert match["x"] == row["x"] and match["flux_r"] == row["flux_r"]
    # Each object is "inner" in exactly one patch.
    inner_ids = list(left["id"][left["is_inner"]]) + list(right["id"][right["is_inner"]])
    assert len(inner_ids) == len(set(inner_ids))


# ---------------------------------------------------------------------------------------------------- noise


def test_noise_in_empty_sky_matches_configured_depth(tiny_patches) -> None:
    for patch in tiny_patches:
        occupied = np.zeros(patch.image.shape, dtype=bool)
        g = patch.geometry
        for flat in patch.truth["spans"]:
            occupied |= spans_to_mask(unflatten_spans(flat), occupied.shape, (g.x0, g.y0))
        empty = ~occupied & (patch.image.mask == 0).all(axis=0)
        assert empty.sum() > 5000
        for b, band in enumerate(patch.image.bands):
            _, _, clipped_std = sigma_clipped_stats(patch.image.image[b][empty], sigma=4.0)
            expected = float(np.median(np.sqrt(patch.image.variance[b][empty])))
            assert clipped_std == pytest.approx(expected, rel=0.04)
            assert expected == pytest.approx(patch.metadata["pixel_noise_njy"][band], rel=0.01)


def test_depth_follows_lsst_figures(tiny_patches) -> None:
    for band in TINY.bands:
        nominal = lsst_band_conditions(band).gaussian_point_source_depth()
        for patch in tiny_patches:
            depth = patch.metadata["depth_5sigma_mag"][band]
            # Moffat PSF and the patch-to-patch depth scatter move it by at most a few tenths.
            assert abs(depth - nominal) < 0.35
    r_depth = tiny_patches[0].metadata["depth_5sigma_mag"]["r"]
    assert 26.8 < r_depth < 27.7  # LSST 10-year r-band coadd depth ~27.4


# ---------------------------------------------------------------------------------------------------- truth


def test_truth_table_columns_units_and_types(tiny_patches) -> None:
    truth = tiny_patches[0].truth
    for column in ("id", "ra", "dec", "x", "y", "type", "is_star", "size", "e1", "e2", "blendedness"):
        assert column in truth.colnames
        assert truth[column].description
    for band in TINY.bands:
        assert str(truth[f"flux_{band}"].unit) == "nJy"
        np.testing.assert_allclose(truth[f"mag_{band}"], 31.4 - 2.5 * np.log10(truth[f"flux_{band}"]))
    assert set(truth["type"]) <= {"star", "galaxy"}
    assert np.array_equal(truth["type"] == "star", truth["is_star"])
    assert truth["spans"].dtype == object and all(s.dtype == np.int32 for s in truth["spans"])
    assert len(set(truth["id"])) == len(truth)
    areas = [
        len(unflatten_spans(s)) and int(np.sum(np.diff(unflatten_spans(s)[:, 1:], axis=1) + 1))
        for s in truth["spans"]
    ]
    np.testing.assert_array_equal(areas, truth["footprint_area"])
    assert np.all(truth["blendedness"][truth["footprint_area"] > 0] >= -1e-9)


def test_truth_footprints_lie_on_their_sources(exact_patch) -> None:
    patch, scene = exact_patch
    g = patch.geometry
    weights = np.array([patch.metadata["detection_weights"][b] for b in patch.image.bands])
    detection = np.tensordot(weights, scene.noise_free, axes=1)
    truth = patch.truth
    offsets = []
    for row in truth[(truth["footprint_area"] >= 9) & truth["is_inner"]]:
        spans = unflatten_spans(row["spans"])
        mask = spans_to_mask(spans, patch.image.shape, (g.x0, g.y0))
        ix, iy = int(round(row["x"])) - g.x0, int(round(row["y"])) - g.y0
        assert mask[iy, ix], f"object {row['id']} centre not in its footprint"
        if row["blendedness"] < 0.02:
            yy, xx = np.nonzero(mask)
            values = detection[yy, xx]
            cx = np.sum(values * (xx + g.x0)) / values.sum()
            cy = np.sum(values * (yy + g.y0)) / values.sum()
            offsets.append(math.hypot(cx - row["x"], cy - row["y"]))
    # Neighbours' light inside the footprint pulls the centroid a little (blendedness < 2%).
    assert len(offsets) >= 8
    assert np.median(offsets) < 0.15 and max(offsets) < 1.0


def test_galaxy_and_star_counts_are_plausible(tiny_patches) -> None:
    inner = [p.truth[p.truth["is_inner"]] for p in tiny_patches]
    area_arcmin2 = TINY.n_patches * (TINY.patch_inner_size * TINY.pixel_scale_arcsec / 60.0) ** 2
    galaxies = sum(int(np.sum(~t["is_star"])) for t in inner)
    bright_galaxies = sum(int(np.sum(~t["is_star"] & (t["mag_i"] < 25.0))) for t in inner)
    # Deep counts: tens of galaxies per arcmin^2 to i = 25, hundreds to the simulation limit.
    assert 25 < bright_galaxies / area_arcmin2 < 110
    assert 300 < galaxies / area_arcmin2 < 1200
    faint_half = sum(int(np.sum(~t["is_star"] & (t["mag_i"] > 26.5))) for t in inner)
    assert faint_half > 0.5 * galaxies  # counts keep rising towards the limit
    assert all(
        p.metadata["n_truth_galaxies"] == int(np.sum(~t["is_star"])) for p, t in zip(tiny_patches, inner)
    )
    # Star counts need area: draw a benchmark cell's catalogue (no pixels).
    bench = get_preset("benchmark")
    cell = draw_cell_sources(bench, 0, 1, 1, seed=7)
    stars = cell[cell["is_star"]]
    cell_deg2 = (bench.patch_inner_size * bench.pixel_scale_arcsec / 3600.0) ** 2
    r_depth = lsst_band_conditions("r").gaussian_point_source_depth()
    density = np.sum(stars["mag_r"] < r_depth) / cell_deg2
    assert 2000 < density < 8000
    g_r = stars["mag_g"] - stars["mag_r"]
    assert 0.0 < np.min(g_r) and np.max(g_r) < 1.8
    galaxies_cell = cell[~cell["is_star"]]
    bright = galaxies_cell["mag_i"] < 23
    faint = galaxies_cell["mag_i"] > 26
    assert np.median(galaxies_cell["size"][bright]) > 1.5 * np.median(galaxies_cell["size"][faint])


# ---------------------------------------------------------------------------------------------------- masks


def test_saturated_star_has_sat_and_a_bleed_trail(tiny_patches) -> None:
    found = 0
    for patch in tiny_patches:
        g = patch.geometry
        r = patch.image.bands.index("r")
        sat = _plane(patch, "SAT")[r]
        bright = patch.truth[(patch.truth["is_star"]) & (patch.truth["mag_r"] < 16.0)]
        for star in bright:
            ix, iy = int(round(star["x"])) - g.x0, int(round(star["y"])) - g.y0
            if not (0 <= ix < g.width and 0 <= iy < g.height):
                continue
            assert sat[iy, ix]
            column = np.nonzero(sat[:, ix])[0]
            row = np.nonzero(sat[iy, :])[0]
            assert column.size > row.size  # the trail runs along the column
            assert patch.image.image[r, iy, ix] == pytest.approx(
                patch.metadata["saturation_njy"]["r"], rel=1e-5
            )
            found += 1
    assert found >= 1


def test_edge_no_data_and_detected_planes(tiny_patches) -> None:
    with_no_data = [p for p in tiny_patches if p.metadata["no_data_fraction"] > 0]
    assert len(with_no_data) == 1  # the tiny preset puts a NO_DATA region in one of its two patches
    patch = with_no_data[0]
    no_data = _plane(patch, "NO_DATA")
    assert no_data.all(axis=0).sum() == pytest.approx(patch.metadata["no_data_fraction"] * no_data[0].size)
    assert np.isnan(patch.image.image[no_data]).all() and np.isnan(patch.image.variance[no_data]).all()
    assert np.isfinite(patch.image.image[~no_data]).all()
    for patch in tiny_patches:
        edge = _plane(patch, "EDGE") | _plane(patch, "NO_DATA")
        assert edge[:, 0, :].all() and edge[:, :, -1].all() and edge[:, :, 5].all()
        assert not edge[:, patch.image.height // 2, patch.image.width // 2].any()
        detected = _plane(patch, "DETECTED").any(axis=0)
        assert detected.mean() > 0.05
        assert all(
            spans_to_mask(b.spans, detected.shape, patch.image.xy0)[detected].any() for b in patch.blends[:5]
        )


# ------------------------------------------------------------------------------------------------- metadata


def test_metadata_and_blended_fraction(tiny_patches) -> None:
    for patch in tiny_patches:
        md = patch.metadata
        for key in ("preset", "seed", "tract", "patch", "depth_5sigma_mag", "pixel_noise_njy", "deblender"):
            assert key in md
        assert md["preset"] == "tiny" and md["patch"] == patch.geometry.patch
        assert set(md["depth_5sigma_mag"]) == set(TINY.bands)
        assert md["n_truth_with_footprint"] == int(np.sum(patch.truth["footprint_area"] > 0))
        assert md["n_children"] == sum(len(b.children) for b in patch.blends) > 20
        assert 0.3 < md["blended_fraction"] < 0.8
        assert 0.3 < md["blended_fraction_snr5"] < 0.85
        assert 0.3 < md["detected_blended_fraction"] <= 1.0
        assert "template deblender" in md["deblender"]
        assert patch.psf_images["r"].sum() == pytest.approx(1.0, abs=1e-5)
        assert patch.model_psf.sum() == pytest.approx(1.0, abs=1e-5)
        for band, fwhm in patch.psf_fwhm_arcsec.items():
            assert fwhm == pytest.approx(lsst_band_conditions(band).psf_fwhm_arcsec, rel=0.25)
    assert tiny_patches[0].psf_fwhm_arcsec != tiny_patches[1].psf_fwhm_arcsec  # PSF varies between patches


# ---------------------------------------------------------------------------------------------- exact models


def test_truth_models_reproduce_the_noise_free_image(exact_patch) -> None:
    patch, scene = exact_patch
    g = patch.geometry
    children = [child for blend in patch.blends for child in blend.children]
    assert len(children) == patch.metadata["n_truth_with_footprint"]
    for child in children:
        assert child.morph.max() == pytest.approx(1.0) and child.morph.dtype == np.float32
    kernels = difference_kernels(patch.psf_images, patch.model_psf)
    rendered = render_sources(children, kernels, patch.image.bands, patch.image.shape, (g.x0, g.y0))
    ids = {child.source_id for child in children}
    reference = scene.render_subset([i for i, sid in enumerate(scene.sources["id"]) if sid in ids])
    residual = rendered - reference
    assert np.sqrt(np.sum(residual**2) / np.sum(reference**2)) < 1e-4
    sigma = min(patch.metadata["pixel_noise_njy"].values())
    # Far below the noise, up to a relative 1e-5 of the brightest (saturated) star.
    assert np.abs(residual).max() < 0.01 * sigma + 1e-5 * reference.max()
    # Model fluxes are the true fluxes.
    truth = {int(i): row for i, row in zip(patch.truth["id"], patch.truth)}
    for child in children[:50]:
        flux = child.spectrum * child.morph.sum()
        expected = [truth[child.source_id][f"flux_{b}"] for b in patch.image.bands]
        np.testing.assert_allclose(flux, expected, rtol=1e-4)
    # Parents group exactly the overlapping truth footprints.
    assert all(
        len(b.children) == 1 and b.children[0].is_isolated for b in patch.blends if len(b.children) == 1
    )
    blended = sum(len(b.children) for b in patch.blends if len(b.children) > 1) / len(children)
    assert blended == pytest.approx(patch.metadata["blended_fraction"])


def test_tables_are_described_and_convert_to_arrow(exact_patch) -> None:
    from lsst.meas.extensions.deepdisc.butler.tables import to_arrow

    patch, _ = exact_patch
    for table in (patch.truth, patch.object_deblend, patch.object_patch):
        assert all(table[name].description for name in table.colnames)
        arrow = to_arrow(table)
        assert arrow.num_rows == len(table) and arrow.column_names == table.colnames
    spans = to_arrow(patch.truth).column("spans").to_pylist()
    assert [len(s) for s in spans] == [len(s) for s in patch.truth["spans"]]
