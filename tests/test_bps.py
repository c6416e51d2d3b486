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

"""BPS with the Parsl plugin: ``bps/deepdisc_parsl_local.yaml`` runs the detection pipeline locally.

The configuration tests read the submit YAML as ``bps submit`` does.  The integration test copies the
session's tiny simulated repository, ingests a random-init model and runs the real ``bps submit`` command:
quantum graph, one Parsl job per patch on a loopback-only executor, and the final job that registers the
outputs; then it reads ``object_deepdisc`` of every patch through the Butler.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sim_fixtures import TinyRepo, tiny_repo  # noqa: F401 - tiny_repo is a fixture.

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
BPS_DIR = PACKAGE_ROOT / "bps"
SUBMIT_YAML = BPS_DIR / "deepdisc_parsl_local.yaml"
BIN = Path(sys.executable).parent
MODEL_NAME = "bps-random"
OUTPUT = "u/test/deepdisc_bps"


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # A parent package is missing.
        return True


_MISSING = [module for module in ("parsl", "lsst.ctrl.bps", "lsst.ctrl.bps.parsl") if _missing(module)]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"BPS with Parsl is not installed ({', '.join(_MISSING)}): "
    "pip install lsst-ctrl-bps lsst-ctrl-bps-parsl",
)


def _bps_config(monkeypatch: pytest.MonkeyPatch, path: Path = SUBMIT_YAML, **changes: Any) -> Any:
    """The submit YAML read as ``bps submit`` reads it (package defaults below it), with ``changes``."""
    from lsst.ctrl.bps import BPS_DEFAULTS, BPS_SEARCH_ORDER, BpsConfig

    monkeypatch.setenv("MEAS_EXTENSIONS_DEEPDISC_DIR", str(PACKAGE_ROOT))
    config = BpsConfig(str(path), search_order=BPS_SEARCH_ORDER, defaults=BPS_DEFAULTS)
    for key, value in changes.items():
        config[key] = value
    return config


def test_submit_yaml_selects_parsl_the_detection_pipeline_and_small_jobs(monkeypatch) -> None:
    config = _bps_config(monkeypatch)
    assert config["wmsServiceClass"] == "lsst.ctrl.bps.parsl.ParslService"
    found, pipeline = config.search("pipelineYaml", opt={"expandEnvVars": True})
    assert found
    pipeline_file, _, label = pipeline.partition("#")
    assert Path(pipeline_file) == PACKAGE_ROOT / "pipelines" / "DeepDisc.yaml" and label == "detect"
    # The ctrl_bps default final job asks for 16 cores and 32 GiB: far more than a workstation has.
    assert config[".finalJob.requestCpus"] == 1
    assert config[".finalJob.requestMemory"] <= 8192
    assert config.search("requestMemory", opt={"curvals": {"curr_pipetask": "detect"}}) == (True, 4096)


def test_local_site_executor_is_loopback_only(monkeypatch) -> None:
    from lsst.ctrl.bps.parsl.site import SiteConfig

    config = _bps_config(monkeypatch)
    site = SiteConfig.from_config(config)
    assert type(site).__name__ == "LoopbackLocal"
    (executor,) = site.get_executors()
    assert executor.address == executor.loopback_address == "127.0.0.1"
    assert executor.all_addresses == {"127.0.0.1"}, "workers must not probe the machine's other addresses"
    assert executor.max_workers_per_node == config[".site.local.cores"] == 2
    assert "OMP_NUM_THREADS=1" in site.get_command_prefix()
    assert site.get_address() == "127.0.0.1"


def test_local_site_refuses_missing_or_bad_cores(monkeypatch) -> None:
    from lsst.ctrl.bps.parsl.site import SiteConfig

    with pytest.raises(ValueError, match="cores must be at least 1"):
        SiteConfig.from_config(_bps_config(monkeypatch, **{".site.local.cores": 0})).get_executors()
    config = _bps_config(monkeypatch)
    del config[".site.local.cores"]
    with pytest.raises(KeyError, match="cores"):
        SiteConfig.from_config(config).get_executors()


@pytest.fixture(scope="module")
def bps_run(tiny_repo: TinyRepo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """A copy of the tiny repository with a random-init model, and the result of ``bps submit`` on it."""
    from lsst.meas.extensions.deepdisc.cli.model import main as model_main

    work = tmp_path_factory.mktemp("bps")
    root = work / "repo"
    shutil.copytree(tiny_repo.root, root)
    package = work / "model.zip"
    create = ["create", "--architecture", "compact-R18-FPN", "--bands", *tiny_repo.bands, "--random-init"]
    # Few detections per patch keep the jobs short; this test is about the workflow.
    overrides = ["TEST.DETECTIONS_PER_IMAGE=30", "MODEL.RPN.POST_NMS_TOPK_TEST=100"]
    create += ["--name", MODEL_NAME, "--output", str(package), "--override", *overrides]
    assert model_main(create) == 0
    assert model_main(["ingest", str(root), str(package), "--name", MODEL_NAME]) == 0

    submit_dir = work / "submit_here"
    submit_dir.mkdir()
    environment = dict(os.environ)
    environment.update(
        {
            "PATH": os.pathsep.join([str(BIN), environment.get("PATH", "")]),
            "MEAS_EXTENSIONS_DEEPDISC_DIR": str(PACKAGE_ROOT),
            "OMP_NUM_THREADS": "1",
            # The default submitPath is ${PWD}/submit/<run>: PWD must follow cwd.
            "PWD": str(submit_dir),
        }
    )
    command = [
        str(BIN / "bps"),
        "submit",
        str(SUBMIT_YAML),
        "-b",
        str(root),
        "-i",
        f"{tiny_repo.collection},pretrained_models/{MODEL_NAME}",
        "-o",
        OUTPUT,
        "-d",
        f"skymap='{tiny_repo.skymap}'",
    ]
    # bps writes submit/<run>/ and Parsl its runinfo/ in the working directory.
    result = subprocess.run(
        command, cwd=submit_dir, env=environment, capture_output=True, text=True, timeout=540, check=False
    )
    return {"root": root, "submit_dir": submit_dir, "result": result, "data_ids": tiny_repo.data_ids}


def _check_success(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("tiny_repo_pipetask")  # The worker that already holds the tiny repository.
def test_bps_submit_writes_object_deepdisc_for_every_patch(bps_run: dict[str, Any]) -> None:
    from lsst.daf.butler import Butler

    _check_success(bps_run["result"])
    butler = Butler.from_config(str(bps_run["root"]), collections=OUTPUT)
    chain = list(butler.collections.get_info(OUTPUT).children)
    # The final job chained the new run in front of the inputs.
    assert chain[0].startswith(f"{OUTPUT}/") and f"pretrained_models/{MODEL_NAME}" in chain
    refs = butler.query_datasets("object_deepdisc", collections=OUTPUT, explain=False)
    expected = {(int(d["tract"]), int(d["patch"])) for d in bps_run["data_ids"]}
    assert {(int(ref.dataId["tract"]), int(ref.dataId["patch"])) for ref in refs} == expected
    for ref in refs:
        assert ref.run == chain[0]
        catalog = butler.get(ref)
        assert 0 < len(catalog) <= 30, "the model keeps at most 30 detections per patch"
        assert "footprint" in catalog.colnames


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("tiny_repo_pipetask")
def test_bps_jobs_ran_as_parsl_jobs_over_loopback(bps_run: dict[str, Any]) -> None:
    _check_success(bps_run["result"])
    submit_dir: Path = bps_run["submit_dir"]
    # One job per patch, plus the init and final jobs, each with its logs under submit/<output run>/logs/.
    (log_dir,) = list(submit_dir.glob("submit/**/logs"))
    patch_logs = sorted((log_dir / "detect").rglob("*.stderr"))
    assert len(patch_logs) == len(bps_run["data_ids"])
    executed = set()
    for path in patch_logs:
        text = path.read_text()
        executed |= set(re.findall(r"Execution of task 'detect' on quantum \{[^}]*patch: (\d+)\}", text))
    assert executed == {str(d["patch"]) for d in bps_run["data_ids"]}
    assert (log_dir / "pipetaskInit").is_dir() and (log_dir / "finalJob").is_dir()
    # Parsl's worker pools were told to reach the interchange on 127.0.0.1 and nothing else.
    scripts = [p.read_text() for p in (submit_dir / "runinfo").rglob("submit_scripts/*")]
    pattern = re.compile(r"process_worker_pool\.py.*? -a (\S+)")
    addresses = [match.group(1) for text in scripts for match in pattern.finditer(text)]
    assert addresses and set(addresses) == {"127.0.0.1"}
