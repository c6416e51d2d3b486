"""The three layers: the pure core never imports Butler, pipeline or afw code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "python" / "lsst" / "meas" / "extensions" / "deepdisc" / "core"
FORBIDDEN = ("lsst.daf", "lsst.pipe", "lsst.images", "lsst.afw", "lsst.meas.base", "lsst.ctrl")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_has_no_butler_imports(path: Path) -> None:
    bad = [name for name in _imports(path) if name.startswith(FORBIDDEN)]
    assert not bad, f"{path.name} imports {bad}: the core layer must stay free of Butler/afw code"


def test_package_layout_has_the_stack_files(package_root: Path) -> None:
    for relative in (
        "ups/meas_extensions_deepdisc.table",
        "SConstruct",
        "doc/manifest.yaml",
        "doc/conf.py",
        "doc/lsst.meas.extensions.deepdisc/index.rst",
        "pipelines",
        "config",
        "bin",
        "README.md",
        "LICENSE",
        "COPYRIGHT",
    ):
        assert (package_root / relative).exists(), relative
    table = (package_root / "ups/meas_extensions_deepdisc.table").read_text()
    for needed in (
        "setupRequired(pipe_base)",
        "setupRequired(daf_butler)",
        "setupOptional(afw)",
        "DAF_BUTLER_CONFIG_PATH",
    ):
        assert needed in table
