"""Another survey's FITS coadds (ADU, zeropoint, sky not subtracted, no variance, no skymap) to a catalog.

Unit tests of ``deepdisc-ingest-fits``'s one-command path, then an integration test: the files are ingested
into a fresh repository with one command, the ``pipetask run`` command it prints is run as printed with the
shipped model, and the catalog found in the Butler has the injected sources.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from lsst.daf.butler import Butler
from wcs_fixtures import tan_wcs

from lsst.meas.extensions.deepdisc.butler.conversions import multiband_from_masked_images
from lsst.meas.extensions.deepdisc.butler.regions import (
    PatchMismatchError,
    check_coadd_in_patch,
    inside_region,
)
from lsst.meas.extensions.deepdisc.cli.ingest_fits import (
    DEFAULT_COLLECTION,
    IngestError,
    flux_calibration,
    ingest_fits,
    main,
    read_band_fits,
)
from lsst.meas.extensions.deepdisc.core.patch_grid import PatchGrid

BIN = Path(sys.executable).parent
SCALE_ARCSEC = 0.263  # DECam-like
SKY_ADU = 1000.0
GAIN = 4.0
ZEROPOINTS = {"u": 29.0, "g": 30.0, "r": 30.2, "i": 30.1, "z": 29.6, "y": 28.9}
# x, y, total flux in the r band (ADU), Gaussian sigma (px), axis ratio: stars and small galaxies.
SOURCES = [
    (80.0, 95.0, 30000.0, 1.7, 1.0),
    (300.0, 90.0, 20000.0, 1.7, 1.0),
    (210.0, 205.0, 60000.0, 3.5, 0.6),
    (95.0, 300.0, 40000.0, 3.0, 0.7),
    (320.0, 310.0, 25000.0, 1.7, 1.0),
    (200.0, 340.0, 15000.0, 1.7, 1.0),
]
COLOURS = {"u": 0.3, "g": 0.7, "r": 1.0, "i": 1.2, "z": 1.3, "y": 1.3}


def survey_wcs(shape: tuple[int, int] = (400, 400), ra: float = 150.0, dec: float = 2.0) -> WCS:
    """A TAN WCS at (ra, dec), nowhere near the simulated skymaps."""
    wcs = tan_wcs((ra, dec), crpix=((shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0), scale_arcsec=SCALE_ARCSEC)
    return wcs


def survey_image(
    band: str, shape: tuple[int, int] = (400, 400), sky: float = SKY_ADU, seed: int = 0, sources=SOURCES
) -> np.ndarray:
    """ADU image: sky, elliptical Gaussian sources, Poisson noise at ``GAIN``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    expected = np.full(shape, sky)
    for x, y, flux, sigma, q in sources:
        flux = flux * COLOURS[band]
        r2 = (xx - x) ** 2 + ((yy - y) / q) ** 2
        expected += flux / (2 * np.pi * sigma**2 * q) * np.exp(-r2 / (2 * sigma**2))
    rng = np.random.default_rng(seed + ord(band))
    return (rng.poisson(expected * GAIN) / GAIN).astype(np.float32)


def write_survey_file(
    path: Path,
    band: str,
    image: np.ndarray | None = None,
    wcs: WCS | None = None,
    cards: dict | None = None,
) -> Path:
    """A plain FITS image as another survey writes it: ADU, MAGZERO, no variance, no mask."""
    image = survey_image(band) if image is None else image
    header = (wcs or survey_wcs(image.shape)).to_header()
    header["BUNIT"] = "ADU"
    header["MAGZERO"] = ZEROPOINTS[band]
    for key, value in (cards or {}).items():
        if value is None:
            del header[key]
        else:
            header[key] = value
    fits.PrimaryHDU(image, header=header).writeto(path)
    return path


def _njy_per_adu(zeropoint: float) -> float:
    return 10.0 ** (-0.4 * (zeropoint - 31.4))  # AB: 1 nJy is magnitude 31.4


@pytest.fixture
def fresh_repo(tmp_path) -> Butler:
    from lsst.meas.extensions.deepdisc.butler.repository import open_writeable_butler

    butler, _ = open_writeable_butler(str(tmp_path / "repo"), create=True)
    return butler


