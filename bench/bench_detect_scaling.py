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
"""Benchmark: detection cost against patch size and source density, DeepDISC against sep and photutils.

For every patch size (default 1024, 2048 and 4100 px, the last an LSST patch) and every source density
(default the ``benchmark`` preset's and twice it), one patch is simulated (cached under ``bench/work/``)
and every method runs on exactly those pixels, each in its own freshly spawned process that reports its own
peak resident memory (``VmHWM``, see ``bench_detect.run_isolated``):

* ``deepdisc``: the trained package (default ``models/deepdisc-compact-sim.zip``) through the detection
  task's own ``DeepDiscDetectTask.run`` - scaling, validity mask, tiled inference, catalog, the S/N cut -
  after an untimed run on a 256 px cutout (what a process pays once: lazy imports, CUDA start-up);
* ``deepdisc reference``: the same run computed as before the speed work of issue #14 (float64 scalings,
  one forward call at a time, contiguous weights, torchvision's ROIAlign and NMS), to check that the fast
  path finds the same sources: the two catalogs are matched source by source;
* ``sep`` and ``photutils``: as in ``bench_detect.py``;
* optionally random-weight architectures (``--models R50-FPN``), capped at a realistic number of detections
  per tile as in ``bench_detect.py`` (1.5 x sep's source density per tile area).

Reported per method, size and density: seconds, MPix/s, peak RSS, milliseconds per detected source; then
seconds per MPix against patch size (flat when the cost is linear in pixels) and the catalog comparison.
Results go to ``<out>/<date>-<machine>-<commit>-scaling[-quick].json`` and ``.md``.

Run ``python bench/bench_detect_scaling.py --help`` for the options; bench/README.md explains how to run it.
"""

from __future__ import annotations

__all__ = ["compare_catalogs", "main", "parse_args"]

import argparse
import datetime
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect import (  # The sibling script, found through the path set above.
    BASELINE_PARAMS,
    DEFAULT_OUT_DIR,
    DEFAULT_WORK_DIR,
    GIB,
    INVALID_PLANES,
    SHIPPED_PACKAGE,
    TASK_DEFAULTS,
    _machine_slug,
    git_commit,
    machine_info,
    realistic_detections_cap,
    run_isolated,
    simulate_or_load,
)

DEFAULT_SIZES = (1024, 2048, 4100)
DEFAULT_DENSITIES = (1.0, 2.0)
QUICK_SIZES = (1024,)
# Two sources closer than this (pixels) are the same source when two catalogs of one patch are compared.
MATCH_RADIUS = 0.5


def compare_catalogs(fast: Path, reference: Path, radius: float = MATCH_RADIUS) -> dict[str, Any]:
    """Match two catalogs of the same patch source by source (mutual nearest centroids within ``radius``).

    Parameters
    ----------
    fast, reference : `pathlib.Path`
        ``.npz`` files written by ``bench_detect._save_catalog``.
    radius : `float`
        Largest centroid distance of a match, in pixels.

    Returns
    -------
    comparison : `dict`
        Source counts, matched fractions of both catalogs, the largest centroid offset and score difference
        of the matches and the fraction of matches with the same footprint area and class.
    """
    from scipy.spatial import cKDTree

    with np.load(fast) as a, np.load(reference) as b:
        a = {key: a[key] for key in a.files}
        b = {key: b[key] for key in b.files}
    n_a, n_b = a["score"].size, b["score"].size
    result: dict[str, Any] = {"n_fast": int(n_a), "n_reference": int(n_b)}
    if n_a == 0 or n_b == 0:
        return {**result, "matched": 0, "matched_fraction_fast": float(n_a == n_b)}
    xy_a = np.stack([a["centroid_x"], a["centroid_y"]], axis=1)
    xy_b = np.stack([b["centroid_x"], b["centroid_y"]], axis=1)
    distance_ab, nearest_ab = cKDTree(xy_b).query(xy_a)
    _, nearest_ba = cKDTree(xy_a).query(xy_b)
    mutual = (nearest_ba[nearest_ab] == np.arange(n_a)) & (distance_ab <= radius)
    rows_a = np.flatnonzero(mutual)
    rows_b = nearest_ab[rows_a]
    matched = int(rows_a.size)
    offsets = distance_ab[rows_a]
    return {
        **result,
        "matched": matched,
        "matched_fraction_fast": matched / n_a,
        "matched_fraction_reference": matched / n_b,
        "max_centroid_offset_px": float(offsets.max()) if matched else None,
        "max_score_difference": float(np.abs(a["score"][rows_a] - b["score"][rows_b]).max())
        if matched
        else None,
        "same_area_fraction": float(np.mean(a["footprint_area"][rows_a] == b["footprint_area"][rows_b]))
        if matched
        else None,
        "same_class_fraction": float(np.mean(a["class_id"][rows_a] == b["class_id"][rows_b]))
        if matched
        else None,
    }


