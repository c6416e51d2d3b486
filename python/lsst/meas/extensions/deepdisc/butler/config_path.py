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
"""Where the package's Butler configs are, and putting them on ``DAF_BUTLER_CONFIG_PATH``.

Light on purpose (no Butler or torch import): the console scripts, ``deepdisc-paths`` and the test
configuration use it before anything else.
"""

from __future__ import annotations

__all__ = ["BUTLER_CONFIG_DIR", "BUTLER_CONFIG_VARIABLE", "butler_config_path", "ensure_butler_config_path"]

import os
from pathlib import Path

BUTLER_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""Directory to put on ``DAF_BUTLER_CONFIG_PATH`` so that Butlers know our storage classes."""

BUTLER_CONFIG_VARIABLE = "DAF_BUTLER_CONFIG_PATH"
"""The environment variable the Butler reads its extra config directories from."""


def _current_paths() -> list[str]:
    return [p for p in os.environ.get(BUTLER_CONFIG_VARIABLE, "").split(os.pathsep) if p]


def butler_config_path() -> str:
    """``$DAF_BUTLER_CONFIG_PATH`` with `BUTLER_CONFIG_DIR` in front, unless it is already on it."""
    paths = _current_paths()
    if str(BUTLER_CONFIG_DIR) in paths:
        return os.pathsep.join(paths)
    return os.pathsep.join([str(BUTLER_CONFIG_DIR), *paths])


def ensure_butler_config_path() -> None:
    """Put `BUTLER_CONFIG_DIR` on ``DAF_BUTLER_CONFIG_PATH`` of this process (and its children).

    Call it before creating a Butler in a command-line tool, so that the ``DeepDiscModelPackage`` storage
    class and its formatter are known without the user setting the variable.
    """
    if str(BUTLER_CONFIG_DIR) not in _current_paths():
        os.environ[BUTLER_CONFIG_VARIABLE] = butler_config_path()
