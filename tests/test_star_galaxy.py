"""The star-galaxy stage: PSF-matched photometry, the classifier, its package field and the catalog step."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage
from lsst.meas.extensions.deepdisc.core.star_galaxy import (
    StarGalaxyClassifier,
    StarGalaxyError,
    apply_star_galaxy,
    band_psf_sigmas,
    best_f1_threshold,
    feature_names,
    fit_star_galaxy,
    measured_bands,
    psf_photometry,
    star_f1,
    star_galaxy_features,
)

FWHM_ARCSEC = 0.8
SCALE = 0.2
SIGMA_PX = FWHM_ARCSEC / SCALE / 2.3548200450309493


def _gaussian_source(shape: tuple[int, int], x: float, y: float, sigma: float, flux: float) -> np.ndarray:
    """A circular Gaussian sampled at pixel centres (pixel ``i`` centred on ``i``)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


def _image(planes: np.ndarray, variance: float = 1.0, bands: tuple[str, ...] = ("g", "r")) -> MultibandImage:
    planes = np.asarray(planes, dtype=np.float32)
    return MultibandImage(
        bands=bands,
        image=planes,
        variance=np.full(planes.shape, variance, dtype=np.float32),
        mask=np.zeros(planes.shape, dtype=np.int32),
        wcs=tan_wcs(scale_arcsec=SCALE),
        metadata={"psf_fwhm_arcsec": dict.fromkeys(bands, FWHM_ARCSEC)},
    )


def test_psf_sigmas_come_from_the_fwhm_and_the_wcs() -> None:
    image = _image(np.zeros((2, 16, 16)))
    assert band_psf_sigmas(image) == pytest.approx({"g": SIGMA_PX, "r": SIGMA_PX})
    image.metadata["psf_fwhm_arcsec"] = {"g": 1.0, "r": float("nan")}
    assert band_psf_sigmas(image) == pytest.approx({"g": 1.0 / SCALE / 2.3548200450309493})
    image.wcs = None
    assert band_psf_sigmas(image) == {}


def test_point_source_flux_is_exact_and_its_excess_zero_while_a_galaxy_has_excess() -> None:
    shape = (64, 96)
    star = _gaussian_source(shape, 20.3, 30.6, SIGMA_PX, 5000.0)
    galaxy = _gaussian_source(shape, 70.2, 31.4, np.hypot(SIGMA_PX, 2.0), 5000.0)
    image = _image(np.stack([star + galaxy, 2 * (star + galaxy)]))
    result = psf_photometry(image, np.array([20.3, 70.2]), np.array([30.6, 31.4]))
    assert result.flux[0] == pytest.approx([5000.0, 10000.0], rel=1e-3)
    assert (np.abs(result.excess[0]) < 1e-3 * result.flux[0]).all()
    # An extended source: the PSF filter misses light the wide filter collects.
    assert (result.excess[1] / result.flux[1] > 0.3).all()
    assert np.isfinite(result.flux_err).all() and (result.flux_err > 0).all()


def test_centroids_are_refined_towards_the_light() -> None:
    shape = (48, 48)
    image = _image(np.stack([_gaussian_source(shape, 24.0, 24.0, SIGMA_PX, 1e4)] * 2))
    result = psf_photometry(image, np.array([24.6]), np.array([23.5]))
    assert result.x[0] == pytest.approx(24.0, abs=0.05) and result.y[0] == pytest.approx(24.0, abs=0.05)
    assert result.flux[0] == pytest.approx([1e4, 1e4], rel=2e-3)
    # Without refinement the miscentred PSF filter loses flux.
    unrefined = psf_photometry(image, np.array([24.6]), np.array([23.5]), refine_iterations=0)
    assert (unrefined.flux[0] < 0.95e4).all()


