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

"""The ``deepdisc-model`` command: create, inspect and ingest, in-process and as a real process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsst.meas.extensions.deepdisc.cli.model import main
from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
from lsst.meas.extensions.deepdisc.core.scaling import ScalingSpec

CREATE = ["create", "--architecture", "compact-R18-FPN", "--bands", "g", "r", "i"]


def _same_weights(a: ModelPackage, b: ModelPackage) -> bool:
    return set(a.state_dict) == set(b.state_dict) and all(
        torch.equal(a.state_dict[key], b.state_dict[key]) for key in a.state_dict
    )


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compact random-init package made by the command (once per module)."""
    path = tmp_path_factory.mktemp("cli") / "compact.deepdisc.zip"
    status = main(
        [
            *CREATE,
            "--random-init",
            "--seed",
            "5",
            "--name",
            "cli-compact",
            "--output",
            str(path),
            "--scaling",
            "lupton",
            "--scaling-param",
            "Q=8",
            "stretch=0.5",
            "--training-data",
            "none (random init)",
            "--training-collection",
            "u/test/a",
            "u/test/b",
            "--metric",
            "AP=0.5",
        ]
    )
    assert status == 0
    return path


def test_create_records_what_was_asked(created: Path) -> None:
    package = ModelPackage.load(created)
    assert package.name == "cli-compact" and package.version == "1.0"
    assert package.architecture == "compact-R18-FPN"
    assert package.bands == ("g", "r", "i") and package.class_names == ("star", "galaxy")
    assert package.scaling == ScalingSpec("lupton", {"Q": 8, "stretch": 0.5}, ("NO_DATA",))
    provenance = package.provenance
    assert provenance["random_init_seed"] == 5
    assert provenance["training_data"] == "none (random init)"
    assert provenance["training_collections"] == ["u/test/a", "u/test/b"]
    assert provenance["metrics"] == {"AP": 0.5}
    assert provenance["command"].startswith("deepdisc-model create --architecture compact-R18-FPN")
    assert "created_utc" in provenance
    umask = os.umask(0o022)
    os.umask(umask)
    assert created.stat().st_mode & 0o777 == 0o666 & ~umask  # Usual permissions, not a private temp file's.


def test_random_init_is_reproducible(created: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.zip"
    assert main([*CREATE, "--random-init", "--seed", "5", "--name", "again", "--output", str(again)]) == 0
    assert _same_weights(ModelPackage.load(again), ModelPackage.load(created))
    other = tmp_path / "other.zip"
    assert main([*CREATE, "--random-init", "--seed", "6", "--name", "other", "--output", str(other)]) == 0
    assert not _same_weights(ModelPackage.load(other), ModelPackage.load(created))


def test_inspect_text_and_json(created: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(created)]) == 0
    text = capsys.readouterr().out
    assert "'cli-compact'" in text and "g r i" in text and "compact-R18-FPN" in text
    assert main(["inspect", "--json", str(created)]) == 0
    description = json.loads(capsys.readouterr().out)
    package = ModelPackage.load(created)
    assert description["bands"] == ["g", "r", "i"]
    assert description["class_names"] == ["star", "galaxy"]
    assert description["scaling"]["params"] == {"Q": 8, "stretch": 0.5}
    assert description["weights"]["values"] == package.n_parameters
    assert description["content_sha256"] == package.content_digest()
    assert description["file"] == str(created)


