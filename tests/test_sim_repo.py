"""The simulated Butler repository: records, dataset types, collections, contents, idempotency, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lsst.daf.butler import Butler, CollectionType
from lsst.sphgeom import LonLat, UnitVector3d

from lsst.meas.extensions.deepdisc.butler.conversions import multiband_from_masked_images
from lsst.meas.extensions.deepdisc.cli import sim_repo as sim_repo_cli
from lsst.meas.extensions.deepdisc.core.footprints import unflatten_spans
from lsst.meas.extensions.deepdisc.core.scarlet_io import (
    ScarletModelData,
    read_scarlet_models,
)
from lsst.meas.extensions.deepdisc.sim import repo as sim_repo
from lsst.meas.extensions.deepdisc.sim.presets import get_preset
from lsst.meas.extensions.deepdisc.sim.repo import (
    ALL_DATASET_TYPES,
    DEEP_COADD,
    OBJECT_DEBLEND,
    OBJECT_PATCH,
    OBJECT_SCARLET_MODELS,
    SIM_METADATA,
    TRUTH_PATCH,
    build_sim_repo,
    load_sim_metadata,
)
from lsst.meas.extensions.deepdisc.sim.scarlet_archive import model_data_from_deblended

from sim_fixtures import gaussian_patch

# The session fixture `tiny_repo` (registered once, whichever module asks first).

BUTLER_CLI = Path(sys.executable).with_name("butler")


@pytest.fixture(scope="module")
def butler(tiny_repo):
    return Butler.from_config(tiny_repo.root, collections=tiny_repo.collection)


@pytest.mark.integration
def test_butler_cli_lists_every_patch_and_band(tiny_repo) -> None:
    result = subprocess.run(
        [
            str(BUTLER_CLI),
            "query-datasets",
            tiny_repo.root,
            DEEP_COADD,
            "--collections",
            tiny_repo.collection,
            "--where",
            f"skymap = '{tiny_repo.skymap}'",
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    header = next(line for line in lines if "type" in line and "band" in line)
    rows = [dict(zip(header, line)) for line in lines if line[0] == DEEP_COADD]
    found = {(r["run"], r["skymap"], int(r["tract"]), int(r["patch"]), r["band"]) for r in rows}
    expected = {
        (tiny_repo.run, d["skymap"], d["tract"], d["patch"], d["band"]) for d in tiny_repo.band_data_ids()
    }
    assert len(rows) == len(expected) == 2 * 3, result.stdout
    assert found == expected


def test_python_queries_find_every_dataset(butler, tiny_repo) -> None:
    where = f"skymap = '{tiny_repo.skymap}'"
    coadds = butler.query_datasets(DEEP_COADD, where=where)
    assert sorted((r.dataId["patch"], r.dataId["band"]) for r in coadds) == sorted(
        (d["patch"], d["band"]) for d in tiny_repo.band_data_ids()
    )
    for name in (TRUTH_PATCH, OBJECT_SCARLET_MODELS, OBJECT_DEBLEND, OBJECT_PATCH, SIM_METADATA):
        refs = butler.query_datasets(name, where=where)
        assert sorted(r.dataId["patch"] for r in refs) == [d["patch"] for d in tiny_repo.data_ids], name
        assert refs[0].datasetType.storageClass_name == ALL_DATASET_TYPES[name][1]
    assert butler.registry.getCollectionType(tiny_repo.collection) is CollectionType.CHAINED
    assert list(butler.registry.getCollectionChain(tiny_repo.collection)) == [tiny_repo.run]


def test_dimension_records_have_regions(butler, tiny_repo) -> None:
    (skymap,) = butler.query_dimension_records("skymap", data_id={"skymap": tiny_repo.skymap})
    preset = get_preset("tiny")
    assert (skymap.patch_nx_max, skymap.patch_ny_max) == (preset.n_patches_x, preset.n_patches_y)
    filters = butler.query_dimension_records("physical_filter", instrument=sim_repo.INSTRUMENT_NAME)
    assert sorted(f.band for f in filters) == sorted(tiny_repo.bands)
    (tract,) = butler.query_dimension_records("tract", skymap=tiny_repo.skymap)
    patches = butler.query_dimension_records("patch", skymap=tiny_repo.skymap, tract=tract.id)
    assert sorted((p.id, p.cell_x, p.cell_y) for p in patches) == [
        (preset.patch_index(x, y), x, y) for x, y in preset.patches()
    ]
    for (_, patch_id), sim in tiny_repo.patches.items():
        record = next(p for p in patches if p.id == patch_id)
        x_begin, y_begin, x_end, y_end = preset.inner_bbox(record.cell_x, record.cell_y)
        ra, dec = sim.geometry.wcs.pixel_to_world_values((x_begin + x_end) / 2, (y_begin + y_end) / 2)
        centre = UnitVector3d(LonLat.fromDegrees(float(ra), float(dec)))
        assert record.region.contains(centre) and tract.region.contains(centre)
        ra_out, dec_out = sim.geometry.wcs.pixel_to_world_values(x_end + 20, (y_begin + y_end) / 2)
        assert not record.region.contains(UnitVector3d(LonLat.fromDegrees(float(ra_out), float(dec_out))))


def test_deep_coadd_converts_back_to_the_simulated_image(butler, tiny_repo) -> None:
    for data_id in tiny_repo.data_ids:
        sim = tiny_repo.patches[(data_id["tract"], data_id["patch"])]
        images = {band: butler.get(DEEP_COADD, {**data_id, "band": band}) for band in tiny_repo.bands}
        mb = multiband_from_masked_images(images, tiny_repo.bands)
        assert mb.xy0 == (sim.geometry.x0, sim.geometry.y0)
        np.testing.assert_array_equal(mb.image, sim.image.image)
        np.testing.assert_array_equal(mb.variance, sim.image.variance)
        np.testing.assert_array_equal(mb.mask, sim.image.mask)
        assert mb.mask_planes == sim.image.mask_planes
        x = sim.geometry.x0 + np.array([0.0, sim.geometry.width - 1, 37.5])
        y = sim.geometry.y0 + np.array([0.0, sim.geometry.height - 1, 81.25])
        np.testing.assert_allclose(
            mb.wcs.pixel_to_world_values(x, y), sim.geometry.wcs.pixel_to_world_values(x, y), atol=1e-10
        )
        assert mb.metadata["psf_fwhm_arcsec"] == pytest.approx(sim.psf_fwhm_arcsec)


def test_scarlet_models_round_trip_exactly(butler, tiny_repo) -> None:
    for data_id in tiny_repo.data_ids:
        sim = tiny_repo.patches[(data_id["tract"], data_id["patch"])]
        stored = butler.get(OBJECT_SCARLET_MODELS, data_id)
        assert isinstance(stored, ScarletModelData)
        expected = model_data_from_deblended(sim.blends, sim.image.bands, sim.psf_images, sim.model_psf)
        assert stored == expected
        path = butler.getURI(OBJECT_SCARLET_MODELS, data_id).ospath
        assert path.endswith(".scarlet")
        assert read_scarlet_models(path) == expected
        with open(path, "rb") as stream:
            assert stream.read(4) == b"PK\x03\x04"  # The upstream zip layout.


def test_tables_and_metadata(butler, tiny_repo) -> None:
    data_id = tiny_repo.data_ids[0]
    sim = tiny_repo.patches[(data_id["tract"], data_id["patch"])]
    truth = butler.get(TRUTH_PATCH, data_id)
    assert len(truth) == len(sim.truth)
    np.testing.assert_array_equal(truth["id"], sim.truth["id"])
    for stored, original in zip(truth["spans"], sim.truth["spans"]):
        np.testing.assert_array_equal(unflatten_spans(stored), unflatten_spans(original))
    deblend = butler.get(OBJECT_DEBLEND, data_id)
    assert len(deblend) == len(sim.object_deblend)
    assert len(butler.get(OBJECT_PATCH, data_id)) == len(sim.object_patch)
    metadata = load_sim_metadata(butler, tiny_repo.collection, tiny_repo.skymap)
    assert sorted(metadata) == sorted((d["tract"], d["patch"]) for d in tiny_repo.data_ids)
    first = metadata[(data_id["tract"], data_id["patch"])]
    assert first["preset"] == "tiny" and first["seed"] == tiny_repo.info.seeds[data_id["tract"]]
    assert first["bands"] == list(tiny_repo.bands)
    assert first["bbox"] == [sim.geometry.x0, sim.geometry.y0, sim.geometry.width, sim.geometry.height]
    for key, value in sim.metadata.items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            assert first[key] == pytest.approx(value) if isinstance(value, float) else first[key] == value


def _refuse(*args, **kwargs):
    raise AssertionError("a complete patch must not be simulated again")


def test_second_run_skips_complete_patches(tiny_repo) -> None:
    info = build_sim_repo(tiny_repo.root, preset="tiny", simulate=_refuse, create=False)
    assert (info.written, info.skipped) == (0, len(tiny_repo.data_ids))
    with pytest.raises(ValueError, match="seed"):
        build_sim_repo(tiny_repo.root, preset="tiny", seed=99, simulate=_refuse)


def test_incremental_build_and_deterministic_bytes(tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger=sim_repo.__name__)
    first = build_sim_repo(tmp_path / "a", preset="tiny", patches=[0], simulate=gaussian_patch, seed=5)
    assert (first.written, first.skipped) == (1, 0)
    more = build_sim_repo(
        tmp_path / "a", preset="tiny", patches=[(0, 0), (1, 0)], simulate=gaussian_patch, seed=5
    )
    assert (more.written, more.skipped) == (1, 1)
    assert "patch 1/2 (tract 0, patch 0): already complete, skipped" in caplog.text
    assert "patch 2/2 (tract 0, patch 1) written in" in caplog.text and "ETA 0 s" in caplog.text
    # Worker processes (jobs=2) write exactly what the serial build wrote.
    other = build_sim_repo(
        tmp_path / "b", preset="tiny", patches=[0, 1], simulate=gaussian_patch, seed=5, jobs=2
    )
    assert other.written == 2
    butler_a = Butler.from_config(more.root, collections=more.collection)
    butler_b = Butler.from_config(other.root, collections=other.collection)
    for data_id in other.data_ids:
        for name in (OBJECT_SCARLET_MODELS, SIM_METADATA):
            bytes_a = Path(butler_a.getURI(name, data_id).ospath).read_bytes()
            bytes_b = Path(butler_b.getURI(name, data_id).ospath).read_bytes()
            assert bytes_a == bytes_b, name
    with pytest.raises(FileNotFoundError, match="create=True"):
        build_sim_repo(tmp_path / "missing", simulate=gaussian_patch, create=False)
    with pytest.raises(FileExistsError):
        build_sim_repo(tmp_path / "a", simulate=gaussian_patch, create=True)
    with pytest.raises(ValueError, match="outside"):
        build_sim_repo(tmp_path / "a", patches=[(5, 0)], simulate=gaussian_patch)


def test_existing_butler_and_config_file_are_accepted(tmp_path) -> None:
    Butler.makeRepo(tmp_path / "repo")
    writeable = Butler.from_config(str(tmp_path / "repo"), writeable=True)
    info = build_sim_repo(writeable, patches=[1], simulate=gaussian_patch, collection="u/me/sim")
    assert info.run == "u/me/sim/run" and info.written == 1
    again = build_sim_repo(
        tmp_path / "repo" / "butler.yaml", patches=[1], simulate=gaussian_patch, collection="u/me/sim"
    )
    assert again.skipped == 1


def test_command_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sim_repo, "_default_simulate", lambda: gaussian_patch)
    status = sim_repo_cli.main(
        [str(tmp_path / "cli"), "--patches", "1", "--seed", "3", "--log-level", "WARNING"]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "1 patch(es) written" in out and "sim/tiny" in out
    assert sim_repo_cli.main([str(tmp_path / "cli"), "--preset", "nonexistent"]) == 1
    assert "unknown simulation preset" in capsys.readouterr().err
