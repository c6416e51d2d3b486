"""deepdisc-ingest-fits: plain per-band FITS and Rubin ExposureF-layout files into deep_coadd; its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from lsst.daf.butler import Butler, DatasetType

from lsst.meas.extensions.deepdisc.butler.conversions import multiband_from_masked_images
from lsst.meas.extensions.deepdisc.cli.ingest_fits import IngestError, ingest_fits, main, read_band_fits
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES
from lsst.meas.extensions.deepdisc.sim.presets import get_preset, patch_geometry
from lsst.meas.extensions.deepdisc.sim.repo import DEEP_COADD, build_sim_repo

SHAPE = (48, 64)
XY0 = (100, 40)  # Inside patch 0 of the tiny preset.
LOSSLESS = {"compression_type": "GZIP_2", "quantize_level": 0.0}  # Astropy quantizes floats by default.


def _no_simulation(*args, **kwargs):
    raise AssertionError("records only")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[str, str]:
    """A repository with the tiny preset's skymap and bands registered, no datasets."""
    info = build_sim_repo(tmp_path_factory.mktemp("ingest") / "repo", patches=[], simulate=_no_simulation)
    return info.root, info.skymap


def _wcs_header(xy0: tuple[int, int] = XY0) -> fits.Header:
    """The tiny tract's WCS for an array whose first pixel is at parent ``xy0``."""
    wcs = patch_geometry(get_preset("tiny"), 0, 0, 0).wcs.deepcopy()
    wcs.wcs.crpix = wcs.wcs.crpix - np.array(xy0, dtype=float)
    return wcs.to_header()


def _arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=SHAPE).astype(np.float32)
    variance = (rng.random(SHAPE) + 0.5).astype(np.float32)
    mask = np.where(rng.random(SHAPE) < 0.1, 1 << DEFAULT_MASK_PLANES["SAT"], 0).astype(np.int32)
    mask[:3] |= 1 << DEFAULT_MASK_PLANES["EDGE"]
    return image, variance, mask


def _plain_file(path: Path, seed: int, with_wcs: bool = True, shape_variance=None) -> Path:
    image, variance, mask = _arrays(seed)
    header = _wcs_header() if with_wcs else fits.Header()
    header["LTV1"] = -XY0[0]
    header["LTV2"] = -XY0[1]
    header["BUNIT"] = "nJy"
    mask_header = fits.Header()
    for name, bit in DEFAULT_MASK_PLANES.items():
        mask_header[f"HIERARCH MP_{name}"] = bit  # As afw writes them.
    if shape_variance is not None:
        variance = np.ones(shape_variance, dtype=np.float32)
    fits.HDUList(
        [
            fits.PrimaryHDU(image, header=header),
            fits.ImageHDU(mask, header=mask_header, name="MASK"),
            fits.ImageHDU(variance, name="VARIANCE"),
        ]
    ).writeto(path)
    return path


def _exposure_file(path: Path, seed: int) -> Path:
    """The Rubin ExposureF layout: empty primary, compressed IMAGE/MASK/VARIANCE, xy0 in the "A" WCS."""
    image, variance, mask = _arrays(seed)
    header = _wcs_header()
    header["CTYPE1A"] = "LINEAR"
    header["CTYPE2A"] = "LINEAR"
    header["CRPIX1A"] = 1.0
    header["CRPIX2A"] = 1.0
    header["CRVAL1A"] = float(XY0[0])
    header["CRVAL2A"] = float(XY0[1])
    header["BUNIT"] = "uJy"
    mask_header = _wcs_header()
    for name, bit in DEFAULT_MASK_PLANES.items():
        mask_header[f"HIERARCH MP_{name}"] = bit  # As afw writes them.
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.CompImageHDU(image / 1000.0, header=header, name="IMAGE", **LOSSLESS),
            fits.CompImageHDU(mask, header=mask_header, name="MASK"),
            fits.CompImageHDU(variance / 1e6, header=_wcs_header(), name="VARIANCE", **LOSSLESS),
        ]
    ).writeto(path)
    return path


def test_reads_both_layouts(tmp_path) -> None:
    plain = read_band_fits(_plain_file(tmp_path / "g.fits", 1), "g")
    exposure = read_band_fits(_exposure_file(tmp_path / "r.fits", 1), "r")
    image, variance, mask = _arrays(1)
    for mb in (plain, exposure):
        assert mb.xy0 == XY0 and mb.shape == SHAPE
        np.testing.assert_allclose(mb.image[0], image, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mb.variance[0], variance, rtol=1e-5)
        np.testing.assert_array_equal(mb.mask[0], mask)
        assert mb.mask_planes == DEFAULT_MASK_PLANES
        tract_wcs = patch_geometry(get_preset("tiny"), 0, 0, 0).wcs
        x, y = np.array([100.0, 150.0]), np.array([40.0, 80.0])
        np.testing.assert_allclose(mb.wcs.pixel_to_world_values(x, y), tract_wcs.pixel_to_world_values(x, y))
    assert exposure.metadata["source_unit"] == "uJy"


