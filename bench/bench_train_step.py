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
r"""Seconds per training step of the compact model on CPU, and what each speed setting changes.

Real training examples are read from an example cache (``<checkpointRoot>/examples/*.npz``, written by the
training task; ``bin/train-demo-model.sh`` fills ``train_work/checkpoints/examples``).  Each variant runs
`~lsst.meas.extensions.deepdisc.core.training.train_model` for ``--steps`` iterations in a fresh process
(so thread and denormal settings do not leak between variants) and reports the median seconds per step
after ``--warmup`` steps, from the training log's own timing (data preparation included unless prefetched).

Variants (each a TrainingConfig / model change from the recipe of ``config/tasks/train_cpu_scale.py``):

* ``recipe``: threads = free cores, denormals flushed, next batch prefetched in a thread;
* ``no-prefetch``: the batch is built on the hot path;
* ``no-flush``: denormals not flushed (``torch.set_flush_denormal(False)`` after the setup);
* ``threads-1``: one torch thread;
* ``fewer-proposals``: 500 RPN proposals and 128 sampled ROIs per image in training (instead of 1000 and
  256).

``--profile`` also prints the torch operators that take the most CPU time in a few steps of the recipe.

Usage::

    .venv/bin/python bench/bench_train_step.py --examples train_work/checkpoints/examples \
        --crop 256 --batch 2 --steps 60 --out bench/results/
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RECIPE = REPO_DIR / "config" / "tasks" / "train_cpu_scale.py"
VARIANTS = ("recipe", "no-prefetch", "no-flush", "threads-1", "fewer-proposals")


def _recipe_overrides(variant: str = "recipe") -> dict[str, Any]:
    """The model overrides of config/tasks/train_cpu_scale.py (loaded as the task loads it), per variant."""
    from lsst.meas.extensions.deepdisc.tasks.train import DeepDiscTrainConfig

    config = DeepDiscTrainConfig()
    config.load(str(RECIPE))
    overrides = config.model_overrides()
    if variant == "fewer-proposals":
        overrides["MODEL.RPN.POST_NMS_TOPK_TRAIN"] = 500
        overrides["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] = 128
    return overrides


def _run_variant(variant: str, args: dict[str, Any], queue: Any) -> None:
    import logging

    import torch

    from lsst.meas.extensions.deepdisc.core.example_cache import load_examples
    from lsst.meas.extensions.deepdisc.core.models import ModelSpec, make_model_config
    from lsst.meas.extensions.deepdisc.core.training import TrainingConfig, train_model

    examples = []
    for path in sorted(Path(args["examples"]).glob("examples_*.npz"))[: args["files"]]:
        examples.extend(load_examples(path))
    if not examples:
        raise SystemExit(f"no cached examples in {args['examples']}")
    bands = examples[0].bands
    spec = ModelSpec(
        architecture="compact-R18-FPN",
        bands=bands,
        class_names=("star", "galaxy"),
        pixel_mean=tuple(0.0 for _ in bands),
        pixel_std=tuple(1.0 for _ in bands),
        overrides=_recipe_overrides(variant),
    )
    times: list[float] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("iter ") and " it/s" in message:
                times.append(1.0 / float(message.split(" it/s")[0].rsplit(" ", 1)[-1]))

    log = logging.getLogger(f"bench.train.{variant}")
    log.setLevel(logging.INFO)
    log.addHandler(Capture())
    config = TrainingConfig(
        heads_iterations=0,
        full_iterations=args["steps"],
        full_lr=5e-4,
        optimizer="adamw",
        batch_size=args["batch"],
        crop_size=args["crop"],
        eval_period=10**6,
        checkpoint_period=10**6,
        log_period=1,
        device="cpu",
        seed=3,
        num_threads=1 if variant == "threads-1" else 0,
        prefetch=variant != "no-prefetch",
    )
    if variant == "no-flush":
        import lsst.meas.extensions.deepdisc.core.threads as threads_module

        original = threads_module.configure_torch

        def without_flush(*a: Any, **k: Any) -> int:
            threads = original(*a, **k)
            torch.set_flush_denormal(False)
            return threads

        threads_module.configure_torch = without_flush  # What torch_cpu_settings calls.
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        if args.get("profile") and variant == "recipe":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                train_model(make_model_config(spec), examples, [], config, Path(directory), log=log)
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
        else:
            train_model(make_model_config(spec), examples, [], config, Path(directory), log=log)
        wall = time.perf_counter() - start
    steady = times[args["warmup"] :]
    queue.put(
        {
            "variant": variant,
            "median_s_per_step": statistics.median(steady),
            "mean_s_per_step": statistics.fmean(steady),
            "first_steps_s": times[: args["warmup"]],
            "wall_s": wall,
            "threads": torch.get_num_threads(),
            "n_examples": len(examples),
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=Path, required=True, help="example cache directory")
    parser.add_argument("--files", type=int, default=4, help="cached patches to load (default 4)")
    parser.add_argument("--crop", type=int, default=256, help="random crop side (default 256)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--profile", action="store_true", help="print the costliest torch operators")
    parser.add_argument("--out", type=Path, default=None, help="write a JSON + Markdown result here")
    args = parser.parse_args(argv)
    settings = {key: getattr(args, key) for key in ("examples", "files", "crop", "batch", "steps", "warmup")}
    settings["examples"] = str(settings["examples"])
    settings["profile"] = args.profile
    context = multiprocessing.get_context("spawn")
    results = []
    for variant in args.variants:
        queue = context.Queue()
        process = context.Process(target=_run_variant, args=(variant, settings, queue))
        process.start()
        result = queue.get()
        process.join()
        results.append(result)
        print(
            f"{variant:12s} {result['median_s_per_step']:.3f} s/step (median), "
            f"{result['threads']} thread(s), first steps {[round(t, 2) for t in result['first_steps_s']]}",
            flush=True,
        )
    if args.out:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True
        ).stdout.strip()
        date = datetime.date.today().isoformat()
        stem = args.out / f"{date}-train-step-{commit}"
        args.out.mkdir(parents=True, exist_ok=True)
        header = {
            "date": date,
            "commit": commit,
            "machine": f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores",
            "settings": settings,
        }
        stem.with_suffix(".json").write_text(json.dumps({"header": header, "results": results}, indent=1))
        lines = [
            f"# Training step time, compact-R18-FPN, {args.batch} x {args.crop} px crops",
            "",
            f"{date}, commit `{commit}`, {header['machine']}; `python bench/bench_train_step.py "
            + " ".join(sys.argv[1:] if argv is None else argv)
            + "`",
            "",
            "| variant | median s/step | mean s/step | threads |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['variant']} | {r['median_s_per_step']:.3f} | {r['mean_s_per_step']:.3f} | {r['threads']} |"
            for r in results
        ]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
