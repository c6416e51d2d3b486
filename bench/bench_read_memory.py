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
"""Benchmark: peak memory of reading a patch's coadds into the detection task's multi-band cubes.

What ``read_coadds`` does in a ``pipetask`` quantum, from files: the benchmark patch (``bench_detect``'s
cache) is written once as one ``lsst.images`` FITS file per band under ``bench/work/``, then, each in its own
fresh process, the bands are read and stacked by ``multiband_from_masked_images``:

* ``all bands held``: every band read first, then stacked (the reading before issue #14's fourth round);
* ``streamed``: `LazyBands`, which reads a band when the stacking looks it up (as ``read_coadds`` does).

Reported: the process's resident memory after the imports, its peak (``VmHWM``), the peak over the start,
the cubes' own size and the wall time.  Results go to
``<out>/<date>-<machine>-<commit>-read-memory.{md,json}``.

    python bench/bench_read_memory.py --size 4100 --out bench/results
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import datetime
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect import (  # The sibling script, found through the path set above.
    DEFAULT_OUT_DIR,
    DEFAULT_WORK_DIR,
    GIB,
    _machine_slug,
    git_commit,
    load_patch,
    machine_info,
    simulate_or_load,
)

MODES = ("all bands held", "streamed")


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _write_bands(cache: Path, work: Path) -> list[Path]:
    """One ``lsst.images`` FITS file per band of the cached patch (written once)."""
    from lsst.meas.extensions.deepdisc.butler.conversions import masked_image_from_multiband

    directory = work / f"{cache.stem}-coadds"
    image, metadata = load_patch(cache)
    paths = [directory / f"{band}.fits" for band in metadata["bands"]]
    if not all(path.exists() for path in paths):
        directory.mkdir(parents=True, exist_ok=True)
        for band, path in zip(metadata["bands"], paths):
            partial = path.with_name(path.name + ".partial.fits")
            masked_image_from_multiband(image, band).write(partial)
            partial.replace(path)
    return paths


def _measure(mode: str, paths: list[Path]) -> dict[str, Any]:
    """Body of a measuring process: read and stack the bands one way, report memory and time."""
    from lsst.images import MaskedImage

    from lsst.meas.extensions.deepdisc.butler.conversions import LazyBands, multiband_from_masked_images

    by_band = {path.stem: path for path in paths}
    bands = list(by_band)
    start_rss = _status_bytes("VmRSS")
    start = time.perf_counter()
    if mode == MODES[0]:
        images: Mapping[str, Any] = {band: MaskedImage.read(path) for band, path in by_band.items()}
    else:
        images = LazyBands(by_band, MaskedImage.read)
    stacked = multiband_from_masked_images(images, bands)
    seconds = time.perf_counter() - start
    cubes = stacked.image.nbytes + stacked.variance.nbytes + stacked.mask.nbytes
    return {
        "mode": mode,
        "seconds": seconds,
        "start_rss_bytes": start_rss,
        "peak_rss_bytes": _status_bytes("VmHWM"),
        "cube_bytes": cubes,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="benchmark", help="simulation preset of the patch")
    parser.add_argument("--size", type=int, default=4100, help="patch side, px")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR, help="cache of simulated patches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="where results are written")
    parser.add_argument("--machine", default=None, help="machine name in the file names")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)  # inside a measuring process
    parser.add_argument("--paths", type=Path, nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the band files if needed, measure both ways of reading, write the results."""
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(args.measure, args.paths)))
        return 0
    cache, patch = simulate_or_load(args.preset, None, None, args.size, None, args.work)
    paths = _write_bands(cache, args.work)
    results = []
    for mode in MODES:  # Each in a fresh process: VmHWM is the process's own peak.
        command = [sys.executable, __file__, "--measure", mode, "--paths", *map(str, paths)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        result = results[-1]
        print(
            f"{mode}: {result['seconds']:.1f} s, peak {result['peak_rss_bytes'] / GIB:.2f} GiB, "
            f"{(result['peak_rss_bytes'] - result['start_rss_bytes']) / GIB:.2f} GiB over the start",
            flush=True,
        )
    machine = machine_info("cpu", 1)
    if args.machine:
        machine["name"] = args.machine
    commit = git_commit()
    today = datetime.date.today().isoformat()
    stem = f"{today}-{args.machine or _machine_slug(machine)}-{commit}-read-memory"
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(sys.argv), "commit": commit, "machine": machine, "patch": patch}
    record["results"] = results
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str))
    lines = [
        f"# Reading a {patch['width']} px {len(patch['bands'])}-band patch into the cubes, {today}",
        "",
        f"- Command: `python bench/bench_read_memory.py {' '.join(sys.argv[1:])}`",
        f"- Commit: `{commit}`; machine: {machine.get('cpu_model', '?')}, "
        f"Python {machine.get('python', '?')}, load average at start {machine.get('loadavg_at_start')}",
        f"- Files: one `lsst.images` FITS file per band under `{paths[0].parent}`",
        "",
        "| reading | s | RSS after imports GiB | peak RSS GiB | peak over the start GiB | cubes GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result['mode']} | {result['seconds']:.1f} | {result['start_rss_bytes'] / GIB:.2f} "
            f"| {result['peak_rss_bytes'] / GIB:.2f} "
            f"| {(result['peak_rss_bytes'] - result['start_rss_bytes']) / GIB:.2f} "
            f"| {result['cube_bytes'] / GIB:.2f} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
