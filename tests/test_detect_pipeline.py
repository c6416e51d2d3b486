"""Integration: ingest a model with the CLI, then `pipetask run` the detection pipeline on the tiny repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from lsst.daf.butler import Butler

from lsst.meas.extensions.deepdisc.core.footprints import spans_to_mask, unflatten_spans

from pipetask_helpers import BIN, pipetask, run
from sim_fixtures import TinyRepo

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tiny_repo_pipetask")]

MODEL_NAME = "tiny-random-detect"
OUTPUT = "u/test/deepdisc_detect"
TIMEOUT = 600  # seconds per command


def _pipetask(
    repo: TinyRepo, package_root: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess:
    return pipetask(
        repo,
        [repo.collection, f"pretrained_models/{MODEL_NAME}"],
        OUTPUT,
        str(package_root / "pipelines" / "DeepDisc.yaml"),
        "-c",
        "detect:tileSize=256",
        "-c",
        "detect:tileOverlap=64",
        *extra,
        check=check,
        timeout=TIMEOUT,
    )


@pytest.fixture(scope="module")
def detected(tiny_repo: TinyRepo, package_root: Path, tmp_path_factory) -> TinyRepo:
    package = tmp_path_factory.mktemp("model") / "tiny.zip"
    run(
        str(BIN / "deepdisc-model"),
        "create",
        "--architecture",
        "compact-R18-FPN",
        "--bands",
        *tiny_repo.bands,
        "--random-init",
        "--seed",
        "3",
        "--override",
        "TEST.DETECTIONS_PER_IMAGE=200",
        "--name",
        MODEL_NAME,
        "--output",
        str(package),
        timeout=TIMEOUT,
    )
    run(
        str(BIN / "deepdisc-model"),
        "ingest",
        tiny_repo.root,
        str(package),
        "--name",
        MODEL_NAME,
        timeout=TIMEOUT,
    )
    _pipetask(tiny_repo, package_root)
    return tiny_repo


def test_every_patch_has_a_catalog(detected: TinyRepo) -> None:
    listing = run(
        str(BIN / "butler"),
        "query-datasets",
        detected.root,
        "object_deepdisc",
        "--collections",
        OUTPUT,
        timeout=TIMEOUT,
    ).stdout
    for data_id in detected.data_ids:
        assert f"{data_id['patch']}" in listing
    butler = Butler.from_config(detected.root, collections=[OUTPUT])
    refs = list(butler.query_datasets("object_deepdisc", where=f"skymap='{detected.skymap}'"))
    assert sorted(int(ref.dataId["patch"]) for ref in refs) == sorted(
        int(d["patch"]) for d in detected.data_ids
    )


def test_catalogs_are_consistent_with_their_patches(detected: TinyRepo) -> None:
    butler = Butler.from_config(detected.root, collections=[OUTPUT])
    all_ids = []
    for data_id in detected.data_ids:
        catalog = butler.get("object_deepdisc", data_id)
        coadd = butler.get(
            "deep_coadd", {**data_id, "band": detected.bands[0]}, collections=detected.collection
        )
        bbox = coadd.bbox
        shape = (bbox.y.size, bbox.x.size)
        xy0 = (bbox.x.start, bbox.y.start)
        assert len(catalog) > 0
        for row in catalog:
            mask = spans_to_mask(unflatten_spans(row["footprint"]), shape, xy0)  # raises if outside the patch
            assert mask.sum() == row["footprint_area"]
        ids = set(np.asarray(catalog["id"]).tolist())
        parents = set(np.asarray(catalog["parent"]).tolist()) - {0}
        assert parents <= ids
        all_ids.extend(ids)
        columns = butler.get("object_deepdisc", data_id, parameters={"columns": ["id", "coord_ra", "score"]})
        assert columns.colnames == ["id", "coord_ra", "score"]
        assert str(columns["coord_ra"].unit) == "deg"
    assert len(all_ids) == len(set(all_ids)), "ids must be unique across patches"


def test_rerun_with_skip_existing_is_a_noop(detected: TinyRepo, package_root: Path) -> None:
    butler = Butler.from_config(detected.root, collections=[OUTPUT])
    before = sorted(
        str(ref.id) for ref in butler.query_datasets("object_deepdisc", where=f"skymap='{detected.skymap}'")
    )
    rerun = _pipetask(detected, package_root, "--extend-run", "--skip-existing", check=False)
    # pipetask builds an empty graph (and says so with a non-zero exit) when every quantum already ran.
    n_patches = len(detected.data_ids)
    assert f"no quanta remain ({n_patches} previously succeeded and skipped)" in rerun.stderr + rerun.stdout
    butler = Butler.from_config(detected.root, collections=[OUTPUT])
    after = sorted(
        str(ref.id) for ref in butler.query_datasets("object_deepdisc", where=f"skymap='{detected.skymap}'")
    )
    assert after == before


def test_primary_rows_of_overlapping_patches_hold_each_position_once(detected: TinyRepo) -> None:
    butler = Butler.from_config(detected.root, collections=[OUTPUT])
    regions = {
        int(record.id): record.region
        for record in butler.query_dimension_records("patch", skymap=detected.skymap, explain=False)
    }
    keep_meta = {"strip_astropy_meta_yaml": False}
    catalogs = {
        int(d["patch"]): butler.get("object_deepdisc", d, parameters=keep_meta) for d in detected.data_ids
    }
    owners_of_primary = []
    for patch, catalog in catalogs.items():
        assert catalog.meta["primary_flags"] == "patch and tract regions of the data ID"
        primary = np.asarray(catalog["detect_isPrimary"], dtype=bool)
        inner = np.asarray(catalog["detect_isPatchInner"], dtype=bool)
        assert np.array_equal(primary, inner & np.asarray(catalog["detect_isTractInner"], dtype=bool))
        assert primary.any() and (~inner).any(), "each patch has rows in its overlap border"
        lon = np.radians(np.asarray(catalog["coord_ra"], dtype=float))
        lat = np.radians(np.asarray(catalog["coord_dec"], dtype=float))
        inside = {other: np.asarray(region.contains(lon, lat), bool) for other, region in regions.items()}
        # A row is patch-inner exactly when its centroid is in its own patch's inner region ...
        assert np.array_equal(inner, inside[patch])
        # ... and the rows whose centroid belongs to the neighbour are never primary here.
        for other, flags in inside.items():
            if other != patch:
                assert not np.any(primary & flags)
        owners_of_primary.append(np.stack([inside[p] for p in sorted(regions)])[:, primary])
    owners = np.concatenate(owners_of_primary, axis=1)
    assert np.all(owners.sum(axis=0) == 1), "every primary row belongs to exactly one patch"


def test_resume_after_an_interruption_between_the_catalog_and_the_metadata(
    detected: TinyRepo, package_root: Path
) -> None:
    """The state a kill leaves between a quantum's catalog write and its metadata write, then the resume."""
    butler = Butler.from_config(detected.root, collections=[OUTPUT], writeable=True)
    data_id = detected.data_ids[0]
    catalog_before = butler.get("object_deepdisc", data_id)
    metadata_ref = butler.find_dataset("detect_metadata", data_id, collections=OUTPUT)
    assert metadata_ref is not None
    butler.pruneDatasets([metadata_ref], disassociate=True, unstore=True, purge=True)
    # The skip-existing resume alone cannot replace the catalog the interrupted quantum left.
    refused = _pipetask(detected, package_root, "--extend-run", "--skip-existing", check=False)
    assert refused.returncode != 0
    assert "OutputExistsError" in refused.stderr + refused.stdout
    # The documented command re-runs just that quantum.
    resumed = _pipetask(detected, package_root, "--extend-run", "--skip-existing", "--clobber-outputs")
    assert "1 quanta successfully" in resumed.stderr + resumed.stdout
    butler = Butler.from_config(detected.root, collections=[OUTPUT])
    catalog_after = butler.get("object_deepdisc", data_id)
    assert np.array_equal(np.asarray(catalog_after["id"]), np.asarray(catalog_before["id"]))
    assert np.allclose(np.asarray(catalog_after["score"]), np.asarray(catalog_before["score"]))
    for other in detected.data_ids:
        assert butler.get("detect_metadata", other) is not None
