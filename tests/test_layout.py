"""The three layers: the pure core never imports Butler, pipeline or afw code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "lsst" / "meas" / "extensions" / "deepdisc"
CORE = PACKAGE / "core"
PACKAGE_NAME = "lsst.meas.extensions.deepdisc"
FORBIDDEN = ("lsst.daf", "lsst.pipe", "lsst.images", "lsst.afw", "lsst.meas.base", "lsst.ctrl")
# Layers may only import downwards: the core from none of the others, Butler adapters and tasks not from
# the simulation or the command-line tools.
FORBIDDEN_LAYERS = {
    "core": ("butler", "tasks", "sim", "cli"),
    "butler": ("tasks", "sim", "cli"),
    "tasks": ("sim", "cli"),
}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [part for part in relative.parts if part != "__init__"]
    return ".".join([PACKAGE_NAME, *parts])


def _imports(path: Path) -> list[str]:
    """Absolute names of every module imported by ``path``, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                base = ".".join(
                    parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else [])
                )
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def _layer(name: str) -> str | None:
    if not name.startswith(PACKAGE_NAME + "."):
        return None
    return name[len(PACKAGE_NAME) + 1 :].split(".")[0]


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_has_no_butler_imports(path: Path) -> None:
    bad = [name for name in _imports(path) if name.startswith(FORBIDDEN)]
    assert not bad, f"{path.name} imports {bad}: the core layer must stay free of Butler/afw code"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_only_import_downwards(path: Path) -> None:
    layer = _layer(_module_name(path))
    forbidden = FORBIDDEN_LAYERS.get(layer or "", ())
    bad = sorted({name for name in _imports(path) if _layer(name) in forbidden})
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) imports {bad}"


def test_the_layer_rule_catches_relative_imports(tmp_path: Path) -> None:
    planted = CORE / "_planted_for_test.py"
    planted.write_text("from ..sim.types import DeblendedBlend\nfrom . import footprints\n")
    try:
        names = _imports(planted)
        assert f"{PACKAGE_NAME}.sim.types" in names and f"{PACKAGE_NAME}.core.footprints" in names
        with pytest.raises(AssertionError, match="sim.types"):
            test_layers_only_import_downwards(planted)
    finally:
        planted.unlink()


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


def test_storage_class_pytypes_keep_their_names(package_root: Path) -> None:
    # A repository embeds the storage classes of the code that created it (butler.yaml), and the Butler
    # refuses a definition that differs: renaming a module named here breaks every existing repository.
    import importlib

    import yaml

    path = package_root / "python/lsst/meas/extensions/deepdisc/butler/configs/storageClasses.yaml"
    classes = yaml.safe_load(path.read_text())["storageClasses"]
    pytypes = {name: entry["pytype"] for name, entry in classes.items()}
    assert pytypes == {
        "DeepDiscModelPackage": "lsst.meas.extensions.deepdisc.core.model_package.ModelPackage",
        "DeepDiscMorphologyPackage": "lsst.meas.extensions.deepdisc.core.morphology.MorphologyPackage",
        "ScarletModelArchive": "lsst.meas.extensions.deepdisc.core.scarlet_io.ScarletModelData",
    }
    for pytype in pytypes.values():
        module, _, name = pytype.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type)