def test_sources_measured_in_chunks_as_all_at_once(monkeypatch) -> None:
    from lsst.meas.extensions.deepdisc.core.star_galaxy import _psf_photometry

    rng = np.random.default_rng(5)
    shape = (120, 160)
    x, y = rng.uniform(5, 155, 23), rng.uniform(5, 115, 23)
    planes = sum(_gaussian_source(shape, xi, yi, SIGMA_PX, 2000.0) for xi, yi in zip(x, y))
    image = _image(np.stack([planes, 0.5 * planes]) + rng.normal(0.0, 1.0, (2, *shape)))
    start_x, start_y = x + rng.normal(0.0, 0.4, 23), y + rng.normal(0.0, 0.4, 23)
    whole = psf_photometry(image, start_x, start_y)
    monkeypatch.setattr(_psf_photometry, "_CHUNK", 4)  # six chunks, the last one short
    chunked = psf_photometry(image, start_x, start_y)
    for name in ("x", "y", "flux", "flux_err", "excess", "excess_err"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)
    assert np.abs(whole.x - x).max() < np.abs(start_x - x).max()  # the refinement did move them


def test_errors_match_the_scatter_of_pure_noise() -> None:
    rng = np.random.default_rng(3)
    shape = (400, 400)
    image = _image(rng.normal(0.0, 2.0, size=(2, *shape)), variance=4.0)
    grid = np.arange(20, 380, 24, dtype=float)
    x, y = np.meshgrid(grid, grid)
    result = psf_photometry(image, x.ravel(), y.ravel(), refine_iterations=0)
    for values, errors in ((result.flux, result.flux_err), (result.excess, result.excess_err)):
        assert np.std(values) == pytest.approx(np.median(errors), rel=0.15)


def test_no_data_pixels_are_left_out_and_unmeasurable_sources_are_nan() -> None:
    shape = (48, 64)
    planes = np.stack([_gaussian_source(shape, 20.0, 24.0, SIGMA_PX, 3000.0)] * 2)
    image = _image(planes)
    image.mask[:, :, 21:] = 1 << image.mask_planes["NO_DATA"]  # the right half of the source, all bands
    image.image[:, 38:42, 12:16] = np.nan  # a hole
    result = psf_photometry(image, np.array([20.0, 10.0, 40.0]), np.array([24.0, 40.0, 24.0]))
    # Normalised over valid pixels: the flux of the half-covered source is still right.
    assert result.flux[0] == pytest.approx([3000.0, 3000.0], rel=1e-2)
    assert np.isnan(result.flux[2]).all() and np.isnan(result.excess[2]).all()
    assert np.isfinite(result.flux[1]).all()  # beside the hole, enough of the PSF is valid
    no_psf = _image(planes)
    no_psf.metadata = {}
    assert np.isnan(psf_photometry(no_psf, np.array([20.0]), np.array([24.0])).flux).all()


def _columns(rng: np.random.Generator, n: int, star_fraction: float = 0.3) -> tuple[dict, np.ndarray]:
    """Catalog columns of point sources (excess 5% of the flux) and galaxies (25%), with noise."""
    is_star = rng.random(n) < star_fraction
    flux = 10 ** rng.uniform(2, 4, n)
    columns: dict[str, np.ndarray] = {}
    for band in ("g", "r"):
        err = np.full(n, 10.0)
        columns[f"{band}_psfFlux"] = flux + rng.normal(0, 10, n)
        columns[f"{band}_psfFluxErr"] = err
        columns[f"{band}_psfExcess"] = np.where(is_star, 0.05, 0.25) * flux + rng.normal(0, 10, n)
        columns[f"{band}_psfExcessErr"] = err
    columns["prob_star"] = np.full(n, 0.2)
    columns["prob_galaxy"] = np.full(n, 0.8)
    columns["flag_saturated"] = np.zeros(n, dtype=bool)
    columns["centroid_x"] = rng.uniform(0, 1000, n)
    columns["centroid_y"] = rng.uniform(0, 1000, n)
    columns["footprint_area"] = rng.integers(20, 200, n)
    return columns, is_star


