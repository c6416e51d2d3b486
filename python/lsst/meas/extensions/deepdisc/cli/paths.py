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
"""``deepdisc-paths``: where the installed product's pipelines, configs and shipped model are.

Inside the Rubin stack EUPS sets ``$MEAS_EXTENSIONS_DEEPDISC_DIR``; a user of a plain virtual environment
(``pip install`` of the wheel) gets the same layout from the package data::

    eval "$(deepdisc-paths --shell)"      # sets MEAS_EXTENSIONS_DEEPDISC_DIR and DAF_BUTLER_CONFIG_PATH
    pipetask run ... -p "$(deepdisc-paths --pipeline DeepDisc)"
"""

from __future__ import annotations

__all__ = ["build_parser", "main"]

import argparse
import shlex
import sys
from collections.abc import Sequence

from .. import _product
from ..butler.config_path import BUTLER_CONFIG_DIR, BUTLER_CONFIG_VARIABLE, butler_config_path


def _shell_lines() -> list[str]:
    return [
        f"export {_product.PRODUCT_DIR_VARIABLE}={shlex.quote(str(_product.product_dir()))}",
        f"export {BUTLER_CONFIG_VARIABLE}={shlex.quote(butler_config_path())}",
    ]


def _listing() -> list[str]:
    lines = [
        f"product directory   {_product.product_dir()}",
        f"butler configs      {BUTLER_CONFIG_DIR}",
        f"model configs       {_product.model_config_dir()}",
        f"task configs        {_product.task_config_dir()}",
    ]
    try:
        lines.append(f"shipped model       {_product.shipped_model_path()}")
    except FileNotFoundError as error:
        lines.append(f"shipped model       none ({error})")
    lines += [f"pipeline {name:<18} {_product.pipeline_path(name)}" for name in _product.pipeline_names()]
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``deepdisc-paths``."""
    parser = argparse.ArgumentParser(prog="deepdisc-paths", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pipeline", metavar="NAME", help="print only this pipeline's path (e.g. DeepDisc)")
    which.add_argument("--model", action="store_true", help="print only the shipped model's path")
    which.add_argument(
        "--shell", action="store_true", help="print export lines for the environment the pipelines expect"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deepdisc-paths``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.pipeline:
            lines = [str(_product.pipeline_path(args.pipeline))]
        elif args.model:
            lines = [str(_product.shipped_model_path())]
        elif args.shell:
            lines = _shell_lines()
        else:
            lines = _listing()
    except FileNotFoundError as error:
        print(f"deepdisc-paths: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
