"""The demo's subprocesses find the package's pipelines without make or EUPS."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsst.meas.extensions.deepdisc.cli import demo


def _captured_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    seen: dict[str, str] = {}

    def fake_run(args, check, env):
        seen.update(env)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    demo._run(["pipetask", "--help"])
    return seen


def test_pipetask_gets_the_package_directory_for_pipeline_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEAS_EXTENSIONS_DEEPDISC_DIR", raising=False)
    env = _captured_env(monkeypatch)
    root = Path(env["MEAS_EXTENSIONS_DEEPDISC_DIR"])
    # DeepDiscCompare.yaml imports $MEAS_EXTENSIONS_DEEPDISC_DIR/pipelines/DeepDisc.yaml.
    assert (root / "pipelines" / "DeepDisc.yaml").is_file()
    assert (
        "$MEAS_EXTENSIONS_DEEPDISC_DIR/pipelines/DeepDisc.yaml"
        in (root / "pipelines" / "DeepDiscCompare.yaml").read_text()
    )


def test_a_directory_set_by_eups_or_make_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEAS_EXTENSIONS_DEEPDISC_DIR", str(tmp_path))
    assert _captured_env(monkeypatch)["MEAS_EXTENSIONS_DEEPDISC_DIR"] == str(tmp_path)
