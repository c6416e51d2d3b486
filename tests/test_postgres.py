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

"""A Butler repository whose registry is PostgreSQL: simulate, ingest a model, ``pipetask run``, read back.

The server is the private one of `postgres_fixtures` (skipped, with the reason, where PostgreSQL or its
driver is missing).  The repository's registry lives in its own schema (``registry.namespace``) of a fresh
database, the password reaches the Butler through a ``DbAuth`` file (``LSST_DB_AUTH``) and never appears in
``butler.yaml``, and ``pipetask run -j 2`` runs the quanta in two processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import postgres_fixtures
from postgres_fixtures import (  # noqa: F401 - postgres_server is a fixture.
    PostgresServer,
    PostgresUnavailableError,
    find_postgres_bin_dir,
    postgres_server,
    start_postgres_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("postgres")]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAMESPACE = "deepdisc_sim"
MODEL_NAME = "pg-random"
OUTPUT = "u/test/deepdisc_postgres"


def test_missing_binaries_are_reported_with_the_install_script(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DEEPDISC_POSTGRES_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres_fixtures, "_DEBIAN_ROOT", tmp_path / "no-postgresql")
    assert find_postgres_bin_dir() is None
    with pytest.raises(PostgresUnavailableError, match="bin/install-postgres.sh"):
        start_postgres_server()
    # An explicit directory wins once it holds the server programs.
    fake = tmp_path / "pg" / "bin"
    fake.mkdir(parents=True)
    for program in ("initdb", "postgres"):
        (fake / program).write_text("#!/bin/sh\nexit 1\n")
        (fake / program).chmod(0o755)
    monkeypatch.setenv("DEEPDISC_POSTGRES_BIN", str(fake))
    assert find_postgres_bin_dir() == fake


def test_server_is_private_loopback_only_and_needs_the_password(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    import psycopg

    assert postgres_server.query("SHOW listen_addresses") == [("127.0.0.1",)]
    assert postgres_server.query("SHOW unix_socket_directories") == [("",)]
    # PostgreSQL refuses root: the server process and its cluster belong to an unprivileged account.
    assert os.stat(f"/proc/{postgres_server.process.pid}").st_uid != 0
    assert postgres_server.data_dir.stat().st_uid == os.stat(f"/proc/{postgres_server.process.pid}").st_uid
    assert postgres_server.data_dir.stat().st_mode & 0o077 == 0
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            password="not-the-password",
            dbname="postgres",
            connect_timeout=5,
        )


def test_databases_get_btree_gist_and_bad_names_are_refused(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    url = postgres_server.create_database("deepdisc_extensions")
    assert url == f"postgresql://{postgres_server.user}@127.0.0.1:{postgres_server.port}/deepdisc_extensions"
    rows = postgres_server.query("SELECT extname FROM pg_extension", "deepdisc_extensions")
    extensions = {row[0] for row in rows}
    assert "btree_gist" in extensions
    with pytest.raises(ValueError, match="lower-case SQL identifier"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


def test_stop_ends_the_server_frees_the_port_and_removes_the_cluster() -> None:
    try:
        server = start_postgres_server(start_timeout=60)
    except PostgresUnavailableError as err:
        pytest.skip(f"PostgreSQL unavailable: {err}")
    port, base_dir = server.port, server.base_dir
    assert server.is_running() and (base_dir / "data" / "PG_VERSION").is_file()
    server.stop()
    assert not server.is_running()
    assert not base_dir.exists()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe, pytest.raises(ConnectionRefusedError):
        probe.settimeout(5)
        probe.connect(("127.0.0.1", port))


@pytest.fixture(scope="module")
def pipeline_run(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """Repository on PostgreSQL + tiny simulation + random-init model, then ``pipetask run -j 2``."""
    from lsst.daf.butler import Butler, Config

    from lsst.meas.extensions.deepdisc.cli.model import main as model_main
    from lsst.meas.extensions.deepdisc.cli.sim_repo import main as sim_repo_main

    work = tmp_path_factory.mktemp("postgres_repo")
    root = work / "repo"
    url = postgres_server.create_database("deepdisc_repo")
    with pytest.MonkeyPatch.context() as patch:
        # The Butler (here and in pipetask's processes) finds the password in the DbAuth file.
        patch.setenv("LSST_DB_AUTH", str(postgres_server.write_db_auth(work / "db-auth.yaml")))
        Butler.makeRepo(str(root), config=Config({"registry": {"db": url, "namespace": NAMESPACE}}))
        butler_yaml = root / "butler.yaml"
        # The simulated-repository CLI, given the existing repository's config (so any registry).
        assert sim_repo_main([str(butler_yaml), "--preset", "tiny", "--log-level", "WARNING"]) == 0
        package = work / "model.zip"
        create = ["create", "--architecture", "compact-R18-FPN", "--bands", "g", "r", "i", "--random-init"]
        # Few detections per patch keep the quanta short; this test is about the registry.
        overrides = ["TEST.DETECTIONS_PER_IMAGE=30", "MODEL.RPN.POST_NMS_TOPK_TEST=100"]
        create += ["--name", MODEL_NAME, "--output", str(package), "--override", *overrides]
        assert model_main(create) == 0
        assert model_main(["ingest", str(butler_yaml), str(package), "--name", MODEL_NAME]) == 0
        result = subprocess.run(
            [
                str(BIN / "pipetask"),
                "run",
                "-b",
                str(butler_yaml),
                "-i",
                f"sim/tiny,pretrained_models/{MODEL_NAME}",
                "-o",
                OUTPUT,
                "-p",
                str(PACKAGE_ROOT / "pipelines" / "DeepDisc.yaml"),
                "-d",
                "skymap='deepdisc_sim_tiny'",
                "--register-dataset-types",
                "-j",
                "2",
            ],
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
            capture_output=True,
            text=True,
            timeout=480,
            check=False,
        )
        yield {"root": root, "butler_yaml": butler_yaml, "url": url, "result": result}


@pytest.mark.slow
def test_pipetask_writes_object_deepdisc_for_every_patch(pipeline_run: dict) -> None:
    from lsst.daf.butler import Butler

    result = pipeline_run["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    butler = Butler.from_config(str(pipeline_run["butler_yaml"]), collections=OUTPUT)
    patches = {
        (int(ref.dataId["tract"]), int(ref.dataId["patch"]))
        for ref in butler.query_datasets("deep_coadd", collections="sim/tiny", explain=False)
    }
    assert len(patches) == 2, "the tiny preset has two patches"
    refs = butler.query_datasets("object_deepdisc", explain=False)
    assert {(int(ref.dataId["tract"]), int(ref.dataId["patch"])) for ref in refs} == patches
    for ref in refs:
        assert ref.run.startswith(f"{OUTPUT}/")
        catalog = butler.get(ref)
        assert 0 < len(catalog) <= 30, "the model keeps at most 30 detections per patch"
        assert "footprint" in catalog.colnames and len(catalog["footprint"][0]) % 3 == 0


@pytest.mark.slow
def test_the_registry_is_the_postgres_schema(
    pipeline_run: dict,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    assert pipeline_run["result"].returncode == 0, "pipetask failed; see the other test"
    config = yaml.safe_load(pipeline_run["butler_yaml"].read_text())
    assert config["registry"]["db"] == pipeline_run["url"]
    assert config["registry"]["namespace"] == NAMESPACE
    assert postgres_server.password not in pipeline_run["butler_yaml"].read_text()
    assert not list(pipeline_run["root"].glob("*.sqlite3")), "no SQLite registry next to the datastore"
    counts = dict(
        postgres_server.query(
            f"SELECT t.name, count(*) FROM {NAMESPACE}.dataset d "
            f"JOIN {NAMESPACE}.dataset_type t ON d.dataset_type_id = t.id GROUP BY t.name",
            database="deepdisc_repo",
        )
    )
    assert counts["deep_coadd"] == 2 * 3, "two patches in three bands"
    assert counts["object_deepdisc"] == 2
    assert counts["deepdisc_model"] == 1
