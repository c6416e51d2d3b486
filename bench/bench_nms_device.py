"""The sparse NMS against torchvision's on a device: the operator, then a whole tiled inference both ways.

``InferenceConfig.sparse_nms`` makes torchvision's ``batched_nms`` (detectron2's RPN and box head) run
``core.models.nms.sparse_nms`` on large sets.  On a CPU its gain is measured on captured RPN inputs by
``bench_pooling_nms.py``; this script measures it where the kernels differ most, on a GPU, whose torchvision
NMS picks the kept boxes one at a time in a single thread block:

* the operator on RPN-like sets (clusters of overlapping boxes around sources, scores rounded to fp16 as
  under autocast) of increasing size, both ways, median of the repeats (which sets the device's
  ``_SPARSE_MIN_BOXES``): the kept boxes must be identical;
* ``run_tiled_inference`` of a model (R50-FPN with random weights capped at ``--cap`` detections per tile,
  or a package) on the benchmark preset's patch (cached under ``bench/work/`` like ``bench_detect.py``),
  with ``sparse_nms`` on and off: the forward time, the whole inference's, and whether the detections are
  the same.

The report goes to ``<out>/<date>-<machine>-<commit>-nms-<device>.md``; ``--help`` lists the options.  It
runs on a CPU too (``--device cpu``: checks the script).
"""

from __future__ import annotations

__all__ = ["main", "parse_args"]