# ---------------------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------------------


def test_a_file_without_a_unit_is_refused_with_the_way_out(tmp_path) -> None:
    path = write_survey_file(tmp_path / "g.fits", "g", cards={"BUNIT": None, "MAGZERO": None})
    with pytest.raises(IngestError) as caught:
        read_band_fits(path, "g")
    message = str(caught.value)
    assert str(path) in message and "no BUNIT" in message
    assert "--unit" in message and "--zeropoint" in message and "MAGZERO" in message
    # ADU without any zeropoint: the message asks for one.
    counts = write_survey_file(tmp_path / "r.fits", "r", cards={"MAGZERO": None})
    with pytest.raises(IngestError, match=r"r\.fits.*'ADU'.*--zeropoint"):
        read_band_fits(counts, "r")
    weird = write_survey_file(tmp_path / "i.fits", "i", cards={"BUNIT": "furlong", "MAGZERO": None})
    with pytest.raises(IngestError, match=r"i\.fits.*'furlong'.*neither a flux density"):
        read_band_fits(weird, "i")


@pytest.mark.parametrize(
    ("cards", "expected_zeropoint"),
    [
        ({"MAGZERO": 30.0}, 30.0),
        ({"MAGZERO": None, "MAGZPT": 28.5}, 28.5),
        ({"MAGZERO": None, "BUNIT": None, "PHOTZP": 25.0}, 25.0),
        ({"MAGZERO": None, "FLUXMAG0": 10.0**12}, 30.0),
    ],
)
def test_zeropoint_keywords_convert_counts_to_njy(tmp_path, cards, expected_zeropoint) -> None:
    image = np.random.default_rng(3).normal(0.0, 5.0, (64, 64)).astype(np.float32)
    image[30, 30] = 1000.0
    path = write_survey_file(tmp_path / "g.fits", "g", image=image, cards=cards)
    mb = read_band_fits(path, "g")
    assert mb.metadata["zeropoint"] == pytest.approx(expected_zeropoint)
    scale = _njy_per_adu(expected_zeropoint)
    assert mb.metadata["flux_scale_njy"] == pytest.approx(scale, rel=1e-4)
    np.testing.assert_allclose(mb.image[0], image * scale, rtol=1e-4)
    # A magnitude-ZP source has one count: 1000 counts at ZP 30 is magnitude 22.5, 3631e9 * 10**-9 nJy.
    if expected_zeropoint == 30.0:
        assert mb.image[0, 30, 30] == pytest.approx(3631e9 * 10 ** (-0.4 * 22.5), rel=1e-4)


def test_command_line_calibration_wins_and_conflicts_are_refused(tmp_path) -> None:
    header = fits.Header({"BUNIT": "ADU", "MAGZERO": 30.0})
    assert flux_calibration(header, "f.fits", zeropoint=27.0).zeropoint == 27.0
    assert flux_calibration(header, "f.fits", unit="uJy").scale == pytest.approx(1000.0)
    nj = flux_calibration(fits.Header({"BUNIT": "nJy", "MAGZERO": 30.0}), "f.fits")
    assert (nj.scale, nj.origin) == (1.0, "BUNIT")
    # Legacy Survey images are in nanomaggies (AB): 1 nanomaggy is 3631 nJy.
    assert flux_calibration(fits.Header({"BUNIT": "nanomaggy"}), "f.fits").scale == pytest.approx(3631.0)
    with pytest.raises(IngestError, match="'MJy/sr'.*neither a flux density"):
        flux_calibration(fits.Header({"BUNIT": "MJy/sr"}), "f.fits")
    assert flux_calibration(fits.Header({"BUNIT": "counts/s"}), "f.fits", zeropoint=25.0).scale == (
        pytest.approx(_njy_per_adu(25.0), rel=1e-4)
    )
    with pytest.raises(IngestError, match="both calibrate"):
        flux_calibration(header, "f.fits", unit="nJy", zeropoint=27.0)
    with pytest.raises(IngestError, match="FLUXMAG0.*positive"):
        flux_calibration(fits.Header({"FLUXMAG0": -3.0}), "f.fits")


