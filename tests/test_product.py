"""The product's data files (pipelines, configs, shipped model) are found with and without EUPS."""

from __future__ import annotations

from pathlib import Path

import pytest

import lsst.meas.extensions.deepdisc as dd
from lsst.meas.extensions.deepdisc.butler.config_path import BUTLER_CONFIG_DIR
from lsst.meas.extensions.deepdisc.cli import paths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_product_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEAS_EXTENSIONS_DEEPDISC_DIR", raising=False)


def test_a_checkout_finds_its_own_tree_without_the_environment(no_product_dir) -> None:
    assert dd.product_dir() == ROOT
    assert dd.pipeline_path("DeepDiscCompare") == ROOT / "pipelines" / "DeepDiscCompare.yaml"
    assert dd.pipeline_path("DeepDisc.yaml") == ROOT / "pipelines" / "DeepDisc.yaml"
    assert dd.model_config_dir() == ROOT / "config" / "models"
    assert dd.task_config_path("train_cpu_demo") == ROOT / "config" / "tasks" / "train_cpu_demo.py"
    assert dd.shipped_model_path() == ROOT / "models" / "deepdisc-compact-sim.zip"
    assert dd.shipped_morphology_path() == ROOT / "models" / "deepdisc-morphology-sim.zip"
    assert dd.pipeline_names() == [
        "DeepDisc",
        "DeepDiscCompare",
        "DeepDiscMorphology",
        "DeepDiscReliability",
        "DeepDiscStarGalaxy",
        "DeepDiscTrain",
    ]


def test_the_comparison_pipeline_imports_detection_without_the_environment(no_product_dir) -> None:
    from lsst.pipe.base import Pipeline

    graph = Pipeline.from_uri(str(dd.pipeline_path("DeepDiscCompare"))).to_graph()
    assert sorted(graph.tasks.keys()) == ["compare", "compareSummary", "detect"]


def test_the_product_directory_variable_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "DeepDisc.yaml").write_text("tasks: {}\n")
    monkeypatch.setenv("MEAS_EXTENSIONS_DEEPDISC_DIR", str(tmp_path))
    assert dd.product_dir() == tmp_path
    assert dd.pipeline_path("DeepDisc") == tmp_path / "pipelines" / "DeepDisc.yaml"
    assert dd.pipeline_names() == ["DeepDisc"]
    # What the directory lacks still comes from the package.
    assert dd.model_config_dir() == ROOT / "config" / "models"
    with pytest.raises(FileNotFoundError, match=r"no pipeline 'DeepDiscTrain'.*shipped: \['DeepDisc'\]"):
        dd.pipeline_path("DeepDiscTrain")


def test_a_missing_file_names_every_place_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEAS_EXTENSIONS_DEEPDISC_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        dd.task_config_path("no_such_config")
    assert str(tmp_path) in str(error.value) and "_data" in str(error.value)


def test_deepdisc_paths(no_product_dir, capsys: pytest.CaptureFixture[str]) -> None:
    assert paths.main(["--pipeline", "DeepDiscTrain"]) == 0
    assert capsys.readouterr().out.strip() == str(ROOT / "pipelines" / "DeepDiscTrain.yaml")
    assert paths.main(["--model"]) == 0
    assert capsys.readouterr().out.strip() == str(ROOT / "models" / "deepdisc-compact-sim.zip")
    assert paths.main(["--shell"]) == 0
    exports = capsys.readouterr().out.splitlines()
    assert exports[0] == f"export MEAS_EXTENSIONS_DEEPDISC_DIR={ROOT}"
    assert exports[1].startswith(f"export DAF_BUTLER_CONFIG_PATH={BUTLER_CONFIG_DIR}")
    assert paths.main([]) == 0
    listing = capsys.readouterr().out
    assert "pipeline DeepDiscCompare" in listing and "shipped model" in listing
    assert paths.main(["--pipeline", "Nope"]) == 1
    names = [
        "DeepDisc",
        "DeepDiscCompare",
        "DeepDiscMorphology",
        "DeepDiscReliability",
        "DeepDiscStarGalaxy",
        "DeepDiscTrain",
    ]
    shipped = f"shipped: {names}"
    assert shipped in capsys.readouterr().err
