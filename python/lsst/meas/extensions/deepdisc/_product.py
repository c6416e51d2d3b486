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
"""Where the product's data files are: pipelines, model and task configs, the shipped model.

In a checkout and inside the Rubin stack they live at the product root (``pipelines/``, ``config/``,
``models/``); a built wheel carries the same tree as package data under ``_data/`` (in the checkout
``_data/`` holds links to the root directories, so both layouts are one).  ``$MEAS_EXTENSIONS_DEEPDISC_DIR``
(set by EUPS and by the Makefile) wins wherever it is set and holds the file asked for.
"""

from __future__ import annotations

__all__ = [
    "PRODUCT_DIR_VARIABLE",
    "SHIPPED_MODEL_NAME",
    "SHIPPED_MORPHOLOGY_NAME",
    "model_config_dir",
    "packaged_data_dir",
    "pipeline_names",
    "pipeline_path",
    "product_dir",
    "shipped_model_path",
    "shipped_morphology_path",
    "task_config_dir",
    "task_config_path",
]

import os
from importlib import resources
from pathlib import Path

PRODUCT_DIR_VARIABLE = "MEAS_EXTENSIONS_DEEPDISC_DIR"
"""Environment variable of the product directory (EUPS's ``<PRODUCT>_DIR``)."""

SHIPPED_MODEL_NAME = "deepdisc-compact-sim.zip"
"""File name of the model package the product ships (``models/``)."""

SHIPPED_MORPHOLOGY_NAME = "deepdisc-morphology-sim.zip"
"""File name of the morphology classifier package the product ships (``models/``)."""


def packaged_data_dir() -> Path:
    """The product tree that travels with the Python package (``_data/`` beside this module)."""
    data = resources.files(__package__) / "_data"
    if not isinstance(data, Path):
        raise FileNotFoundError(
            f"{__package__} is imported from an archive ({data}); install it as a directory to use its data"
        )
    return data


def _candidates() -> list[Path]:
    roots = []
    if value := os.environ.get(PRODUCT_DIR_VARIABLE):
        roots.append(Path(value))
    roots.append(packaged_data_dir())
    return roots


def _find(relative: str) -> Path:
    candidates = [root / relative for root in _candidates()]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise FileNotFoundError(f"{relative} not found; looked in {', '.join(str(c) for c in candidates)}")


def product_dir() -> Path:
    """The product directory in use.

    ``$MEAS_EXTENSIONS_DEEPDISC_DIR`` when it has ``pipelines/``, else the packaged tree.

    Set ``$MEAS_EXTENSIONS_DEEPDISC_DIR`` to this directory to run the documented
    ``pipetask run -p $MEAS_EXTENSIONS_DEEPDISC_DIR/pipelines/...`` commands outside the stack
    (``deepdisc-paths --shell`` prints the line).
    """
    return _find("pipelines").parent


def pipeline_names() -> list[str]:
    """Names of the shipped pipelines (``DeepDisc``, ``DeepDiscCompare``, ``DeepDiscTrain``)."""
    return sorted(path.stem for path in (product_dir() / "pipelines").glob("*.yaml"))


def pipeline_path(name: str = "DeepDisc") -> Path:
    """Path of a shipped pipeline, by name with or without ``.yaml``.

    Raises
    ------
    FileNotFoundError
        No such pipeline; the message lists the shipped ones.
    """
    stem = name.removesuffix(".yaml")
    path = product_dir() / "pipelines" / f"{stem}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no pipeline {name!r} in {path.parent}; shipped: {pipeline_names()}")
    return path


def model_config_dir() -> Path:
    """Directory of the architecture recipes (``config/models``)."""
    return _find("config/models")


def task_config_dir() -> Path:
    """Directory of the task config overrides (``config/tasks``)."""
    return _find("config/tasks")


def task_config_path(name: str) -> Path:
    """Path of a task config override in ``config/tasks`` (``name`` with or without ``.py``)."""
    return _find(f"config/tasks/{name.removesuffix('.py')}.py")


def shipped_model_path() -> Path:
    """Path of the shipped model package (``models/deepdisc-compact-sim.zip``).

    Raises
    ------
    FileNotFoundError
        The product was installed without it.
    """
    return _find(f"models/{SHIPPED_MODEL_NAME}")


def shipped_morphology_path() -> Path:
    """Path of the shipped morphology classifier (``models/deepdisc-morphology-sim.zip``).

    Raises
    ------
    FileNotFoundError
        The product was installed without it.
    """
    return _find(f"models/{SHIPPED_MORPHOLOGY_NAME}")
