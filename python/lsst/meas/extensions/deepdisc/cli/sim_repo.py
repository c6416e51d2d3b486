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

r"""``deepdisc-sim-repo``: build (or extend) a simulated DRP Butler repository.

Example::

    deepdisc-sim-repo /path/to/repo --preset small
    butler query-datasets /path/to/repo deep_coadd --collections sim/small \
        --where "skymap = 'deepdisc_sim_small'"

See `lsst.meas.extensions.deepdisc.sim.repo` for the datasets written.  Running it again is cheap: complete
patches are skipped.
"""

from __future__ import annotations

__all__ = ["build_parser", "main"]

import argparse
import logging
import sys
from collections.abc import Sequence


def _patch_argument(value: str) -> int | tuple[int, int]:
    if "," in value:
        x, y = value.split(",", 1)
        return int(x), int(y)
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    from ..sim.presets import available_presets

    parser = argparse.ArgumentParser(
        prog="deepdisc-sim-repo",
        description="Simulate DRP patches (coadds, truth, scarlet models, catalogs) into a Butler repo.",
    )
    parser.add_argument(
        "repo", help="repository root (created if missing) or an existing repository's config"
    )
    parser.add_argument(
        "--preset", default="tiny", help=f"simulation preset: {', '.join(available_presets())}"
    )
    parser.add_argument("--seed", type=int, help="base seed (default: each tract's seed from the preset)")
    parser.add_argument("--collection", help="CHAINED input collection (default sim/<preset>)")
    parser.add_argument("--run", help="RUN collection (default <collection>/run)")
    parser.add_argument(
        "--truth-models", action="store_true", help="store exact models instead of the deblender's output"
    )
    parser.add_argument(
        "--patches",
        nargs="+",
        type=_patch_argument,
        metavar="PATCH",
        help="patches to write, as ids or X,Y (default: all)",
    )
    parser.add_argument("--tracts", nargs="+", type=int, help="tracts to write (default: all of the preset)")
    parser.add_argument(
        "--records-only",
        action="store_true",
        help="only register the skymap/band records, dataset types and collections (no simulation)",
    )
    parser.add_argument(
        "-j", "--jobs", type=int, default=1, help="patches simulated at once in worker processes (default 1)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deepdisc-sim-repo``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from ..sim.repo import build_sim_repo

    try:
        info = build_sim_repo(
            args.repo,
            preset=args.preset,
            seed=args.seed,
            collection=args.collection,
            truth_models=args.truth_models,
            patches=[] if args.records_only else args.patches,
            tracts=args.tracts,
            run=args.run,
            jobs=args.jobs,
        )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"deepdisc-sim-repo: error: {err}", file=sys.stderr)
        return 1
    print(
        f"repository {info.root}: {info.written} patch(es) written, {info.skipped} already complete\n"
        f"  input collection: {info.collection} (run {info.run})\n"
        f"  skymap: {info.skymap}, bands: {' '.join(info.bands)}\n"
        f"  try: butler query-datasets {info.root} deep_coadd --collections {info.collection} "
        f"--where \"skymap = '{info.skymap}'\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