import argparse
import dataclasses
import datetime
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect import (  # The sibling script, found through the path set above.
    DEFAULT_OUT_DIR,
    DEFAULT_WORK_DIR,
    _deepdisc_package,
    _machine_slug,
    git_commit,
    load_patch,
    machine_info,
    median_seconds,
    simulate_or_load,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--half", action="store_true", help="fp16 autocast for the inference (CUDA)")
    parser.add_argument(
        "--counts", type=int, nargs="+", default=[250, 500, 1000, 2000, 5000, 10000], help="set sizes"
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed operator calls per set and way")
    parser.add_argument("--size", type=int, default=4100, help="patch side of the preset, px (0: none)")
    parser.add_argument("--model", default="R50-FPN", help="architecture with random weights")
    parser.add_argument("--package", type=Path, default=None, help="a model package instead of --model")
    parser.add_argument("--cap", type=int, default=375, help="detections per tile of the random model")
    parser.add_argument("--batch-size", type=int, default=16, help="tiles per forward call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR, help="cache of simulated patches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="where the report is written")
    return parser.parse_args(argv)


def _rpn_like(count: int, generator: Any) -> tuple[Any, Any]:
    """``count`` boxes in clusters of 20 around sources of a 512 px tile, and fp16-rounded scores."""
    import torch

    sources = max(1, count // 20)
    centre = torch.rand(sources, 2, generator=generator) * 512
    size = torch.rand(sources, 1, generator=generator) * 24 + 4
    which = torch.randint(0, sources, (count,), generator=generator)
    jitter = (torch.rand(count, 2, generator=generator) - 0.5) * size[which] * 0.5
    half = size[which] * (0.5 + torch.rand(count, 2, generator=generator)) / 2
    middle = centre[which] + jitter
    scores = torch.rand(count, generator=generator).half().float()
    return torch.cat([middle - half, middle + half], dim=1), scores


def _operator_rows(args: argparse.Namespace, device: Any, synchronize: Callable[[], None]) -> list[tuple]:
    import torch
    from torchvision.ops import nms

    from lsst.meas.extensions.deepdisc.core.models.nms import sparse_nms

    generator = torch.Generator().manual_seed(0)
    rows = []
    for count in args.counts:
        boxes, scores = _rpn_like(count, generator)
        boxes, scores = boxes.to(device), scores.to(device)
        for threshold in (0.7, 0.5):
            expected = nms(boxes, scores, threshold)
            same = torch.equal(sparse_nms(boxes, scores, threshold).cpu(), expected.cpu())
            timed = [functools.partial(f, boxes, scores, threshold) for f in (nms, sparse_nms)]
            before, after = (median_seconds(f, args.repeats, synchronize) for f in timed)
            rows.append((count, threshold, len(expected), before, after, "identical" if same else "DIFFER"))
            print(
                f"nms {count} boxes t={threshold}: {before * 1e3:.2f} -> {after * 1e3:.2f} ms, {rows[-1][-1]}"
            )
    return rows


def _inference_rows(args: argparse.Namespace) -> tuple[str, list[tuple]]:
    from lsst.meas.extensions.deepdisc.core.inference import InferenceConfig, run_tiled_inference
    from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage

    patch_path, _ = simulate_or_load("benchmark", None, None, args.size, None, args.work)
    image, _ = load_patch(patch_path)
    if args.package is not None:
        package = ModelPackage.load(args.package)
    else:
        package = _deepdisc_package(image, {"architecture": args.model, "cap": args.cap, "seed": 0})
    model = package.build_model()
    cube = package.scaling.scaled_cube(image)  # Read tile by tile, as the task does.
    config = InferenceConfig(
        device=args.device, half=args.half, batch_size=args.batch_size, progress_interval_s=1e9
    )
    warm_up = np.ascontiguousarray(cube[:, :600, :600])
    run_tiled_inference(model, warm_up, xy0=image.xy0, config=config)  # cuDNN's choices, the allocator.
    runs = {}
    for sparse in (True, False, True):
        detections = run_tiled_inference(
            model, cube, xy0=image.xy0, config=dataclasses.replace(config, sparse_nms=sparse)
        )
        runs[sparse] = detections  # The second sparse run (warm) is the one reported.
        stats = detections.stats
        print(
            f"inference sparse_nms={sparse}: {stats['seconds_total']:.2f} s "
            f"(forward {stats['seconds_forward']:.2f} s), {len(detections)} detections"
        )
    fast, plain = runs[True], runs[False]
    same = (
        len(fast) == len(plain)
        and np.array_equal(fast.boxes, plain.boxes)
        and all(np.array_equal(a, b) for a, b in zip(fast.footprints, plain.footprints))
    )
    score_diff = float(np.abs(fast.scores - plain.scores).max()) if same and len(fast) else float("nan")
    verdict = (
        f"identical (scores within {score_diff:.1e})" if same else f"DIFFER ({len(fast)} / {len(plain)})"
    )
    mpix = cube.shape[1] * cube.shape[2] / 1e6
    rows = [
        (name, d.stats["seconds_forward"], d.stats["seconds_total"], mpix, len(d))
        for name, d in (("torchvision NMS", plain), ("sparse NMS", fast))
    ]
    return verdict, rows


def main(argv: Sequence[str] | None = None) -> int:
    """Time both ways and write the report; returns the exit status."""
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    info = machine_info(args.device, torch.get_num_threads())
    commit = git_commit()
    operator_rows = _operator_rows(args, device, synchronize)
    verdict, inference_rows = _inference_rows(args) if args.size else ("", [])

    model = str(args.package) if args.package else f"{args.model} (random weights, cap {args.cap})"
    lines = [
        f"# Sparse NMS against torchvision's on `{args.device}`, {datetime.date.today().isoformat()}",
        "",
        f"- Command: `python bench/bench_nms_device.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- Commit: `{commit}`; machine: {info['cpu_model']}"
        + (f", {info['gpu_name']}" if "gpu_name" in info else "")
        + f", torch {torch.__version__}",
        "",
        "## The operator",
        "",
        f"RPN-like sets (clusters of 20 overlapping boxes, fp16-rounded scores); median of {args.repeats}.",
        "",
        "| boxes | IoU threshold | kept | torchvision ms | sparse ms | speed-up | result |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for count, threshold, kept, before, after, same in operator_rows:
        lines.append(
            f"| {count} | {threshold} | {kept} | {before * 1e3:.2f} | {after * 1e3:.2f} "
            f"| {before / after:.2f} | {same} |"
        )
    if inference_rows:
        lines += [
            "",
            f"## Tiled inference of {model} on the benchmark preset's {args.size} px patch",
            "",
            f"Batch {args.batch_size}, {'fp16 autocast' if args.half else 'float32'}; detections: {verdict}.",
            "",
            "| NMS | forward s | forward MPix/s | inference s | inference MPix/s | detections |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, forward, total, mpix, count in inference_rows:
            lines.append(
                f"| {name} | {forward:.2f} | {mpix / forward:.2f} | {total:.2f} | {mpix / total:.2f} "
                f"| {count} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    path = args.out / f"{date}-{_machine_slug(info)}-{commit}-nms-{device.type}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")
    differ = any(row[-1] == "DIFFER" for row in operator_rows) or verdict.startswith("DIFFER")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
