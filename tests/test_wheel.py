"""The package works from a built wheel, outside the checkout and without the stack's environment.

The wheel is built from a copy of the source tree, installed with ``--no-deps`` into a scratch virtual
environment that sees the project's environment (for torch, detectron2 and the Rubin middleware) through a
``.pth`` line, and used from a directory outside the checkout with ``$MEAS_EXTENSIONS_DEEPDISC_DIR``,
``$PYTHONPATH`` and ``$DAF_BUTLER_CONFIG_PATH`` unset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in the scratch environment: builds a model from the packaged recipes, reads the packaged model and
# expands the comparison pipeline, whose import of DeepDisc.yaml goes through the package resource.
_PROBE = """
import json, sys
import lsst.meas.extensions.deepdisc as dd
from lsst.meas.extensions.deepdisc.core.models.factory import ModelSpec, build_model_from_spec
from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
from lsst.pipe.base import Pipeline

model = build_model_from_spec(ModelSpec(architecture="compact-R18-FPN", bands=("g", "r", "i")))
package = ModelPackage.load(dd.shipped_model_path())
graph = Pipeline.from_uri(str(dd.pipeline_path("DeepDiscCompare"))).to_graph()
print(json.dumps({
    "package_file": dd.__file__,
    "product_dir": str(dd.product_dir()),
    "model_config_dir": str(dd.model_config_dir()),
    "parameters": sum(p.numel() for p in model.parameters()),
    "shipped_model": package.name,
    "tasks": sorted(graph.tasks.keys()),
}))
"""


def _copy_source(destination: Path) -> Path:
    """The files a wheel is built from, so that the build leaves nothing in the checkout."""
    source = destination / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "python", source / "python", symlinks=True, ignore=ignore)
    for folder in ("pipelines", "config", "models"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "COPYRIGHT"):
        shutil.copy2(ROOT / name, source / name)
    return source


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch virtual environment with the wheel installed; returns the environment's directory."""
    work = tmp_path_factory.mktemp("wheel")
    source = _copy_source(work)
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source])
    (wheel,) = dist.glob("lsst_meas_extensions_deepdisc-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib]).stdout.strip())
    # The project's environment after the scratch one; its own .pth files (the editable checkout) are not
    # read from there, so the package can only come from the wheel.
    (site / "project_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([*pip, "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel])
    return venv


def _outside_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DAF_BUTLER_CONFIG_PATH")}
    env.pop("MEAS_EXTENSIONS_DEEPDISC_DIR", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.xdist_group("wheel")
def test_the_wheel_carries_the_product_tree(installed: Path) -> None:
    (wheel,) = (installed.parent / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "lsst/meas/extensions/deepdisc/_data"
    pipelines = (
        "DeepDisc",
        "DeepDiscCompare",
        "DeepDiscMorphology",
        "DeepDiscReliability",
        "DeepDiscStarGalaxy",
    )
    for name in (*pipelines, "DeepDiscTrain"):
        assert f"{data}/pipelines/{name}.yaml" in names
    assert f"{data}/config/models/compact-R18-FPN.yaml" in names
    assert f"{data}/config/tasks/train_cpu_demo.py" in names
    assert f"{data}/models/deepdisc-compact-sim.zip" in names
    assert f"{data}/models/deepdisc-morphology-sim.zip" in names
    assert "lsst/meas/extensions/deepdisc/butler/configs/storageClasses.yaml" in names
    # Data only: the product tree is not importable as packages.
    assert not any(n.startswith(f"{data}/") and n.endswith("__init__.py") for n in names)


@pytest.mark.slow
@pytest.mark.xdist_group("wheel")
def test_the_installed_wheel_builds_a_model_and_expands_pipelines(installed: Path, tmp_path: Path) -> None:
    result = _run([installed / "bin" / "python", "-c", _PROBE], cwd=tmp_path, env=_outside_env())
    found = json.loads(result.stdout.strip().splitlines()[-1])
    package_dir = Path(found["package_file"]).parent
    assert package_dir.is_relative_to(installed), found
    assert not package_dir.is_relative_to(ROOT)
    assert Path(found["product_dir"]) == package_dir / "_data"
    assert Path(found["model_config_dir"]).is_relative_to(installed)
    assert found["parameters"] > 1_000_000
    assert found["shipped_model"] == "deepdisc-compact-sim"
    assert found["tasks"] == ["compare", "compareSummary", "detect"]


@pytest.mark.slow
@pytest.mark.xdist_group("wheel")
def test_deepdisc_paths_prints_the_installed_pipelines(installed: Path, tmp_path: Path) -> None:
    command = installed / "bin" / "deepdisc-paths"
    env = _outside_env()
    pipeline = Path(_run([command, "--pipeline", "DeepDisc"], cwd=tmp_path, env=env).stdout.strip())
    assert pipeline.is_file() and pipeline.is_relative_to(installed)
    exports = _run([command, "--shell"], cwd=tmp_path, env=env).stdout
    product = pipeline.parent.parent
    assert f"export MEAS_EXTENSIONS_DEEPDISC_DIR={product}" in exports
    # The documented $MEAS_EXTENSIONS_DEEPDISC_DIR/pipelines/... commands then find the installed files.
    assert (product / "pipelines" / "DeepDiscCompare.yaml").is_file()
    missing = subprocess.run([command, "--pipeline", "NoSuch"], capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and "DeepDiscTrain" in missing.stderr