# ---------------------------------------------------------------------------------------------------------
# Background and variance
# ---------------------------------------------------------------------------------------------------------


def test_an_unsubtracted_sky_is_found_and_subtracted_unless_told_otherwise(tmp_path, caplog) -> None:
    raw = write_survey_file(tmp_path / "g.fits", "g")
    scale = _njy_per_adu(ZEROPOINTS["g"])
    caplog.set_level("INFO")
    mb = read_band_fits(raw, "g")
    assert (
        "the sky background was not subtracted" in caplog.text and "--no-subtract-background" in caplog.text
    )
    assert mb.metadata["background_subtracted"]
    assert mb.metadata["background_level"] == pytest.approx(SKY_ADU * scale, rel=0.01)
    sky_sigma = np.sqrt(SKY_ADU / GAIN) * scale
    assert mb.metadata["sky_sigma"] == pytest.approx(sky_sigma, rel=0.05)
    assert abs(np.median(mb.image[0])) < 0.1 * sky_sigma
    # The sources are untouched by the subtraction.
    expected = (survey_image("g") - SKY_ADU) * scale
    np.testing.assert_allclose(mb.image[0][205, 210], expected[205, 210], atol=0.05 * expected[205, 210])

    caplog.clear()
    kept = read_band_fits(raw, "g", subtract_background=False)
    assert not kept.metadata["background_subtracted"]
    assert "looks unsubtracted" in caplog.text and "kept" in caplog.text
    np.testing.assert_allclose(kept.image[0], survey_image("g") * scale, rtol=1e-5)

    # An image whose sky was subtracted is left alone, unless subtraction is forced.
    clean = write_survey_file(tmp_path / "r.fits", "r", image=survey_image("r") - SKY_ADU)
    caplog.clear()
    untouched = read_band_fits(clean, "r")
    assert not untouched.metadata["background_subtracted"]
    assert "not subtracted" not in caplog.text
    np.testing.assert_allclose(
        untouched.image[0], (survey_image("r") - SKY_ADU) * _njy_per_adu(ZEROPOINTS["r"]), rtol=1e-5
    )
    forced = read_band_fits(clean, "r", subtract_background=True)
    assert forced.metadata["background_subtracted"]
    assert not np.array_equal(forced.image[0], untouched.image[0])
    assert np.abs(forced.image[0] - untouched.image[0]).max() < 0.5 * forced.metadata["sky_sigma"]


def test_variance_from_the_sky_noise_and_the_gain(tmp_path) -> None:
    path = write_survey_file(tmp_path / "r.fits", "r")
    scale = _njy_per_adu(ZEROPOINTS["r"])
    without_gain = read_band_fits(path, "r")
    sky_variance = without_gain.metadata["sky_sigma"] ** 2
    np.testing.assert_allclose(without_gain.variance[0], sky_variance, rtol=1e-5)
    with_gain = read_band_fits(path, "r", gain=GAIN)
    variance = with_gain.variance[0]
    assert variance[20, 20] == pytest.approx(sky_variance, rel=0.2)  # Empty sky: the sky term.
    # At the peak of the bright galaxy: sky + source counts / gain (ADU^2), in nJy^2.
    peak = float(survey_image("r")[205, 210] - SKY_ADU)
    assert variance[205, 210] == pytest.approx(sky_variance + peak / GAIN * scale**2, rel=0.05)
    # Measured scatter of the pixels agrees with the estimated variance (source-free corner).
    assert np.std(with_gain.image[0][:40, :40]) == pytest.approx(np.sqrt(sky_variance), rel=0.1)
    with pytest.raises(IngestError, match="gain must be positive"):
        read_band_fits(path, "r", gain=-1.0)


# ---------------------------------------------------------------------------------------------------------
# Skymap from the image, idempotence, replacement
# ---------------------------------------------------------------------------------------------------------


def _files(tmp_path: Path, bands: str = "grz", **kwargs) -> dict[str, Path]:
    folder = tmp_path / "files"
    folder.mkdir(exist_ok=True)
    return {band: write_survey_file(folder / f"{band}.fits", band, **kwargs) for band in bands}


