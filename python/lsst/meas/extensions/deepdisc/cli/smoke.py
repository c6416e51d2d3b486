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
"""Smoke run of the model stack: compact model, synthetic 3-band image, tiled inference, a summary.

This exercises installation end to end (torch, torchvision ops, detectron2 without ``_C``, our factory,
scalings and inference engine) in well under a minute on a laptop CPU.  The model has random weights, so
what it "finds" is meaningless; ``make demo`` runs the real workflow.
"""

from __future__ import annotations

__all__ = ["main", "synthetic_image"]

import argparse
import time

import numpy as np

from ..core.multiband import MultibandImage
from ..core.scaling import ScalingSpec


def synthetic_image(
    size: int = 256, bands: tuple[str, ...] = ("g", "r", "i"), seed: int = 0
) -> MultibandImage:
    """A noisy multi-band image with a few dozen Gaussian sources of random colours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    cube = rng.normal(0.0, 1.0, (len(bands), size, size)).astype(np.float32)
    for _ in range(40):
        cx, cy = rng.uniform(8, size - 8, 2)
        sigma = rng.uniform(1.0, 4.0)
        profile = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
        colour = rng.uniform(0.5, 1.5, len(bands))
        cube += (rng.uniform(20, 300) * colour)[:, None, None] * profile
    return MultibandImage(bands=bands, image=cube, variance=np.ones_like(cube))


def main(argv: list[str] | None = None) -> int:
    """Build the compact model for 3 bands, run it on a synthetic image, print what it found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--architecture", default="compact-R18-FPN")
    args = parser.parse_args(argv)

    import torch

    from ..core.inference import InferenceConfig, run_tiled_inference
    from ..core.models import ModelSpec, build_model_from_spec

    torch.manual_seed(0)
    image = synthetic_image(args.size)
    spec = ModelSpec(architecture=args.architecture, bands=image.bands)
    t0 = time.perf_counter()
    model = build_model_from_spec(spec, device="cpu")
    print(f"built {args.architecture} for bands {''.join(image.bands)} in {time.perf_counter() - t0:.1f} s")
    scaled, _ = ScalingSpec("lupton", {"stretch": 5.0, "Q": 8.0}).apply(image)
    t0 = time.perf_counter()
    detections = run_tiled_inference(
        model, scaled, config=InferenceConfig(tile_size=min(256, args.size), overlap=32, device="cpu")
    )
    seconds = time.perf_counter() - t0
    print(
        f"ran tiled inference on a {args.size}x{args.size} {len(image.bands)}-band image in {seconds:.2f} s: "
        f"{len(detections)} detections (random weights: not meaningful)"
    )
    order = np.argsort(-detections.scores)[:5]
    for i in order:
        x0, y0, x1, y1 = detections.boxes[i]
        spans = detections.footprints[i]
        area = int(np.sum(spans[:, 2] - spans[:, 1] + 1))
        print(
            f"  box=({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}) score={detections.scores[i]:.3f} "
            f"class={spec.class_names[int(detections.class_ids[i])]} area={area} px"
        )
    print("smoke run OK: torch, torchvision ops, detectron2 (no _C), model factory, scaling and tiling work")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