# ---------------------------------------------------------------------------------------------- runs ---


def _inference_settings(args: argparse.Namespace) -> dict[str, int]:
    return {
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "stitch_margin": TASK_DEFAULTS["stitch_margin"],
        "edge_margin": TASK_DEFAULTS["edge_margin"],
    }


def _deepdisc_task(
    args: argparse.Namespace, cache: Path, label: str, catalog: Path | None, **extra: Any
) -> dict[str, Any]:
    return {
        "cache": str(cache),
        "threads": args.threads,
        "seed": args.seed,
        "kind": "deepdisc",
        "label": label,
        "device": args.device,
        "half": args.half,
        "inference": _inference_settings(args),
        "catalog_path": str(catalog) if catalog is not None else None,
        **extra,
    }


def _measure(task: dict[str, Any], patch: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    size = f"{patch['width']} px x{patch.get('density', 1.0):g}"
    print(f"running {task['label']} on {size} ...", flush=True)
    result = run_isolated(task, timeout_s=timeout_s)
    result["size"] = int(patch["width"])
    result["density"] = float(patch.get("density", 1.0))
    result["mpix"] = patch["height"] * patch["width"] / 1e6
    if "error" in result:
        print(f"  FAILED: {result['error']}", flush=True)
        return result
    seconds = result["seconds"]["total"]
    result["mpix_per_s"] = result["mpix"] / seconds if seconds > 0 else None
    result["ms_per_source"] = 1e3 * seconds / result["n_sources"] if result["n_sources"] else None
    print(
        f"  {result['n_sources']} sources in {seconds:.2f} s ({result['mpix_per_s']:.3f} MPix/s), "
        f"peak RSS {result['peak_rss_bytes'] / GIB:.2f} GiB",
        flush=True,
    )
    return result


def _run_patch(
    args: argparse.Namespace, cache: Path, patch: dict[str, Any], catalog_dir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every method on one patch, and the catalog comparisons of the package's runs.

    The fast path against the reference path, and the CPU bfloat16 run against the fast path.
    """
    results = []
    tag = f"{patch['width']}px-x{patch.get('density', 1.0):g}"
    for name in args.baselines:
        task = {"cache": str(cache), "threads": args.threads, "seed": args.seed, "kind": name, "label": name}
        results.append(_measure(task, patch, args.timeout))
    comparisons = []
    for package in args.packages:
        stem = Path(package).stem
        package_path = str(Path(package).resolve())
        catalogs = {}
        runs = {}
        variants = [("fast", f"{stem} (trained package)", {})]
        if args.reference:
            variants.append(("reference", f"{stem} reference path", {"reference": True}))
        if args.cpu_bfloat16:
            variants.append(("bfloat16", f"{stem} CPU bfloat16", {"cpu_bfloat16": True}))
        for variant, label, extra in variants:
            catalogs[variant] = catalog_dir / f"{stem}-{tag}-{variant}.npz"
            task = _deepdisc_task(
                args, cache, label, catalogs[variant], package=package_path, cap=None, **extra
            )
            runs[variant] = _measure(task, patch, args.timeout)
            results.append(runs[variant])
        # The fast path against the reference path (same catalog?), bfloat16 against the fast path.
        for run, baseline in (("fast", "reference"), ("bfloat16", "fast")):
            if (
                run in runs
                and baseline in runs
                and "error" not in runs[run]
                and "error" not in runs[baseline]
            ):
                comparisons.append(
                    {
                        "package": stem,
                        "run": run,
                        "baseline": baseline,
                        "size": int(patch["width"]),
                        "density": float(patch.get("density", 1.0)),
                        "run_seconds": runs[run]["seconds"]["total"],
                        "baseline_seconds": runs[baseline]["seconds"]["total"],
                        **compare_catalogs(catalogs[run], catalogs[baseline]),
                    }
                )
    if args.models:
        sep = [r for r in results if r["kind"] == "sep" and "error" not in r]
        if args.detections_cap.isdigit():
            cap = int(args.detections_cap)
        elif sep:
            cap = realistic_detections_cap(
                sep[0]["n_sources"], patch["height"], patch["width"], args.tile_size, 1.5
            )
        else:
            raise SystemExit("--detections-cap sep needs sep among --baselines; give a number")
        for architecture in args.models:
            task = _deepdisc_task(
                args, cache, f"{architecture} cap {cap}", None, architecture=architecture, cap=cap
            )
            results.append(_measure(task, patch, args.timeout))
    for result in results:  # Time relative to the baselines on the same patch.
        for name in ("sep", "photutils"):
            base = [r for r in results if r["kind"] == name and "error" not in r]
            if base and "error" not in result:
                result[f"time_vs_{name}"] = result["seconds"]["total"] / base[0]["seconds"]["total"]
    return results, comparisons


# -------------------------------------------------------------------------------------------- report ---


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _markdown(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    gpu = f" ({machine['gpu_name']})" if "gpu_name" in machine else ""
    lines = [
        f"# Detection cost against patch size and source density, {report['date']}"
        + (" (quick check)" if settings["quick"] else ""),
        "",
        f"- Command: `{report['command']}`",
        f"- Commit: `{report['commit']}`",
        f"- Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, "
        f"{machine['ram_bytes'] / GIB:.1f} GiB RAM, Python {machine['python']}, numpy {machine['numpy']}, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), detectron2 {machine['detectron2']}, "
        f"sep {machine['sep']}, photutils {machine['photutils']}; DeepDISC device `{machine['device']}`{gpu}"
        + (" with fp16 autocast" if settings["half"] and machine["device"].startswith("cuda") else ""),
        f"- Load average at start: {', '.join(f'{v:.2f}' for v in machine['loadavg_at_start'])} (other work "
        "slows every method; each method's load is in the JSON)",
        f"- Patches: preset `{settings['preset']}` tract {settings['tract']}, sizes "
        f"{', '.join(str(s) for s in settings['sizes'])} px, source densities x"
        f"{', x'.join(f'{d:g}' for d in settings['densities'])} the preset's",
        f"- DeepDISC: `DeepDiscDetectTask.run` with tiles {settings['tile_size']} px, overlap "
        f"{settings['overlap']}, batch {settings['batch_size']}; the package's bands, scaling and score "
        "threshold; sep and photutils: threshold "
        f"{BASELINE_PARAMS['thresh']} sigma, minarea {BASELINE_PARAMS['minarea']}, one thread",
        "",
        "| patch px | density | MPix | S/N>=5 sources | method | sources | total s | MPix/s "
        "| ms / source | peak RSS GiB | over input GiB | prepare s | inference s (forward) | time / sep "
        "| time / photutils |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in report["results"]:
        head = (
            f"| {result['size']} | x{result['density']:g} | {result['mpix']:.2f} | {result['n_truth_snr5']} "
        )
        if "error" in result:
            first = result["error"].strip().splitlines()[-1] if result["error"].strip() else "error"
            lines.append(head + f"| {result['label']} | failed: {first} |" + " |" * 9)
            continue
        seconds = result["seconds"]
        over = result.get("method_peak_rss_bytes") or result["peak_rss_bytes"]
        over_input = (over - result["rss_before_bytes"]) / GIB
        inference = "—"
        if result["kind"] == "deepdisc":
            inference = f"{seconds['inference']:.2f} ({seconds['forward']:.2f})"
        gpu_memory = ""
        if "gpu_peak_allocated_bytes" in result:
            gpu_memory = f" (GPU {result['gpu_peak_allocated_bytes'] / GIB:.2f})"
        lines.append(
            head + f"| {result['label']} | {result['n_sources']} | {seconds['total']:.2f} "
            f"| {_fmt(result['mpix_per_s'], 3)} | {_fmt(result['ms_per_source'], 3)} "
            f"| {result['peak_rss_bytes'] / GIB:.2f}{gpu_memory} | {over_input:.2f} "
            f"| {_fmt(seconds.get('prepare'))} | {inference} "
            f"| {_fmt(result.get('time_vs_sep'), 1)} | {_fmt(result.get('time_vs_photutils'), 1)} |"
        )
    lines += [
        "",
        "`total`: the method's wall time on the patch, the patch already in memory (DeepDISC: the task's "
        "`run`, model building included, after an untimed run on a 256 px cutout).  `over input`: the "
        "method's own peak RSS minus the RSS with the patch loaded.  `prepare` (DeepDISC): the run minus "
        "its inference - model building, scaling and validity mask, catalog.",
        "",
        "## Seconds per MPix against patch size",
        "",
        "Flat along a row when the cost is linear in pixels.",
        "",
    ]
    sizes = sorted({r["size"] for r in report["results"]})
    lines += [
        "| method | density | " + " | ".join(f"{s} px" for s in sizes) + " |",
        "|---|---:|" + "---:|" * len(sizes),
    ]
    keys = sorted({(r["label"], r["density"]) for r in report["results"]}, key=lambda k: (k[1], k[0]))
    for label, density in keys:
        cells = []
        for size in sizes:
            rows = [
                r
                for r in report["results"]
                if (r["label"], r["density"], r["size"]) == (label, density, size) and "error" not in r
            ]
            cells.append(_fmt(rows[0]["seconds"]["total"] / rows[0]["mpix"]) if rows else "—")
        lines.append(f"| {label} | x{density:g} | " + " | ".join(cells) + " |")
    if report["comparisons"]:
        lines += [
            "",
            "## Same sources as before the speed work",
            "",
            "The package run twice or three times on each patch: the fast path against the reference path "
            "(float64 scalings, one forward call at a time, contiguous weights, all proposals pooled at "
            "once by torchvision's ROIAlign, torchvision's NMS), and with `--cpu-bfloat16` the CPU bfloat16 "
            "run against the fast path. "
            f"Sources are matched by mutual nearest centroid within {MATCH_RADIUS} px.",
            "",
            "| patch px | density | run / baseline | sources run / baseline | matched (run, baseline) "
            "| max centroid offset px | max score diff | same footprint area | same class | speed-up |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in report["comparisons"]:
            lines.append(
                f"| {c['size']} | x{c['density']:g} | {c['run']} / {c['baseline']} "
                f"| {c['n_fast']} / {c['n_reference']} "
                f"| {_fmt(c.get('matched_fraction_fast'), 4)}, "
                f"{_fmt(c.get('matched_fraction_reference'), 4)} "
                f"| {_fmt(c.get('max_centroid_offset_px'), 3)} | {_fmt(c.get('max_score_difference'), 4)} "
                f"| {_fmt(c.get('same_area_fraction'), 4)} | {_fmt(c.get('same_class_fraction'), 4)} "
                f"| {c['baseline_seconds'] / c['run_seconds']:.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def _write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{report['date']}-{report['machine_slug']}-{report['commit']}-scaling"
    if report["settings"]["quick"]:
        stem += "-quick"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(_markdown(report))
    return json_path, md_path


# ---------------------------------------------------------------------------------------------- CLI ---


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Detection throughput, memory and time per source against patch size and source "
        "density: DeepDISC (the detection task's run) against sep and photutils.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="benchmark", help="simulation preset of the patches")
    parser.add_argument("--tract", type=int, default=None, help="tract id (default: the preset's first)")
    parser.add_argument("--patch", type=int, nargs=2, default=None, metavar=("X", "Y"), help="patch indices")
    parser.add_argument("--sim-seed", type=int, default=None, help="scene seed (default: the tract's)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="patch sides, px")
    parser.add_argument(
        "--densities", type=float, nargs="+", default=list(DEFAULT_DENSITIES), help="source density factors"
    )
    parser.add_argument(
        "--packages",
        type=Path,
        nargs="*",
        default=None,
        help=f"trained model packages (default: {SHIPPED_PACKAGE.relative_to(SHIPPED_PACKAGE.parents[1])})",
    )
    parser.add_argument(
        "--models", nargs="*", default=[], help="random-weight architectures to time too (e.g. R50-FPN)"
    )
    parser.add_argument(
        "--detections-cap", default="sep", help="per-tile limit of --models: a number or 'sep' (1.5 x sep)"
    )
    parser.add_argument(
        "--baselines", nargs="*", choices=("sep", "photutils"), default=["sep", "photutils"], help="baselines"
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the package's reference-path run and the catalog comparison",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random model weights")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (DeepDISC only)")
    parser.add_argument("--half", action="store_true", help="fp16 autocast on CUDA")
    parser.add_argument(
        "--cpu-bfloat16",
        action="store_true",
        help="also run the package with CPU bfloat16 autocast and compare its catalog to float32's",
    )
    parser.add_argument("--tile-size", type=int, default=TASK_DEFAULTS["tile_size"])
    parser.add_argument("--overlap", type=int, default=TASK_DEFAULTS["overlap"])
    parser.add_argument("--batch-size", type=int, default=TASK_DEFAULTS["batch_size"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which a method is dropped")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_SIZES[0]} px (checks the script)")
    parser.add_argument("--prepare-only", action="store_true", help="simulate and cache the patches only")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR, help="cache of simulated patches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="where results are written")
    parser.add_argument("--machine", default=None, help="machine name in the file names")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = list(QUICK_SIZES)
    if args.packages is None:
        args.packages = [SHIPPED_PACKAGE] if SHIPPED_PACKAGE.is_file() else []
    missing = [str(p) for p in args.packages if not p.is_file()]
    if missing:
        parser.error(f"model package(s) not found: {missing}")
    if args.threads is None:
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        args.threads = int(from_env) if from_env.isdigit() and int(from_env) > 0 else int(usable or 1)
    if args.detections_cap != "sep" and not args.detections_cap.isdigit():
        parser.error(f"--detections-cap must be 'sep' or a number, got {args.detections_cap!r}")
    if any(d <= 0 for d in args.densities) or any(s < 1 for s in args.sizes):
        parser.error("sizes and densities must be positive")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the process exit status (1 if a method failed)."""
    args = parse_args(argv)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(args.threads)  # Before the children import numpy / torch.
    command = shlex.join(
        ["python", "bench/bench_detect_scaling.py", *(sys.argv[1:] if argv is None else argv)]
    )
    machine = machine_info(args.device, args.threads)
    patch_xy = tuple(args.patch) if args.patch is not None else None
    patches = []
    for size in args.sizes:
        for density in args.densities:
            try:
                cache, patch = simulate_or_load(
                    args.preset, args.tract, patch_xy, size, args.sim_seed, args.work, density
                )
            except ValueError as error:
                raise SystemExit(f"bench_detect_scaling.py: error: {error}") from None
            patch.setdefault("density", density)
            patches.append((cache, patch))
    if args.prepare_only:
        print("patches ready:", *[str(cache) for cache, _ in patches], sep="\n  ")
        return 0
    results: list[dict[str, Any]] = []
    comparisons = []
    catalog_dir = args.work / "catalogs"
    for cache, patch in patches:
        patch_results, patch_comparisons = _run_patch(args, cache, patch, catalog_dir)
        for result in patch_results:
            result["n_truth_snr5"] = patch["n_truth_snr5_in_patch"]
        results += patch_results
        comparisons += patch_comparisons
    now = datetime.datetime.now().astimezone()
    report = {
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "command": command,
        "commit": git_commit(),
        "machine_slug": args.machine or _machine_slug(machine),
        "machine": machine,
        "settings": {
            "quick": bool(args.quick),
            "preset": args.preset,
            "tract": patches[0][1]["tract"],
            "sizes": list(args.sizes),
            "densities": list(args.densities),
            "packages": [str(p) for p in args.packages],
            "models": list(args.models),
            "baselines": list(args.baselines),
            "reference": bool(args.reference),
            "tile_size": args.tile_size,
            "overlap": args.overlap,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "half": bool(args.half),
            "cpu_bfloat16": bool(args.cpu_bfloat16),
            "invalid_planes": list(INVALID_PLANES),
        },
        "patches": [patch for _, patch in patches],
        "results": results,
        "comparisons": comparisons,
    }
    json_path, md_path = _write(report, args.out)
    print(_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