def test_one_patch_skymap_from_the_wcs_then_a_rerun_does_nothing(tmp_path, fresh_repo) -> None:
    files = _files(tmp_path)
    result = ingest_fits(fresh_repo, files, collection=DEFAULT_COLLECTION)
    assert (result.written, result.unchanged, result.tract, result.patches) == (3, 0, 0, [0])
    assert result.skymap.startswith("deepdisc_fits_") and "band z" in result.new_records
    (skymap,) = fresh_repo.query_dimension_records("skymap", explain=False)
    assert (skymap.name, skymap.patch_nx_max, skymap.patch_ny_max) == (result.skymap, 1, 1)
    (patch,) = fresh_repo.query_dimension_records("patch", skymap=result.skymap, explain=False)
    # The patch region is the image: its centre in, a point beyond its edge out.
    wcs = survey_wcs()
    ra, dec = wcs.pixel_to_world_values(np.array([199.5, 2.0, -3.0]), np.array([199.5, 397.0, 200.0]))
    assert list(inside_region(patch.region, ra, dec)) == [True, True, False]
    assert {r.name for r in fresh_repo.query_dimension_records("band", explain=False)} >= {"g", "r", "z"}
    butler = Butler.from_config(str(tmp_path / "repo"), collections=DEFAULT_COLLECTION)
    stored = butler.get("deep_coadd", skymap=result.skymap, tract=0, patch=0, band="r")
    mb = multiband_from_masked_images({"r": stored}, ["r"])
    assert mb.xy0 == (0, 0) and mb.shape == (400, 400)
    np.testing.assert_allclose(
        mb.wcs.pixel_to_world_values(10.0, 20.0), wcs.pixel_to_world_values(10.0, 20.0)
    )
    assert "-d \"skymap='" + result.skymap + "' AND tract=0\"" in result.pipetask_command("REPO")
    assert f"-i {DEFAULT_COLLECTION}" in result.pipetask_command("REPO")

    again = ingest_fits(fresh_repo, files, collection=DEFAULT_COLLECTION)
    assert (again.written, again.unchanged, again.skymap, again.new_records) == (0, 3, result.skymap, [])
    assert [ref.id for ref in again.refs] == [ref.id for ref in result.refs]


def test_a_different_image_for_the_same_patch_needs_replace(tmp_path, fresh_repo) -> None:
    files = _files(tmp_path)
    first = ingest_fits(fresh_repo, files)
    # Same WCS and size (so the same skymap and patch), other pixels: e.g. a reprocessing.
    other = dict(files, g=write_survey_file(tmp_path / "g2.fits", "g", image=survey_image("g", seed=5)))
    with pytest.raises(IngestError, match=r"different deep_coadd.*patch 0 band 'g'.*--replace"):
        ingest_fits(fresh_repo, other)
    replaced = ingest_fits(fresh_repo, other, replace=True)
    assert (replaced.written, replaced.replaced, replaced.unchanged) == (1, 1, 2)
    refs = fresh_repo.query_datasets("deep_coadd", collections=first.run, explain=False)
    assert len(refs) == 3
    stored = fresh_repo.get(
        "deep_coadd", skymap=first.skymap, tract=0, patch=0, band="g", collections=first.run
    )
    expected = read_band_fits(other["g"], "g")
    np.testing.assert_allclose(stored.image.array, expected.image[0], rtol=1e-6)
    # A user skymap name already taken by another image is refused.
    moved = {"g": write_survey_file(tmp_path / "moved.fits", "g", wcs=survey_wcs(dec=3.0))}
    with pytest.raises(IngestError, match="already registered for another image"):
        ingest_fits(fresh_repo, moved, skymap=first.skymap)


