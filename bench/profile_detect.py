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
"""Where the detection task's time goes: `torch.profiler` over one `DeepDiscDetectTask.run`.

One simulated patch of the benchmark preset (cached under ``bench/work/`` like ``bench_detect_scaling.py``)
goes through the task's own ``run`` (after an untimed run on a 256 px cutout) under the profiler, on the
CPU or on CUDA.  The model's parts (backbone, proposal generator, box and mask heads) and the task's stages
(tiled inference, catalog, peak splitting, judging) are labelled, so the report gives

* the labelled stages: calls, wall time on the host (inclusive) and, on CUDA, the device time of the
  kernels they issued and the span of the stage on the device's timeline;
* the operators with the most self time on the host, and on CUDA those with the most self time on the
  device.

The report goes to ``<out>/<date>-<machine>-<commit>-profile-<model>-<size>px.md``.  Run
``python bench/profile_detect.py --help`` for the options.
"""

from __future__ import annotations

__all__ = ["main", "parse_args"]

import argparse
import contextlib
import datetime
import functools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect import (  # The sibling script, found through the path set above.
    DEFAULT_OUT_DIR,
    DEFAULT_WORK_DIR,
    SHIPPED_PACKAGE,
    TASK_DEFAULTS,
    _deepdisc_package,
    _machine_slug,
    git_commit,
    load_patch,
    machine_info,
    simulate_or_load,
)

# The model's parts that get a label of their own, by attribute path from the model.
MODEL_PARTS = (
    "backbone",
    "proposal_generator",
    "roi_heads.box_pooler",
    "roi_heads.box_head",
    "roi_heads.box_predictor",
    "roi_heads.mask_pooler",
    "roi_heads.mask_head",
)
# The labels' prefixes.
_LABELS = ("model: ", "task: ", "inference: ")
_INFERENCE_RUN = "lsst.meas.extensions.deepdisc.core.inference._run"
# The task's stages that get a label of their own: (module path, attribute, label).
TASK_STAGES = (
    ("lsst.meas.extensions.deepdisc.tasks.detect", "DeepDiscDetectTask._infer", "task: tiled inference"),
    ("lsst.meas.extensions.deepdisc.tasks.detect", "DeepDiscDetectTask.split_peaks", "task: peak splitting"),
    ("lsst.meas.extensions.deepdisc.tasks.detect", "DeepDiscDetectTask.judge", "task: judging"),
    ("lsst.meas.extensions.deepdisc.tasks.detect", "build_catalog", "task: catalog"),
    (
        "lsst.meas.extensions.deepdisc.core.inference._run",
        "_extract_tile",
        "inference: tile outputs to spans",
    ),
    ("lsst.meas.extensions.deepdisc.core.inference._run", "_batch_inputs", "inference: tile inputs"),
    ("lsst.meas.extensions.deepdisc.core.inference._run", "_merge_duplicates", "inference: merging"),
)


def _resolve(root: Any, path: str) -> tuple[Any, str] | None:
    """``(owner, attribute)`` of a dotted path from ``root``, or `None` where a step is missing."""
    *steps, name = path.split(".")
    for step in steps:
        root = getattr(root, step, None)
        if root is None:
            return None
    return (root, name) if hasattr(root, name) else None


@contextlib.contextmanager
def _labelled(owner: Any, name: str, label: str) -> Iterator[None]:
    """Run ``owner.name`` under ``torch.profiler.record_function(label)`` for a block (restored after)."""
    import torch

    original = getattr(owner, name)
    is_static = isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod)

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    had_own = name in vars(owner) if hasattr(owner, "__dict__") else False
    previous = vars(owner).get(name) if had_own else None
    setattr(owner, name, staticmethod(wrapped) if is_static else wrapped)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, previous)
        else:
            delattr(owner, name)


@contextlib.contextmanager
def _labelled_model_parts(task_class: Any) -> Iterator[None]:
    """Label the parts in `MODEL_PARTS` of every model the task builds inside the block."""
    stack = contextlib.ExitStack()
    original = task_class._build_model

    def build(self: Any, *args: Any, **kwargs: Any) -> Any:
        model, config = original(self, *args, **kwargs)
        for path in MODEL_PARTS:
            found = _resolve(model, path)
            if found is not None and callable(getattr(*found)):
                module = getattr(*found)
                stack.enter_context(_labelled(module, "forward", f"model: {path}"))
        return model, config

    task_class._build_model = build
    try:
        with stack:
            yield
    finally:
        task_class._build_model = original


def _on_host(event: Any) -> bool:
    """Whether an averaged event is the host's (not a kernel, a copy or a label's span on the device)."""
    from torch.autograd import DeviceType

    return event.device_type == DeviceType.CPU


def _stage_rows(events: Any, device: bool) -> list[str]:
    """The labelled stages: calls, host time, the device time of their kernels and their span there."""
    spans = {e.key: e.device_time_total for e in events if e.key.startswith(_LABELS) and not _on_host(e)}
    rows = []
    for event in sorted(events, key=lambda e: -e.cpu_time_total):
        if not event.key.startswith(_LABELS) or not _on_host(event):
            continue
        busy, span = (event.device_time_total, spans.get(event.key, 0.0)) if device else (None, None)
        rows.append(
            f"| {event.key} | {event.count} | {event.cpu_time_total / 1e3:.1f} | "
            + (f"{busy / 1e3:.1f} | {span / 1e3:.1f} |" if device else "— | — |")
        )
    return rows


