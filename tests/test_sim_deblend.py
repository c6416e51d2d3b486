"""The moment-seeded template deblender and the object tables, on synthetic images and tiny patches."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.footprints import spans_to_mask, unflatten_spans
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MultibandImage
from lsst.meas.extensions.deepdisc.sim.deblend import DeblenderConfig, deblend_patch
from lsst.meas.extensions.deepdisc.sim.ids import unpack_id
from lsst.meas.extensions.deepdisc.sim.measure import build_object_tables
from lsst.meas.extensions.deepdisc.sim.models import (
    KernelBank,
    difference_kernels,
    gaussian_morph,
    integrated_gaussian,
    render_sources,
)
from lsst.meas.extensions.deepdisc.sim.presets import get_preset
from lsst.meas.extensions.deepdisc.sim.scene import simulate_patch
from lsst.meas.extensions.deepdisc.sim.types import DeblendedSource, PatchGeometry

BANDS = ("g", "r", "i")
XY0 = (1000, 2000)
SHAPE = (128, 128)
PSF_SIGMAS = (1.9, 1.75, 1.7)
MODEL_PSF = integrated_gaussian(0.8, 41)
PSFS = {b: integrated_gaussian(s, 41) for b, s in zip(BANDS, PSF_SIGMAS)}
TRACT, PATCH = 5, 3
# (x, y, intrinsic sigma in pixels or 0 for a point source, fluxes in nJy)
STAR = (1030.3, 2040.7, 0.0, (3000.0, 4000.0, 5000.0))
GALAXY = (1090.6, 2090.2, 3.0, (2500.0, 3500.0, 4500.0))
PAIR = ((1036.0, 2095.0, 1.0, (1500.0, 1500.0, 1500.0)), (1045.0, 2097.0, 0.0, (900.0, 1000.0, 1100.0)))


def _geometry() -> PatchGeometry:
    wcs = tan_wcs((10.0, -5.0), crpix=(1.0, 1.0))
    return PatchGeometry(TRACT, PATCH, 1, 1, XY0[0], XY0[1], SHAPE[1], SHAPE[0], wcs)


def _source(x: float, y: float, sigma: float, fluxes: tuple[float, ...]) -> DeblendedSource:
    variance = 0.8**2 + 1.0 / 12.0  # the pixel-integrated model PSF
    # Galaxies are elliptical (axis ratio ~0.7 for sigma = 3 px).
    intrinsic = sigma**2 * np.array([[1.3, 0.3], [0.3, 0.7]])
    box = (int(x) - 15, int(y) - 15, int(x) + 16, int(y) + 16)
    morph = gaussian_morph(intrinsic + variance * np.eye(2), (x, y), box)
    spectrum = np.asarray(fluxes) / morph.sum()
    return DeblendedSource(0, 0, (x, y), (box[1], box[0]), spectrum.astype(np.float32), morph)


def _synthetic(sources, seed: int = 3, sigma: float = 1.0) -> MultibandImage:
    kernels = difference_kernels(PSFS, MODEL_PSF)
    truth = render_sources([_source(*s) for s in sources], kernels, BANDS, SHAPE, XY0)
    rng = np.random.default_rng(seed)
    image = truth + rng.normal(0.0, sigma, truth.shape)
    return MultibandImage(
        bands=BANDS,
        image=image,
        variance=np.full(truth.shape, sigma**2),
        mask=np.zeros(truth.shape, dtype=np.int32),
        wcs=_geometry().wcs,
        xy0=XY0,
    )


@pytest.fixture(scope="module")
def synthetic():
    image = _synthetic([STAR, GALAXY, *PAIR])
    result = deblend_patch(image, PSFS, MODEL_PSF, _geometry())
    tables = build_object_tables(result.blends, image, PSFS, MODEL_PSF, _geometry(), result.parent_flags)
    return image, result, tables


@pytest.fixture(scope="module")
def tiny_patches():
    preset = get_preset("tiny")
    return [simulate_patch(preset, preset.tracts[0].tract, x, 0) for x in range(preset.n_patches_x)]


def _child_near(blends, x: float, y: float, radius: float = 1.5):
    best, best_d = None, radius
    for blend in blends:
        for child in blend.children:
            d = np.hypot(child.peak[0] - x, child.peak[1] - y)
            if d < best_d:
                best, best_d = (blend, child), d
    return best


def _flux(child) -> np.ndarray:
    return np.asarray(child.spectrum, dtype=float) * float(child.morph.sum())


# ------------------------------------------------------------------------------------------------ models


def test_kernel_bank_and_difference_kernels() -> None:
    rng = np.random.default_rng(0)
    kernels = rng.random((3, 21, 21))
    image = rng.random((9, 14))
    bank = KernelBank(kernels)
    expected = np.stack([fftconvolve(image, k) for k in kernels])
    np.testing.assert_allclose(bank.convolve(image), expected, atol=1e-10)
    weights = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(bank.convolve(image, weights), np.tensordot(weights, expected, 1), atol=1e-10)
    # Model PSF convolved with the difference kernel gives back the PSF.
    kernels = difference_kernels(PSFS, MODEL_PSF)
    for band, psf in PSFS.items():
        assert kernels[band].sum() == pytest.approx(1.0)
        np.testing.assert_allclose(fftconvolve(MODEL_PSF, kernels[band], mode="same"), psf, atol=2e-6)
    with pytest.raises(ValueError, match="odd"):
        difference_kernels({"g": np.ones((4, 4))}, MODEL_PSF)


# ------------------------------------------------------------------------------------------ synthetic images


def test_isolated_star_and_galaxy_are_recovered(synthetic) -> None:
    _, result, _ = synthetic
    for x, y, _, fluxes in (STAR, GALAXY):
        found = _child_near(result.blends, x, y, radius=0.3)
        assert found is not None, f"no child at ({x}, {y})"
        blend, child = found
        assert child.is_isolated and child.source_id == blend.parent_id
        assert result.parent_flags[blend.parent_id]["deblend_isolatedParent"]
        np.testing.assert_allclose(_flux(child), fluxes, rtol=0.04)
        assert child.morph.dtype == np.float32 and child.morph.max() == pytest.approx(1.0)
        box_y, box_x = blend.origin
        assert box_y <= child.origin[0] and box_x <= child.origin[1]
        assert child.origin[0] + child.morph.shape[0] <= box_y + blend.shape[0]
        assert unpack_id(blend.parent_id)[:2] == (TRACT, PATCH)


def test_overlapping_pair_is_one_parent_with_two_children(synthetic) -> None:
    _, result, _ = synthetic
    found = [_child_near(result.blends, x, y) for x, y, _, _ in PAIR]
    assert all(f is not None for f in found)
    (blend_a, child_a), (blend_b, child_b) = found
    assert blend_a is blend_b and len(blend_a.children) == 2
    assert not child_a.is_isolated and child_a.source_id != blend_a.parent_id
    for child, (_, _, _, fluxes) in zip((child_a, child_b), PAIR):
        np.testing.assert_allclose(_flux(child), fluxes, rtol=0.2)
    # Joint fit: the pair's total flux is right even where the split is not perfect.
    np.testing.assert_allclose(_flux(child_a) + _flux(child_b), np.add(PAIR[0][3], PAIR[1][3]), rtol=0.06)


def test_pure_noise_gives_almost_no_detection() -> None:
    image = _synthetic([], seed=11)
    result = deblend_patch(image, PSFS, MODEL_PSF, _geometry())
    assert result.n_detections <= 1


def test_masked_pixels_and_bad_input() -> None:
    image = _synthetic([STAR], seed=5)
    ix, iy = int(round(STAR[0])) - XY0[0], int(round(STAR[1])) - XY0[1]
    # Saturate the star's core in every band: the fit ignores those pixels and still gets the flux.
    image.mask[:, iy - 1 : iy + 2, ix - 1 : ix + 2] |= 1 << DEFAULT_MASK_PLANES["SAT"]
    image.image[:, iy - 1 : iy + 2, ix - 1 : ix + 2] = 1e6
    result = deblend_patch(image, PSFS, MODEL_PSF, _geometry())
    found = _child_near(result.blends, STAR[0], STAR[1], radius=1.0)
    assert found is not None
    np.testing.assert_allclose(_flux(found[1]), STAR[3], rtol=0.1)
    with pytest.raises(ValueError, match="variance"):
        deblend_patch(MultibandImage(bands=BANDS, image=image.image), PSFS, MODEL_PSF, _geometry())
    with pytest.raises(ValueError, match="no PSF image"):
        deblend_patch(image, {"g": PSFS["g"]}, MODEL_PSF, _geometry())
    with pytest.raises(ValueError, match="invalid"):
        DeblenderConfig(detection_threshold=-1.0)


def test_object_tables_structure_and_measurements(synthetic) -> None:
    image, result, (deblend, objects) = synthetic
    n_children = sum(
        len(b.children) for b in result.blends if not (len(b.children) == 1 and b.children[0].is_isolated)
    )
    assert len(deblend) == len(result.blends) + n_children == len(objects)
    np.testing.assert_array_equal(deblend["id"], objects["objectId"])
    assert len(set(deblend["id"])) == len(deblend)
    tract, patch, _ = unpack_id(np.asarray(deblend["id"]))
    assert np.all(tract == TRACT) and np.all(patch == PATCH)
    by_id = {int(i): row for i, row in zip(deblend["id"], deblend)}
    for row in deblend:
        if row["parent"]:
            parent = by_id[int(row["parent"])]
            assert parent["parent"] == 0
            child_mask = spans_to_mask(unflatten_spans(row["spans"]), SHAPE, XY0)
            parent_mask = spans_to_mask(unflatten_spans(parent["spans"]), SHAPE, XY0)
            assert child_mask.any() and not (child_mask & ~parent_mask).any()
        else:
            assert row["nChild"] == int(np.sum(deblend["parent"] == row["id"]))
    np.testing.assert_array_equal(objects["deblend_nChild"], deblend["nChild"])
    assert np.array_equal(objects["detect_isPrimary"], objects["deblend_nChild"] == 0)
    for column in ("coord_ra", "x", "r_psfFlux", "r_cModelFlux", "r_psfFluxErr", "refExtendedness"):
        assert objects[column].description
    assert str(objects["r_psfFlux"].unit) == "nJy"

    def row_near(x: float, y: float):
        d = np.hypot(objects["x"] - x, objects["y"] - y) + 1e3 * (objects["deblend_nChild"] > 0)
        return objects[int(np.argmin(d))]

    star, galaxy = row_near(*STAR[:2]), row_near(*GALAXY[:2])
    for b, band in enumerate(BANDS):
        assert star[f"{band}_psfFlux"] == pytest.approx(STAR[3][b], rel=0.04)
        assert star[f"{band}_cModelFlux"] == pytest.approx(STAR[3][b], rel=0.04)
        assert galaxy[f"{band}_cModelFlux"] == pytest.approx(GALAXY[3][b], rel=0.1)
        assert galaxy[f"{band}_psfFlux"] < 0.9 * galaxy[f"{band}_cModelFlux"]
        # A PSF fit's error with unit variance is 1 / sqrt(sum psf^2).
        expected_error = 1.0 / np.sqrt(np.sum(PSFS[band] ** 2))
        assert star[f"{band}_psfFluxErr"] == pytest.approx(expected_error, rel=0.1)
    assert star["refBand"] == "i" and star["refExtendedness"] == 0.0
    assert galaxy["refExtendedness"] == 1.0
    assert abs(star["coord_dec"] - image.pixel_to_sky(np.array([STAR[0]]), np.array([STAR[1]]))[1][0]) < 1e-4


# ------------------------------------------------------------------------------------------- tiny patches


def test_deblender_finds_bright_isolated_sources_with_correct_flux(tiny_patches) -> None:
    ratios, n_candidates, n_found = [], 0, 0
    for patch in tiny_patches:
        truth, g = patch.truth, patch.geometry
        bad = patch.image.plane_mask(("NO_DATA", "SAT", "EDGE"))
        for row in truth[(truth["snr_detection"] > 30) & (truth["blendedness"] < 0.02) & truth["is_inner"]]:
            ix, iy = int(round(row["x"])) - g.x0, int(round(row["y"])) - g.y0
            if bad[max(0, iy - 8) : iy + 9, max(0, ix - 8) : ix + 9].any():
                continue  # saturated stars fragment, objects by masked pixels are partly lost
            n_candidates += 1
            found = _child_near(patch.blends, row["x"], row["y"], radius=2.0)
            if found is None:
                continue
            n_found += 1
            ratios.append(_flux(found[1]) / np.array([row[f"flux_{b}"] for b in patch.image.bands]))
    assert n_candidates >= 10
    assert n_found >= 0.85 * n_candidates
    ratios = np.array(ratios)
    assert np.all(np.median(np.abs(ratios - 1.0), axis=0) < 0.1)
    assert np.mean(np.abs(ratios[:, 1] - 1.0) < 0.15) >= 0.75


def test_deblender_output_is_consistent_and_not_truth(tiny_patches) -> None:
    for patch in tiny_patches:
        g = patch.geometry
        children = [c for b in patch.blends for c in b.children]
        # Detections, not truth: fewer children than truth footprints, none at an exact truth position.
        assert 0.1 * len(patch.truth) < len(children) < patch.metadata["n_truth_with_footprint"]
        truth_xy = {(float(x), float(y)) for x, y in zip(patch.truth["x"], patch.truth["y"])}
        assert not any(c.peak in truth_xy for c in children)
        detected = patch.image.plane_mask(("DETECTED",))
        for blend in patch.blends:
            parent = spans_to_mask(blend.spans, patch.image.shape, (g.x0, g.y0))
            assert parent.any() and detected[parent].all()
            for child in blend.children:
                assert np.all(child.spectrum >= 0) and np.any(child.spectrum > 0)
                assert child.parent_id == blend.parent_id
        assert len(patch.object_deblend) == len(patch.object_patch)
        primary = patch.object_patch[patch.object_patch["detect_isPrimary"]]
        assert np.all(primary["deblend_nChild"] == 0) and len(primary) > 20
        finite = np.isfinite(primary["refExtendedness"])
        assert finite.mean() > 0.9 and set(np.unique(primary["refExtendedness"][finite])) <= {0.0, 1.0}
        assert set(primary["refBand"]) <= set(patch.image.bands)