def test_a_large_image_becomes_a_grid_of_patches(tmp_path, fresh_repo) -> None:
    shape = (250, 300)
    image = survey_image("g", shape=shape, sources=[(150.0, 120.0, 30000.0, 1.7, 1.0)])
    files = {"g": write_survey_file(tmp_path / "g.fits", "g", image=image, wcs=survey_wcs(shape))}
    result = ingest_fits(fresh_repo, files, patch_size=128, patch_border=16)
    grid = PatchGrid.for_image(shape, (0, 0), 128, 16)
    assert result.patches == list(range(12)) and result.written == 12
    (skymap,) = fresh_repo.query_dimension_records("skymap", explain=False)
    assert (skymap.patch_nx_max, skymap.patch_ny_max) == (4, 3)
    whole = read_band_fits(files["g"], "g")
    regions = {
        r.id: r.region
        for r in fresh_repo.query_dimension_records("patch", skymap=result.skymap, explain=False)
    }
    for ref in result.refs:
        patch_x, patch_y = grid.patch_xy(ref.dataId["patch"])
        mb = multiband_from_masked_images({"g": fresh_repo.get(ref)}, ["g"])
        xb, yb, xe, ye = grid.outer_box(patch_x, patch_y)
        assert (mb.xy0, mb.shape) == ((xb, yb), (ye - yb, xe - xb))
        np.testing.assert_array_equal(mb.image[0], whole.image[0, yb:ye, xb:xe])
        check_coadd_in_patch(mb, regions[ref.dataId["patch"]], ref.dataId)
    # Every pixel's centre is in exactly one patch's inner region (what makes detect_isPrimary unique).
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.49, shape[1] - 0.51, 500), rng.uniform(-0.49, shape[0] - 0.51, 500)
    ra, dec = survey_wcs(shape).pixel_to_world_values(x, y)
    counts = sum(inside_region(region, ra, dec).astype(int) for region in regions.values())
    assert (counts == 1).all()


def test_bands_must_share_shape_and_wcs_naming_the_file(tmp_path, fresh_repo) -> None:
    files = _files(tmp_path, "gr")
    small = write_survey_file(tmp_path / "z_small.fits", "z", image=survey_image("z", shape=(300, 400)))
    with pytest.raises(IngestError, match=r"z_small\.fits \(band 'z'.*g\.fits \(band 'g'.*same pixels"):
        ingest_fits(fresh_repo, {**files, "z": small})
    shifted = write_survey_file(tmp_path / "z_moved.fits", "z", wcs=survey_wcs(ra=150.001))
    with pytest.raises(IngestError, match=r"z_moved\.fits \(band 'z'\).*g\.fits.*one sky grid"):
        ingest_fits(fresh_repo, {**files, "z": shifted})
    assert not fresh_repo.query_dimension_records("skymap", explain=False)  # Nothing was registered.


def test_detection_check_refuses_a_coadd_outside_its_patch(tmp_path, fresh_repo) -> None:
    result = ingest_fits(fresh_repo, _files(tmp_path, "g"))
    (patch,) = fresh_repo.query_dimension_records("patch", skymap=result.skymap, explain=False)
    coadd = multiband_from_masked_images({"g": fresh_repo.get(result.refs[0])}, ["g"])
    check_coadd_in_patch(coadd, patch.region, result.refs[0].dataId)  # Its own patch: fine.
    coadd.wcs = survey_wcs(ra=151.0)
    with pytest.raises(PatchMismatchError, match=r"not in the sky region of that patch.*151\.0"):
        check_coadd_in_patch(coadd, patch.region, result.refs[0].dataId)


def test_cli_creates_the_repository_and_prints_the_next_command(tmp_path, capsys) -> None:
    files = _files(tmp_path)
    repo = tmp_path / "new_repo"
    argv = [str(repo), "--no-model", "--gain", str(GAIN)] + [f"--band={b}={p}" for b, p in files.items()]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (repo / "butler.yaml").exists()
    assert "ingested 3 deep_coadd" in out and f"pipetask run -b {repo} -i {DEFAULT_COLLECTION}" in out
    assert main(argv) == 0
    assert "nothing new" in capsys.readouterr().out
    assert main([*argv, "--no-subtract-background"]) == 1  # Other pixels for the same patch.
    assert "--replace" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# Integration: one command, the printed pipetask command, a catalog query
# ---------------------------------------------------------------------------------------------------------


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "USER": "tester"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _printed_command(stdout: str, program: str) -> list[str]:
    (line,) = [line.strip() for line in stdout.splitlines() if line.strip().startswith(program + " ")]
    args = shlex.split(line)
    return [str(BIN / args[0]), *args[1:]]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("foreign_fits_pipetask")
