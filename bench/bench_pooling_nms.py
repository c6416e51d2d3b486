"""The CPU inference's two replaced operators against torchvision's, on a trained model's real tiles.

``core.models.roi_align`` (separable ROIAlign for the box and mask poolers) and ``core.models.nms`` (sparse
greedy NMS for the RPN's proposal selection) replace torchvision's kernels in the CPU inference
(``InferenceConfig.separable_roi_align`` and ``sparse_nms``).  This script runs the package's model on a few
512 pixel tiles of the benchmark preset's patch (cached under ``bench/work/`` like ``bench_detect.py``),
records what the RPN's ``find_top_rpn_proposals`` and the box and mask poolers were given, and times each
operator both ways on those inputs, one thread, interleaved, median of the repeats:

* the RPN's proposal selection (top-k per level, NMS per level, top-k) with torchvision's NMS and with
  ``sparse_batched_nms``: the proposals must be identical;
* the box pooler (all of a tile's proposals in one call) and the mask pooler (the detections the tile
  reports) with detectron2's ``ROIPooler`` (torchvision's ROIAlign per level) and with ``roi_align_levels``:
  the largest difference of the pooled features is reported.

The report goes to ``<out>/<date>-<machine>-<commit>-pooling-nms.md``; ``--help`` lists the options.
"""

from __future__ import annotations

__all__ = ["main", "parse_args"]

import argparse
import datetime
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect import (  # The sibling script, found through the path set above.
    DEFAULT_OUT_DIR,
    DEFAULT_WORK_DIR,
    SHIPPED_PACKAGE,
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
    parser.add_argument("--size", type=int, default=2048, help="patch side of the preset, px")
    parser.add_argument("--tiles", type=int, default=4, help="512 px tiles taken along the diagonal")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per operator and way")
    parser.add_argument("--package", type=Path, default=SHIPPED_PACKAGE, help="trained model package")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR, help="cache of simulated patches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="where the report is written")
    return parser.parse_args(argv)


def _capture(model: Any, cube: Any, tiles: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Run the model on ``tiles`` tiles; what the RPN's selection and the two poolers were called with.

    ``cube`` is the scaled patch (an array or the lazily scaled ``ScaledCube``); tiles along its diagonal.
    """
    import numpy as np
    import torch
    from detectron2.modeling.proposal_generator import rpn

    from lsst.meas.extensions.deepdisc.core.inference import InferenceConfig, run_tiled_inference

    selections: list[Any] = []
    pools: dict[str, list[Any]] = {"box": [], "mask": []}
    original = rpn.find_top_rpn_proposals

    def recording(*args: Any, **kwargs: Any) -> Any:
        selections.append((args, kwargs))
        return original(*args, **kwargs)

    def recorder(kind: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any) -> None:
            features, boxes = inputs
            pools[kind].append(([level.clone() for level in features], [b.clone() for b in boxes]))

        return hook

    hooks = [
        model.roi_heads.box_pooler.register_forward_pre_hook(recorder("box")),
        model.roi_heads.mask_pooler.register_forward_pre_hook(recorder("mask")),
    ]
    config = InferenceConfig(
        device="cpu", workers=1, batch_size=1, separable_roi_align=False, sparse_nms=False
    )
    # The box branch pools all of a tile's proposals in one call here (the task pools them 1000 at a time).
    chunk = model.roi_heads.inference_box_chunk
    model.roi_heads.inference_box_chunk = 0
    rpn.find_top_rpn_proposals = recording
    try:
        height, width = cube.shape[1:]
        for index in range(tiles):
            y0 = min(index * 512, height - 512)
            x0 = min(index * 512, width - 512)
            window = np.ascontiguousarray(cube[:, y0 : y0 + 512, x0 : x0 + 512])
            with torch.inference_mode():
                run_tiled_inference(model, window, xy0=(x0, y0), config=config)
    finally:
        rpn.find_top_rpn_proposals = original
        model.roi_heads.inference_box_chunk = chunk
        for hook in hooks:
            hook.remove()
    return selections, pools["box"], pools["mask"]


def main(argv: Sequence[str] | None = None) -> int:
    """Time the operators and write the report; returns the exit status."""
    args = parse_args(argv)
    import torch
    from detectron2.modeling.proposal_generator import rpn

    from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage, set_score_threshold
    from lsst.meas.extensions.deepdisc.core.models.nms import sparse_batched_nms
    from lsst.meas.extensions.deepdisc.core.models.roi_align import separable_poolers

    torch.set_num_threads(1)
    patch_path, _ = simulate_or_load("benchmark", None, None, args.size, None, args.work)
    image, _ = load_patch(patch_path)
    package = ModelPackage.load(args.package)
    model = package.build_model().eval()
    threshold = package.score_threshold_for(len(package.bands))
    if threshold is not None:  # The task's operating point: what the mask pooler sees in a run.
        set_score_threshold(model, threshold)
    selections, box_calls, mask_calls = _capture(model, package.scaling.scaled_cube(image), args.tiles)

    rows = []
    select = rpn.find_top_rpn_proposals
    for index, (call_args, call_kwargs) in enumerate(selections):
        with torch.inference_mode():
            expected = select(*call_args, **call_kwargs)
            with sparse_batched_nms():
                got = select(*call_args, **call_kwargs)
            same = all(
                torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
                and torch.equal(a.objectness_logits, b.objectness_logits)
                for a, b in zip(expected, got)
            )
            before = median_seconds(functools.partial(select, *call_args, **call_kwargs), args.repeats)
            with sparse_batched_nms():
                after = median_seconds(functools.partial(select, *call_args, **call_kwargs), args.repeats)
        verdict = "identical" if same else "DIFFER"
        rows.append(("RPN proposal selection", index, len(expected[0]), before, after, verdict))
    for kind, calls in (("box pooler", box_calls), ("mask pooler", mask_calls)):
        pooler = model.roi_heads.box_pooler if kind == "box pooler" else model.roi_heads.mask_pooler
        for index, (features, boxes) in enumerate(calls):
            regions = sum(len(b) for b in boxes)
            if regions == 0:
                continue
            channels_last = [level.contiguous(memory_format=torch.channels_last) for level in features]
            with torch.inference_mode():
                expected = pooler(features, boxes)
                before = median_seconds(functools.partial(pooler, features, boxes), args.repeats)
                with separable_poolers(model):
                    got = pooler(channels_last, boxes)
                    after = median_seconds(functools.partial(pooler, channels_last, boxes), args.repeats)
            difference = float((got - expected).abs().max())
            rows.append((kind, index, regions, before, after, f"largest difference {difference:.1e}"))

    info = machine_info("cpu", 1)
    commit = git_commit()
    lines = [
        f"# Separable ROIAlign and sparse NMS against torchvision, {datetime.date.today().isoformat()}",
        "",
        f"- Command: `python bench/bench_pooling_nms.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- Commit: `{commit}`; machine: {info['cpu_model']}, one torch thread",
        f"- Model: {package.name} at its operating point ({threshold}); {args.tiles} tile(s) of 512 px "
        f"from the benchmark preset's {args.size} px patch; median of {args.repeats} calls each way",
        "",
        "| operator | tile | boxes or regions | torchvision ms | ours ms | speed-up | result |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, index, count, before, after, verdict in rows:
        lines.append(
            f"| {name} | {index} | {count} | {before * 1e3:.1f} | {after * 1e3:.1f} | {before / after:.2f} "
            f"| {verdict} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    path = args.out / f"{date}-{_machine_slug(info)}-{commit}-pooling-nms.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")
    return 0 if all(verdict != "DIFFER" for *_, verdict in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