def test_ingest_per_band_and_exposure_layout_files(tmp_path, repo) -> None:
    root, skymap = repo
    files = {"g": _plain_file(tmp_path / "g.fits", 1), "r": _exposure_file(tmp_path / "r.fits", 2)}
    argv = [
        root,
        "--tract",
        "0",
        "--patch",
        "0,0",
        "--run",
        "ingest/both",
        "--collection",
        "mine",
        "--no-model",
    ]
    for band, path in files.items():
        argv += ["--band", f"{band}={path}"]
    assert main(argv) == 0
    butler = Butler.from_config(root, collections="mine")
    data_id = {"skymap": skymap, "tract": 0, "patch": 0}
    images = {band: butler.get(DEEP_COADD, {**data_id, "band": band}) for band in files}
    mb = multiband_from_masked_images(images, ["g", "r"])
    assert mb.xy0 == XY0
    for index, seed in enumerate((1, 2)):
        image, variance, mask = _arrays(seed)
        np.testing.assert_allclose(mb.image[index], image, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mb.mask[index], mask)
    x, y = np.array([100.0, 163.0]), np.array([40.0, 87.0])
    tract_wcs = patch_geometry(get_preset("tiny"), 0, 0, 0).wcs
    np.testing.assert_allclose(mb.wcs.pixel_to_world_values(x, y), tract_wcs.pixel_to_world_values(x, y))
    # The same command again changes nothing; another image for the same data ID needs --replace.
    assert main(argv) == 0
    assert len(_datasets(root, "ingest/both")) == 2
    other = [a if not a.startswith("g=") else f"g={_plain_file(tmp_path / 'g2.fits', 9)}" for a in argv]
    assert main(other) == 1
    assert main([*other, "--replace"]) == 0
    stored = Butler.from_config(root, collections="mine").get(DEEP_COADD, {**data_id, "band": "g"})
    np.testing.assert_allclose(stored.image.array, _arrays(9)[0], rtol=1e-5, atol=1e-6)


def test_errors(tmp_path, repo, capsys) -> None:
    root, skymap = repo
    butler = Butler.from_config(root, writeable=True)
    good = _plain_file(tmp_path / "good.fits", 1)
    cases = [
        ({"g": tmp_path / "absent.fits"}, {}, "does not exist"),
        ({"g": _plain_file(tmp_path / "nowcs.fits", 1, with_wcs=False)}, {}, "no celestial WCS"),
        (
            {"g": _plain_file(tmp_path / "badvar.fits", 1, shape_variance=(5, 5))},
            {},
            "VARIANCE HDU has shape",
        ),
        ({}, {}, "no band given"),
        ({"g": good}, {"tract": 7}, "--records-only"),
        ({"g": good}, {"patch": 5}, "not registered"),
        ({"g": good}, {"patch": "3,0"}, "outside"),
        ({"g": good}, {"skymap": "nope"}, "not registered"),
    ]
    for files, overrides, message in cases:
        kwargs = {"tract": 0, "patch": 0, "run": "ingest/errors", **overrides}
        with pytest.raises(IngestError, match=message):
            ingest_fits(butler, files, **kwargs)
    other_shape = tmp_path / "small.fits"
    header = _wcs_header()
    header["BUNIT"] = "nJy"
    noise = np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32)
    fits.PrimaryHDU(noise, header=header).writeto(other_shape)
    with pytest.raises(IngestError, match=r"small\.fits.*band 'r'.*good\.fits.*same pixels"):
        ingest_fits(butler, {"g": good, "r": other_shape}, tract=0, patch=0, run="ingest/errors")
    butler.registry.registerDatasetType(
        DatasetType(
            "coadd_elsewhere",
            ("skymap", "tract", "patch", "band"),
            "StructuredDataDict",
            universe=butler.dimensions,
        )
    )
    with pytest.raises(IngestError, match="another definition"):
        ingest_fits(
            butler, {"g": good}, tract=0, patch=0, run="ingest/errors", dataset_type="coadd_elsewhere"
        )
    assert "ingest/errors" not in butler.registry.queryCollections()  # Nothing was written.
    # Duplicate band on the command line.
    status = main([root, "--tract", "0", "--patch", "0", "--band", f"g={good}", "--band", f"g={good}"])
    assert status == 1 and "more than once" in capsys.readouterr().err
    assert main([root, "--tract", "0", "--patch", "0", "--band", "g"]) == 1
    assert "BAND=FILE" in capsys.readouterr().err
    assert main([str(tmp_path / "norepo"), "--tract", "0", "--patch", "0", "--band", f"g={good}"]) == 1
    assert "cannot open" in capsys.readouterr().err