@pytest.mark.parametrize("bands", ["grz"])
def test_foreign_survey_files_to_a_catalog_with_one_command(tmp_path, bands: str) -> None:
    files = _files(tmp_path, bands)
    repo = tmp_path / "repo"
    ingest = _run(
        [str(BIN / "deepdisc-ingest-fits"), str(repo), "--gain", str(GAIN)]
        + [f"--band={band}={path}" for band, path in files.items()]
    )
    assert "the sky background was not subtracted" in ingest.stderr
    pipetask = _printed_command(ingest.stdout, "pipetask")
    output = pipetask[pipetask.index("-o") + 1]
    assert output == "u/tester/deepdisc"

    detected = _run(pipetask, check=False)
    assert detected.returncode == 0, detected.stdout + detected.stderr

    butler = Butler.from_config(str(repo), collections=output)
    (ref,) = butler.query_datasets("object_deepdisc", explain=False)
    catalog = butler.get(ref)
    wcs = survey_wcs()
    truth_ra, truth_dec = wcs.pixel_to_world_values(
        np.array([s[0] for s in SOURCES]), np.array([s[1] for s in SOURCES])
    )
    ra = np.radians(np.asarray(catalog["coord_ra"], dtype=float))
    dec = np.radians(np.asarray(catalog["coord_dec"], dtype=float))
    found = []
    for t_ra, t_dec in zip(np.radians(truth_ra), np.radians(truth_dec)):
        separation = np.degrees(
            np.arccos(
                np.clip(np.sin(dec) * np.sin(t_dec) + np.cos(dec) * np.cos(t_dec) * np.cos(ra - t_ra), -1, 1)
            )
        )
        nearest = int(np.argmin(separation))
        found.append(separation[nearest] * 3600.0 < 3 * SCALE_ARCSEC)
        if found[-1]:
            assert catalog["detect_isPrimary"][nearest]
    # The shipped model 3.0 on these three bands scores the large elongated source (index 2) at 0.45-0.52,
    # split between star and galaxy, just below its operating point of 0.55: at least 5 of the 6 are found.
    assert sum(found) >= len(SOURCES) - 1, found
    assert len(catalog) <= 2 * len(SOURCES)
    # Re-running the ingestion changes nothing.
    again = _run(
        [str(BIN / "deepdisc-ingest-fits"), str(repo), "--gain", str(GAIN)]
        + [f"--band={band}={path}" for band, path in files.items()]
    )
    assert "nothing new" in again.stdout


@pytest.mark.integration
@pytest.mark.xdist_group("foreign_fits_pipetask")
def test_detection_refuses_a_coadd_filed_under_another_patch(tmp_path, fresh_repo) -> None:
    from lsst.meas.extensions.deepdisc import shipped_model_path

    bands = "ugrizy"  # The shipped model's bands, so that the model accepts the data and the check runs.
    right = ingest_fits(fresh_repo, _files(tmp_path, bands), model=shipped_model_path())
    folder = tmp_path / "moved"
    folder.mkdir()
    moved = {b: write_survey_file(folder / f"{b}.fits", b, wcs=survey_wcs(dec=3.0)) for b in bands}
    elsewhere = ingest_fits(fresh_repo, moved, run="ingest/moved")
    assert elsewhere.skymap != right.skymap
    # Bypass the ingestion's checks: the coadds of one image put under the other image's patch.
    fresh_repo.registry.registerRun("misfiled")
    for ref in right.refs:
        data_id = {"skymap": elsewhere.skymap, "tract": 0, "patch": 0, "band": ref.dataId["band"]}
        fresh_repo.put(fresh_repo.get(ref), "deep_coadd", data_id, run="misfiled")
    result = _run(
        [
            str(BIN / "pipetask"),
            "run",
            "-b",
            str(tmp_path / "repo"),
            "-i",
            f"misfiled,{right.model_collection}",
            "-o",
            "u/tester/misfiled",
            "-p",
            str(Path(__file__).resolve().parents[1] / "pipelines" / "DeepDisc.yaml"),
            "-d",
            f"skymap='{elsewhere.skymap}'",
            "--register-dataset-types",
        ],
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "PatchMismatchError" in output and "not in the sky region of that patch" in output
