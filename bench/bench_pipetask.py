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

r"""Benchmark: one detect quantum on an LSST patch, end to end in ``pipetask run``.

Issue #14's throughput target is end to end in ``pipetask``: reading the six coadds through the Butler,
the task's ``run``, writing the catalog.  This script puts one patch of the ``benchmark`` simulation preset
(4100 x 4100 pixels, u g r i z y; the patch ``bench_detect_scaling.py`` uses) into a Butler repository
under ``bench/work/`` (simulated once, about 6 minutes), ingests the model package, then runs
``pipelines/DeepDisc.yaml#detect`` on it ``--runs`` times, each a fresh ``pipetask run`` process with
``--cores-per-quantum`` cores and its own output collection.  Reported per run: the quantum's seconds
(pipetask's ``Execution of task 'detect' ... took``), the task's ``run`` (its ``Detected ... in`` line), the
rest of the quantum (reading the coadds, building the model, writing the outputs), the process's wall time
and peak resident memory, and MPix/s of the quantum and of the process.

    python bench/bench_pipetask.py --package models/deepdisc-compact-sim.zip --runs 2 --out bench/results
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect import (  # The sibling script, found through the path set above.
    DEFAULT_OUT_DIR,
    DEFAULT_WORK_DIR,
    GIB,
    REPO_DIR,
    _machine_slug,
    git_commit,
    machine_info,
)

from lsst.meas.extensions.deepdisc.butler.config_path import ensure_butler_config_path

PRESET = "benchmark"
PATCH_PIXELS = 4100 * 4100

_QUANTUM = re.compile(r"Execution of task 'detect' on quantum .* took ([0-9.]+) seconds")
_RUN = re.compile(r"Detected (\d+) sources .* in ([0-9.]+) s \(inference ([0-9.]+) s\)")


def _prepare(repo: Path, tract: int, patch: tuple[int, int], package: Path) -> tuple[str, str]:
    """Simulate the patch into ``repo`` if it is not there, ingest ``package``; the skymap and model names."""
    from lsst.daf.butler import Butler

    from lsst.meas.extensions.deepdisc.butler.model_formatter import ingest_model_package
    from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
    from lsst.meas.extensions.deepdisc.sim.repo import build_sim_repo

    start = time.perf_counter()
    info = build_sim_repo(repo, PRESET, tracts=[tract], patches=[patch])
    print(f"repository {repo}: patch {patch} of tract {tract} ready in {time.perf_counter() - start:.0f} s")
    model = ModelPackage.load(package)
    butler = Butler.from_config(str(repo), writeable=True)
    ingest_model_package(butler, model)
    return info.skymap, model.name


def _run_once(repo: Path, skymap: str, model: str, tract: int, cores: int, output: str) -> dict[str, Any]:
    """One ``pipetask run`` process; its timings parsed from the log, its own wall time and peak RSS."""
    pipeline = REPO_DIR / "pipelines" / "DeepDisc.yaml"
    command = [
        "pipetask",
        "run",
        "-b",
        str(repo),
        "-i",
        f"sim/{PRESET},pretrained_models/{model}",
        "-o",
        output,
        "-p",
        f"{pipeline}#detect",
        "-d",
        f"skymap='{skymap}' AND tract={tract}",
        "--register-dataset-types",
        "--cores-per-quantum",
        str(cores),
    ]
    start = time.perf_counter()
    process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    log = process.stdout
    if process.returncode:
        raise RuntimeError(f"pipetask failed ({process.returncode}):\n{log[-4000:]}")
    quantum, run = _QUANTUM.search(log), _RUN.search(log)
    if quantum is None or run is None:
        raise RuntimeError(f"no quantum or run timing in pipetask's log:\n{log[-4000:]}")
    return {
        "command": " ".join(command),
        "sources": int(run.group(1)),
        "seconds": {
            "process": wall,
            "quantum": float(quantum.group(1)),
            "run": float(run.group(2)),
            "inference": float(run.group(3)),
            "quantum_outside_run": float(quantum.group(1)) - float(run.group(2)),
        },
    }


def _peak_rss_of_children() -> int:
    """The largest peak RSS of any finished child process (bytes; ``ru_maxrss`` is in kB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def _report(record: dict[str, Any]) -> str:
    lines = [
        f"# One detect quantum on an LSST patch in pipetask, {record['date']}",
        "",
        f"- Command: `{record['command']}`",
        f"- Commit: `{record['commit']}`",
        f"- Machine: {record['machine']['cpu_model']}, {record['machine']['usable_cores']} usable cores, "
        f"{record['machine']['ram_bytes'] / GIB:.1f} GiB RAM; load average at start "
        f"{', '.join(f'{x:.2f}' for x in record['machine']['loadavg_at_start'])}",
        f"- Patch: preset `{PRESET}` tract {record['tract']} patch {record['patch']} (4100 x 4100 px, "
        f"u g r i z y, {PATCH_PIXELS / 1e6:.2f} MPix); package `{record['package']}`; "
        f"`--cores-per-quantum {record['cores']}`",
        "",
        "| run | sources | quantum s | task run s (inference) | quantum outside run s | process s "
        "| MPix/s quantum | MPix/s process | peak RSS GiB (all runs so far) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, run in enumerate(record["runs"], 1):
        s = run["seconds"]
        lines.append(
            f"| {i} | {run['sources']} | {s['quantum']:.2f} | {s['run']:.1f} ({s['inference']:.1f}) "
            f"| {s['quantum_outside_run']:.2f} | {s['process']:.2f} "
            f"| {PATCH_PIXELS / 1e6 / s['quantum']:.3f} | {PATCH_PIXELS / 1e6 / s['process']:.3f} "
            f"| {run['peak_rss_bytes'] / GIB:.2f} |"
        )
    lines += [
        "",
        "`quantum`: pipetask's time for the quantum (reading the coadds through the Butler, building the "
        "model, the task's `run`, writing the outputs); `process`: the whole `pipetask run` (imports, "
        "quantum graph, the quantum); `peak RSS`: the largest peak resident memory of the runs so far "
        "(`getrusage` of the finished child processes).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Prepare the repository, run pipetask ``--runs`` times, write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--package", type=Path, default=REPO_DIR / "models" / "deepdisc-compact-sim.zip")
    parser.add_argument("--repo", type=Path, default=DEFAULT_WORK_DIR / "pipetask-repo")
    parser.add_argument("--tract", type=int, default=0)
    parser.add_argument("--patch", default="1,1", help="patch X,Y of the tract (default the benchmark's)")
    parser.add_argument("--runs", type=int, default=2, help="pipetask runs, each a fresh process")
    parser.add_argument("--cores", type=int, default=2, help="--cores-per-quantum (torch threads)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--machine", default=None, help="machine name in the file names")
    args = parser.parse_args(argv)
    patch = tuple(int(v) for v in args.patch.split(","))
    if len(patch) != 2 or args.runs < 1 or args.cores < 1:
        parser.error("--patch is X,Y; --runs and --cores are at least 1")
    # This process's Butler and the pipetask processes (which inherit it) need the package's configs.
    ensure_butler_config_path()
    skymap, model = _prepare(args.repo, args.tract, patch, args.package)
    machine = machine_info("cpu", args.cores)
    commit = git_commit()
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    runs = []
    for i in range(args.runs):
        output = f"u/bench/detect-{commit}-{stamp}-{i}"
        print(f"pipetask run {i + 1}/{args.runs} -> {output} ...", flush=True)
        run = _run_once(args.repo, skymap, model, args.tract, args.cores, output)
        run["peak_rss_bytes"] = _peak_rss_of_children()
        print(f"  quantum {run['seconds']['quantum']:.1f} s, process {run['seconds']['process']:.1f} s")
        runs.append(run)
    today = datetime.date.today().isoformat()
    record = {
        "date": today,
        "command": " ".join(["python", "bench/bench_pipetask.py", *(argv or sys.argv[1:])]),
        "commit": commit,
        "machine": machine,
        "tract": args.tract,
        "patch": list(patch),
        "package": args.package.name,
        "cores": args.cores,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{today}-{args.machine or _machine_slug(machine)}-{commit}-pipetask"
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(_report(record))
    print(f"wrote {args.out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