def test_image_outside_the_named_patch_is_refused(tmp_path, repo) -> None:
    root, skymap = repo
    butler = Butler.from_config(root, writeable=True)
    path = _plain_file(tmp_path / "g.fits", 4)
    # The file's pixels are in patch 0; patch 1 lies east of it.
    with pytest.raises(IngestError, match=r"g\.fits.*not in the sky region of that patch.*without --tract"):
        ingest_fits(butler, {"g": path}, tract=0, patch=1, run="ingest/elsewhere")
    assert _datasets(root, "ingest/elsewhere") == []
    result = ingest_fits(butler, {"g": path}, tract=0, patch=0, run="ingest/elsewhere")
    assert len(result.refs) == 1 and result.refs[0].dataId["patch"] == 0


def test_missing_variance_is_estimated(tmp_path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "novar.fits"
    fits.PrimaryHDU(rng.normal(0.0, 4.0, SHAPE).astype(np.float32), header=_wcs_header()).writeto(path)
    mb = read_band_fits(path, "i", unit="nJy", xy0=XY0)
    assert mb.xy0 == XY0
    assert np.sqrt(mb.variance[0, 0, 0]) == pytest.approx(4.0, rel=0.1)
    assert not mb.mask.any() and mb.mask_planes == DEFAULT_MASK_PLANES


def _with(path: Path, source: Path, edit) -> Path:
    """A copy of a plain file with ``edit(hdus)`` applied."""
    with fits.open(source) as hdus:
        copy = fits.HDUList([hdu.copy() for hdu in hdus])
    edit(copy)
    copy.writeto(path)
    return path


def _datasets(root: str, run: str) -> list:
    butler = Butler.from_config(root)
    if run not in butler.registry.queryCollections():
        return []
    return list(butler.query_datasets(DEEP_COADD, collections=run, find_first=False, explain=False))


def test_a_failed_ingest_writes_nothing_and_the_fixed_rerun_works(tmp_path, repo, capsys) -> None:
    root, _ = repo
    good = {band: _plain_file(tmp_path / f"{band}.fits", seed) for seed, band in enumerate("gri", 5)}

    def unnamed_bit(hdus: fits.HDUList) -> None:
        hdus["MASK"].data[5:8, 5:9] |= 1 << 20

    broken = dict(good, i=_with(tmp_path / "i_bad.fits", good["i"], unnamed_bit))
    argv = [root, "--tract", "0", "--patch", "0", "--run", "ingest/atomic", "--no-model"]
    args = argv + [f"--band={band}={path}" for band, path in broken.items()]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "i_bad.fits" in err and "band 'i'" in err and "bit(s) [20]" in err and "MP_<PLANE>" in err
    assert _datasets(root, "ingest/atomic") == []  # Bands g and r were not written either.
    # The documented way out: drop the unnamed bit (or name it); the same command then succeeds.
    assert main(args + ["--unknown-mask-bits", "drop"]) == 0
    assert len(_datasets(root, "ingest/atomic")) == 3
    butler = Butler.from_config(root)
    stored = butler.get(DEEP_COADD, skymap=repo[1], tract=0, patch=0, band="i", collections="ingest/atomic")
    mb = multiband_from_masked_images({"i": stored}, ["i"])
    np.testing.assert_array_equal(mb.mask[0], _arrays(7)[2])  # The named planes as written, bit 20 gone.


def test_bands_on_different_sky_grids_are_refused_naming_both(tmp_path, repo) -> None:
    root, _ = repo
    butler = Butler.from_config(root, writeable=True)
    g = _plain_file(tmp_path / "g.fits", 1)

    def shifted(hdus: fits.HDUList) -> None:
        hdus[0].header["CRPIX1"] += 0.5

    r = _with(tmp_path / "r_shifted.fits", _plain_file(tmp_path / "r.fits", 2), shifted)
    with pytest.raises(IngestError, match=r"r_shifted\.fits.*band 'r'.*g\.fits.*band 'g'"):
        ingest_fits(butler, {"g": g, "r": r}, tract=0, patch=0, run="ingest/sky")
    assert _datasets(root, "ingest/sky") == []


@pytest.mark.parametrize(
    ("value", "counted"), [(0.0, "1 zero"), (-2.0, "1 negative"), (np.nan, "1 non-finite")]
)
def test_bad_variance_is_counted_and_reported(tmp_path, caplog, value: float, counted: str) -> None:
    def bad_pixel(hdus: fits.HDUList) -> None:
        hdus["VARIANCE"].data[3, 4] = value

    path = _with(tmp_path / "bad.fits", _plain_file(tmp_path / "g.fits", 1), bad_pixel)
    mb = read_band_fits(path, "g")
    counts = mb.metadata["variance_counts"]
    assert sum(counts.values()) == 1
    assert counts[counted.removeprefix("1 ").replace("-", "_")] == 1
    assert "flag_bad_variance" in caplog.text and counted in caplog.text