def test_features_have_the_documented_names_and_need_their_columns() -> None:
    columns, _ = _columns(np.random.default_rng(0), 50)
    features = star_galaxy_features(columns, ("g", "r"))
    assert features.shape == (50, len(feature_names(("g", "r"))))
    assert feature_names(("g", "r"))[-1] == "colour_g_r"
    del columns["r_psfExcess"]
    with pytest.raises(StarGalaxyError, match="r_psfExcess"):
        star_galaxy_features(columns, ("g", "r"))


def test_a_fitted_classifier_separates_and_survives_its_plain_data_form() -> None:
    rng = np.random.default_rng(1)
    columns, is_star = _columns(rng, 600)
    features = star_galaxy_features(columns, ("g", "r"))
    classifier = fit_star_galaxy(
        features[:400], is_star[:400], ("g", "r"), hidden=(8,), epochs=300, ensemble=2
    )
    assert len(classifier.networks) == 2
    probability = classifier.predict(features[400:])
    assert star_f1(is_star[400:], probability >= 0.5) > 0.95
    classifier.threshold, f1 = best_f1_threshold(probability, is_star[400:])
    assert f1 >= star_f1(is_star[400:], probability >= 0.5)
    copy = StarGalaxyClassifier.from_dict(classifier.to_dict())
    assert np.array_equal(copy.predict(features), classifier.predict(features))
    assert copy.threshold == classifier.threshold
    # Missing measurements take the training mean instead of poisoning the output.
    features[0, 0] = np.nan
    assert np.isfinite(classifier.predict(features)).all()


def test_malformed_classifiers_are_refused_with_the_reason() -> None:
    rng = np.random.default_rng(2)
    columns, is_star = _columns(rng, 100)
    good = fit_star_galaxy(
        star_galaxy_features(columns, ("g", "r")), is_star, ("g", "r"), hidden=(4,), epochs=5, ensemble=1
    ).to_dict()
    cases = [
        ({"format": "pickle"}, "not a star-galaxy classifier"),
        ({"format_version": 99}, "format version 99"),
        (
            {"networks": [{"weights": [[[0.0] * 4] * 3, [[0.0]] * 4], "biases": [[0.0] * 4, [0.0]]}]},
            "does not take",
        ),
        ({"networks": [{**good["networks"][0], "biases": [[0.0] * 4, [float("nan")]]}]}, "finite"),
        ({"networks": []}, "1-32 networks"),
        ({"threshold": 1.5}, "threshold"),
        ({"features": ["something", "else"]}, "features"),
        ({"scale": [0.0] * len(good["scale"])}, "positive scales"),
    ]
    for change, message in cases:
        with pytest.raises(StarGalaxyError, match=message):
            StarGalaxyClassifier.from_dict({**good, **change})
    with pytest.raises(StarGalaxyError, match="both stars and galaxies"):
        fit_star_galaxy(np.zeros((3, 8)), np.zeros(3, bool), ("g", "r"))


def test_the_catalog_step_sets_classes_of_sources_only() -> None:
    rng = np.random.default_rng(4)
    columns, is_star = _columns(rng, 300)
    classifier = fit_star_galaxy(
        star_galaxy_features(columns, ("g", "r")), is_star, ("g", "r"), hidden=(8,), epochs=300
    )
    catalog = Table(columns)
    names = ["star", "galaxy", "artifact_ghost"]
    catalog["class_id"] = np.where(np.arange(300) < 10, 2, 1).astype(np.int32)
    catalog["class_name"] = np.array(names)[catalog["class_id"]]
    catalog["star_galaxy_prob"] = np.full(300, np.nan, dtype=np.float32)
    result = apply_star_galaxy(catalog, classifier, names)
    artifact = np.arange(300) < 10
    assert (catalog["class_name"][artifact] == "artifact_ghost").all()
    assert np.isnan(catalog["star_galaxy_prob"][artifact]).all()
    called = np.asarray(catalog["star_galaxy_prob"][~artifact]) >= classifier.threshold
    assert np.array_equal(np.asarray(catalog["class_name"][~artifact]) == "star", called)
    assert np.array_equal(np.asarray(catalog["class_id"][~artifact]) == 0, called)
    assert result.classified == 290 and result.stars == called.sum() and result.changed == called.sum()
    assert star_f1(is_star[~artifact], called) > 0.95
    assert measured_bands(catalog) == ["g", "r"]
    catalog["r_psfFlux"] = np.nan  # a band without PSF FWHM has the column but no values
    assert measured_bands(catalog) == ["g"]
    with pytest.raises(StarGalaxyError, match="'star' and 'galaxy'"):
        apply_star_galaxy(catalog, classifier, ["point", "extended", "artifact_ghost"])