def _operator_rows(events: Any, attribute: str, top: int) -> list[str]:
    """The host's operators with the most ``attribute`` (self host or device time), with their share.

    Kernels and copies count towards the operator that issued them, so each appears once.
    """
    operators = [e for e in events if _on_host(e) and not e.key.startswith(_LABELS)]
    total = sum(getattr(e, attribute) for e in operators) or 1.0
    rows = []
    for event in sorted(operators, key=lambda e: -getattr(e, attribute))[:top]:
        value = getattr(event, attribute)
        rows.append(f"| `{event.key}` | {event.count} | {value / 1e3:.1f} | {100 * value / total:.1f} |")
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="patch side, px")
    parser.add_argument("--package", type=Path, default=SHIPPED_PACKAGE, help="trained model package")
    parser.add_argument("--model", default=None, help="a random-weight architecture instead (e.g. R50-FPN)")
    parser.add_argument("--cap", type=int, default=375, help="detections per tile of --model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--half", action="store_true", help="fp16 autocast on CUDA")
    parser.add_argument("--batch-size", type=int, default=TASK_DEFAULTS["batch_size"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable cores)")
    parser.add_argument("--top", type=int, default=20, help="operators listed")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR, help="cache of simulated patches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="where the report is written")
    parser.add_argument("--jobs", type=int, default=None, help="processes drawing a new simulation")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Profile one run and write the report; returns the exit status."""
    args = parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from lsst.meas.extensions.deepdisc.tasks.detect import DeepDiscDetectConfig, DeepDiscDetectTask

    threads = args.threads or len(os.sched_getaffinity(0))
    cuda = args.device.startswith("cuda")
    patch_path, _ = simulate_or_load("benchmark", None, None, args.size, None, args.work, jobs=args.jobs)
    image, metadata = load_patch(patch_path)
    task_spec = {"package": None if args.model else str(args.package), "seed": 0}
    task_spec.update({"architecture": args.model, "cap": args.cap if args.model else None})
    package = _deepdisc_package(image, task_spec)
    label = f"{args.model} cap {args.cap}" if args.model else package.name

    config = DeepDiscDetectConfig()
    config.device = "cuda" if cuda else args.device
    config.halfPrecision = args.half
    config.numThreads = threads
    config.batchSize = args.batch_size
    task = DeepDiscDetectTask(config=config)
    side = min(256, image.height, image.width)
    task.run(image.cutout(0, 0, side, side), package)  # Lazy imports, CUDA start-up: not profiled.

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with contextlib.ExitStack() as stack:
        for module_path, attribute, stage in TASK_STAGES:
            module = sys.modules.get(module_path) or __import__(module_path, fromlist=["_"])
            found = _resolve(module, attribute)
            if found is not None:
                stack.enter_context(_labelled(*found, stage))
        stack.enter_context(_labelled_model_parts(DeepDiscDetectTask))
        with profile(activities=activities) as profiler:
            start = time.perf_counter()
            result = task.run(image, package, tract=metadata["tract"], patch=metadata["patch"])
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    events = profiler.key_averages()

    info = machine_info(config.device, threads)
    commit = git_commit()
    mpix = image.height * image.width / 1e6
    lines = [
        f"# Profile of one detection run, {datetime.date.today().isoformat()}",
        "",
        f"- Command: `python bench/profile_detect.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- Commit: `{commit}`; machine: {info['cpu_model']}, {threads} torch threads; "
        f"device `{config.device}`" + (" with fp16 autocast" if args.half and cuda else ""),
        f"- Model: {label}; patch {args.size} px ({mpix:.2f} MPix, {len(image.bands)} bands), "
        f"batch {args.batch_size}",
        f"- Run under the profiler: {seconds:.2f} s ({mpix / seconds:.3f} MPix/s), {len(result.catalog)} "
        f"sources; tiled inference {task.metadata['inference_seconds']:.2f} s, of which forward "
        f"{result.detections.stats['seconds_forward']:.2f} s (the profiler's overhead is included)",
        "",
        "## Labelled stages",
        "",
        "| stage | calls | host ms (inclusive) | device busy ms (its kernels) | device span ms |",
        "|---|---:|---:|---:|---:|",
        *_stage_rows(events, cuda),
        "",
        "## Operators by self time on the host",
        "",
        "| operator | calls | self host ms | % of operators' |",
        "|---|---:|---:|---:|",
        *_operator_rows(events, "self_cpu_time_total", args.top),
    ]
    if cuda:
        lines += [
            "",
            "## Operators by self time on the device",
            "",
            "| operator | calls | self device ms | % of operators' |",
            "|---|---:|---:|---:|",
            *_operator_rows(events, "self_device_time_total", args.top),
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    model_slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    date = datetime.date.today().isoformat()
    path = args.out / f"{date}-{_machine_slug(info)}-{commit}-profile-{model_slug}-{args.size}px.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