def test_inspect_refuses_a_damaged_package(created: Path, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(created.read_bytes()[:-1000])
    assert main(["inspect", str(damaged)]) == 1
    assert "not a readable zip archive" in capsys.readouterr().err


def test_create_from_a_detectron2_checkpoint(created: Path, tmp_path: Path) -> None:
    source = ModelPackage.load(created)
    checkpoint = tmp_path / "model_final.pth"
    weights = {f"module.{key}": value for key, value in source.state_dict.items()}
    torch.save({"model": weights, "iteration": 42, "scheduler": {"last_epoch": 42}}, checkpoint)
    output = tmp_path / "from_checkpoint.zip"
    status = main(
        [
            *CREATE,
            "--checkpoint",
            str(checkpoint),
            "--name",
            "from-ckpt",
            "--version",
            "0.3",
            "--output",
            str(output),
        ]
    )
    assert status == 0
    package = ModelPackage.load(output)
    assert _same_weights(package, source)
    assert package.version == "0.3"
    assert package.provenance["source_checkpoint"] == "model_final.pth"
    assert (
        package.provenance["source_checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    )
    assert package.provenance["iterations"] == 42
    assert "random_init_seed" not in package.provenance


def test_a_checkpoint_that_does_not_fit_names_the_keys(created: Path, tmp_path: Path, capsys) -> None:
    weights = dict(ModelPackage.load(created).state_dict)
    dropped = next(iter(weights))
    del weights[dropped]
    weights["extra.weight"] = torch.zeros(2)
    checkpoint = tmp_path / "partial.pth"
    torch.save(weights, checkpoint)
    output = tmp_path / "never.zip"
    assert main([*CREATE, "--checkpoint", str(checkpoint), "--name", "x", "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert f"missing key(s): {dropped}" in error and "unexpected key(s): extra.weight" in error
    assert not output.exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_with_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    checkpoint = tmp_path / "hostile.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "callback": _Exploit(marker)}, checkpoint)
    output = tmp_path / "never.zip"
    assert main([*CREATE, "--checkpoint", str(checkpoint), "--name", "x", "--output", str(output)]) == 1
    assert "refused checkpoint" in capsys.readouterr().err
    assert not marker.exists() and not output.exists()


def test_a_python_lazyconfig_is_refused_with_the_conversion_recipe(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"
    config = tmp_path / "cascade_mvitv2.py"
    config.write_text(f"open({str(marker)!r}, 'w')\n")
    args = ["create", "--detectron2-config", str(config), "--bands", "g", "r", "i", "--random-init"]
    assert main([*args, "--name", "x", "--output", str(tmp_path / "x.zip")]) == 2
    error = capsys.readouterr().err
    assert "LazyConfig.save" in error and "cascade_mvitv2.yaml" in error
    assert not marker.exists()


def test_create_from_a_detectron2_yaml_config(tmp_path: Path) -> None:
    config = tmp_path / "my_rcnn.yaml"
    config.write_text(
        """\
_BASE_: Base-RCNN-FPN.yaml
MODEL:
  WEIGHTS: detectron2://ImageNetPretrained/MSRA/R-50.pkl
  MASK_ON: true
  PIXEL_MEAN: [0.5, 0.25, 0.125]
  PIXEL_STD: [2.0, 2.0, 2.0]
  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64, STEM_OUT_CHANNELS: 32, NORM: GN}
  FPN: {OUT_CHANNELS: 32}
  ROI_HEADS: {NUM_CLASSES: 80}
  ROI_BOX_HEAD: {NUM_FC: 1, FC_DIM: 64}
  ROI_MASK_HEAD: {NUM_CONV: 1, CONV_DIM: 32}
"""
    )
    output = tmp_path / "imported.zip"
    args = [
        "create",
        "--detectron2-config",
        str(config),
        "--bands",
        "g",
        "r",
        "i",
        "--classes",
        "star",
        "galaxy",
    ]
    assert main([*args, "--random-init", "--name", "imported", "--output", str(output)]) == 0
    package = ModelPackage.load(output)
    assert package.architecture == "imported:my_rcnn.yaml"
    assert package.pixel_mean == (0.5, 0.25, 0.125) and package.pixel_std == (2.0, 2.0, 2.0)
    assert package.provenance["detectron2_config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    model = package.build_model()  # The imported config builds a model the weights fit exactly.
    assert model.roi_heads.num_classes == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--architecture", "no-such-net"], "unknown architecture"),
        (["--architecture", "compact-R18-FPN", "--scaling", "sqrt"], "unknown scaling"),
        (["--architecture", "compact-R18-FPN", "--pixel-std", "1", "1"], "pixel_std"),
    ],
)
def test_usage_errors_exit_2_with_a_message(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    args = ["create", *extra, "--bands", "g", "r", "i", "--random-init", "--name", "x"]
    assert main([*args, "--output", str(tmp_path / "x.zip")]) == 2
    assert message in capsys.readouterr().err


def test_existing_output_needs_force(created: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = created.read_bytes()
    assert main([*CREATE, "--random-init", "--name", "x", "--output", str(created)]) == 2
    assert "--force" in capsys.readouterr().err
    assert created.read_bytes() == before


def _small_package(path: Path, name: str, version: str) -> Path:
    """A valid package of a few kilobytes (ingest does not depend on the model's size)."""
    ModelPackage(
        name=name,
        version=version,
        model_config={"format": "yacs", "config": {"MODEL": {}}, "bands": ["g", "r", "i"]},
        state_dict={"w": torch.arange(6.0).reshape(2, 3)},
        bands=("g", "r", "i"),
        scaling=ScalingSpec("zscore"),
        class_names=("star", "galaxy"),
    ).save(path)
    return path


def test_ingest_is_idempotent_and_refuses_different_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lsst.daf.butler import Butler

    repo = tmp_path / "repo"
    Butler.makeRepo(str(repo))
    first = _small_package(tmp_path / "first.zip", "small", "1")
    assert main(["ingest", str(repo), str(first), "--no-check-model"]) == 0
    assert (
        "ingested 'small' as deepdisc_model in collection 'pretrained_models/small'"
        in capsys.readouterr().out
    )
    assert main(["ingest", str(repo), str(first), "--no-check-model"]) == 0
    assert "already present (same content), nothing to do" in capsys.readouterr().out

    second = _small_package(tmp_path / "second.zip", "small", "2")
    assert main(["ingest", str(repo), str(second), "--no-check-model"]) == 1
    assert "already holds a different deepdisc_model" in capsys.readouterr().err
    assert main(["ingest", str(repo), str(second), "--replace", "--no-check-model"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert main(["ingest", str(repo), str(first), "--name", "small-v1", "--no-check-model"]) == 0

    with Butler.from_config(str(repo)) as butler:
        refs = {ref.run: ref for ref in butler.registry.queryDatasets("deepdisc_model", collections="*")}
        assert sorted(refs) == ["pretrained_models/small", "pretrained_models/small-v1"]
        assert butler.get(refs["pretrained_models/small"]) == ModelPackage.load(second)
        assert butler.get(refs["pretrained_models/small-v1"]) == ModelPackage.load(first)


def test_ingest_refuses_a_hostile_file_before_touching_the_repository(tmp_path: Path, capsys) -> None:
    from lsst.daf.butler import Butler

    repo = tmp_path / "repo"
    Butler.makeRepo(str(repo))
    hostile = tmp_path / "hostile.zip"
    hostile.write_bytes(_small_package(tmp_path / "ok.zip", "small", "1").read_bytes()[:-200])
    assert main(["ingest", str(repo), str(hostile)]) == 1
    assert "not a readable zip archive" in capsys.readouterr().err
    with Butler.from_config(str(repo)) as butler:
        assert "deepdisc_model" not in {t.name for t in butler.registry.queryDatasetTypes()}


def test_the_installed_command_runs_as_a_process(created: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    script = shutil.which("deepdisc-model") or shutil.which("deepdisc-model", path=bin_dir)
    command = [script] if script else [sys.executable, "-m", "lsst.meas.extensions.deepdisc.cli.model"]
    result = subprocess.run(
        [*command, "inspect", "--json", str(created)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "cli-compact"


def test_inspect_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "missing.zip")]) == 1
    assert "no model package file" in capsys.readouterr().err


def test_weights_that_do_not_fit_are_refused_by_inspect_and_ingest(
    created: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lsst.daf.butler import Butler

    package = ModelPackage.load(created)
    state = dict(package.state_dict)
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(3, 3)
    misfit = tmp_path / "misfit.zip"
    ModelPackage(
        name="misfit",
        version="1",
        model_config=package.model_config,
        state_dict=state,
        bands=package.bands,
        scaling=package.scaling,
        class_names=package.class_names,
    ).save(misfit)
    assert main(["inspect", str(misfit)]) == 1
    err = capsys.readouterr().err
    assert "do not fit the model" in err and key in err
    assert main(["inspect", str(misfit), "--no-check-model"]) == 0  # The file itself is intact.
    assert "model check" not in capsys.readouterr().out
    repo = tmp_path / "repo"
    Butler.makeRepo(str(repo))
    assert main(["ingest", str(repo), str(misfit)]) == 1
    assert "do not fit the model" in capsys.readouterr().err
    with Butler.from_config(str(repo)) as butler:
        assert not list(butler.registry.queryCollections("pretrained_models/*"))
    assert main(["inspect", str(created)]) == 0
    assert "model check    : weights load" in capsys.readouterr().out