def test_a_classifier_with_min_bands_runs_on_a_subset_and_refuses_fewer() -> None:
    rng = np.random.default_rng(6)
    columns, is_star = _columns(rng, 300)
    features = star_galaxy_features(columns, ("g", "r"))
    classifier = fit_star_galaxy(features, is_star, ("g", "r"), hidden=(8,), epochs=200, ensemble=1)
    # Without r: its columns are ignored (and may be absent), its colour is missing, the sums use g.
    del columns["r_psfExcess"]
    only_g = star_galaxy_features(columns, ("g", "r"), absent=["r"])
    assert np.isnan(only_g[:, -1]).all() and np.isfinite(only_g[:, 0]).all()
    assert np.median(np.abs(only_g[:, 0] - features[:, 0])) < 0.02  # g alone: the same excess fraction
    with pytest.raises(StarGalaxyError, match="none of the star-galaxy classifier's bands"):
        star_galaxy_features(columns, ("g", "r"), absent=["g", "r"])
    catalog = Table(columns)
    catalog["r_psfExcess"] = np.nan
    catalog["r_psfFlux"] = np.nan
    catalog["class_id"] = np.ones(300, dtype=np.int32)
    catalog["class_name"] = np.full(300, "galaxy")
    catalog["star_galaxy_prob"] = np.full(300, np.nan, dtype=np.float32)
    with pytest.raises(StarGalaxyError, match=r"needs PSF photometry in 2 of its bands \['g', 'r'\]"):
        apply_star_galaxy(catalog, classifier, ["star", "galaxy"])
    classifier.min_bands = 1
    result = apply_star_galaxy(
        catalog, StarGalaxyClassifier.from_dict(classifier.to_dict()), ["star", "galaxy"]
    )
    assert result.classified == 300 and np.isfinite(catalog["star_galaxy_prob"]).all()
    with pytest.raises(StarGalaxyError, match="min_bands must be in"):
        StarGalaxyClassifier.from_dict({**classifier.to_dict(), "min_bands": 3})


def test_the_figure_shows_both_panels() -> None:
    from lsst.meas.extensions.deepdisc.core.plots import star_galaxy_figure

    rng = np.random.default_rng(7)
    is_star = rng.random(200) < 0.2
    metrics = Table(
        {
            "mag_min": [16.0, 16.0, 22.0],
            "mag_max": [24.0, 22.0, 24.0],
            "star_f1": [0.9, 1.0, 0.8],
            "network_star_f1": [0.6, 0.9, 0.1],
            "n_stars": [10, 6, 4],
        }
    )
    figure = star_galaxy_figure(
        np.where(is_star, 0.05, 0.3),
        rng.uniform(18, 25, 200),
        is_star,
        is_star ^ (rng.random(200) < 0.05),
        metrics,
    )
    left, right = figure.axes
    assert left.get_ylabel().startswith("PSF excess") and right.get_ylabel() == "star F1"
    assert len(right.lines) == 2 and len(right.lines[0].get_xdata()) == 2  # the per-bin rows only
