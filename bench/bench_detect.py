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
"""Benchmark: DeepDISC tiled inference against sep and photutils on one simulated patch.

One patch of a simulation preset (``benchmark``: a 4100 px LSST-size patch in u g r i z y) is simulated
once and cached under ``bench/work/``; then every method runs on exactly those pixels, each in its own
freshly spawned process so that its peak resident memory is its own:

* ``sep``: `~lsst.meas.extensions.deepdisc.core.baseline.run_sep_baseline` (per-band background, detection
  on the variance-weighted band sum, extraction with deblending, footprints, fluxes, size-based classes);
* ``photutils``: the same variance-weighted detection image, smoothed with sep's default 3x3 kernel, then
  ``detect_sources`` + ``deblend_sources`` with sep's parameters, and footprints from the segmentation map;
* ``deepdisc``: per model, the detection task's path end to end - contrast scaling, tiled inference
  (`~lsst.meas.extensions.deepdisc.core.inference.run_tiled_inference`) and the catalog
  (`~lsst.meas.extensions.deepdisc.core.catalog.build_catalog`).  Models have random weights (throughput
  only).  An untrained Mask R-CNN scores every proposal about alike, so it emits its per-image limit
  (``TEST.DETECTIONS_PER_IMAGE``, 2000 per tile) and the mask head, the paste of masks, the stitching and
  the catalog pay for detections a trained model would never make; a score threshold does not help, the
  random scores are all alike.  Each model therefore runs *capped*: ``TEST.DETECTIONS_PER_IMAGE`` set to
  what a trained model would emit per tile (by default 1.5 x the sources sep finds on the patch, per tile
  area), and, for the models of ``--untrained``, also *untrained* (its own limit).  ``--packages`` runs
  trained model packages as they are.

Throughput is patch pixels over the wall time of the method; model building, process start and loading the
patch are excluded and reported apart.  All ratios come from one invocation, on one machine state.
Results go to ``<out>/<date>-<machine>-<commit>[-quick|-<size>px].json`` and ``.md``.

Run ``python bench/bench_detect.py --help`` for the options; bench/README.md explains how to run it.
"""

from __future__ import annotations

__all__ = [
    "build_tasks",
    "git_commit",
    "load_patch",
    "machine_info",
    "main",
    "parse_args",
    "realistic_detections_cap",
    "run_isolated",
    "simulate_or_load",
    "sized_preset",
    "write_report",
]

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform
import queue
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lsst.meas.extensions.deepdisc.core.inference import InferenceConfig

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_WORK_DIR = BENCH_DIR / "work"
DEFAULT_OUT_DIR = BENCH_DIR / "results"
# The trained compact model shipped with the package: a real detection count next to the random-weight runs.
SHIPPED_PACKAGE = REPO_DIR / "models" / "deepdisc-compact-sim.zip"

# Bump when the cached patch layout changes, so that stale caches are not read.
CACHE_VERSION = 1
# One 512 px tile: the quick check must stay within ~2 minutes on 2 busy cores.
QUICK_SIZE = 512
# Models whose untrained run (2000 detections per tile) is affordable on a CPU by default; R50-FPN's costs
# ~20 s and ~6 GiB of mask-head activations per tile, ~20 GiB at batch 4: only on request (--untrained).
CHEAP_UNTRAINED = ("compact-R18-FPN",)
# Detection S/N from which a simulated source counts as one a trained model would report (--detections-cap
# truth, and the patch description).
REALISTIC_SNR = 5.0
# The detection task's defaults (tasks/detect.py), so the benchmark measures what a pipeline run does.
TASK_DEFAULTS = {
    "tile_size": InferenceConfig.tile_size,
    "overlap": InferenceConfig.overlap,
    "batch_size": InferenceConfig.batch_size,
    "stitch_margin": InferenceConfig.stitch_margin,
    "edge_margin": 2,
}
INVALID_PLANES = ("NO_DATA",)
# sep's default 3x3 detection filter (normalised): photutils smooths with the same kernel.
SEP_DEFAULT_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
# run_sep_baseline's defaults, shared by photutils so both do the same detection and deblending.
BASELINE_PARAMS = {"thresh": 1.5, "minarea": 5, "deblend_nthresh": 32, "deblend_cont": 0.005}
GIB = 1024**3


# ------------------------------------------------------------------------------------------ the patch ---


def sized_preset(preset: Any, size: int, density: float = 1.0) -> Any:
    """The preset with patches of ``size`` pixels (border included), source densities times ``density``.

    Simulating a smaller patch of the same preset costs in proportion to its area, unlike cropping a full
    simulated patch.  Galaxy and star densities, depths and PSFs are per area or per patch and stay (times
    ``density`` for the galaxy and star densities); the saturated bright stars, a fixed number per patch,
    are scaled with the area to keep their density.

    Raises
    ------
    ValueError
        If ``size`` exceeds the preset's patch or leaves no inner region inside the border, or ``density``
        is not positive.
    """
    if density <= 0:
        raise ValueError(f"density must be positive, got {density}")
    if density != 1.0:
        preset = dataclasses.replace(
            preset,
            name=f"{preset.name}-x{density:g}",
            galaxy_density_i25_arcmin2=preset.galaxy_density_i25_arcmin2 * density,
            star_density_deg2=preset.star_density_deg2 * density,
        )
    if size == preset.patch_size:
        return preset
    if size > preset.patch_size:
        raise ValueError(
            f"--size {size} exceeds the {preset.patch_size} px patches of preset {preset.name!r}"
        )
    inner = size - 2 * preset.patch_border
    if inner <= 2 * preset.patch_border:
        raise ValueError(
            f"--size {size} is too small for preset {preset.name!r}: its {preset.patch_border} px border "
            f"needs a patch of more than {4 * preset.patch_border} px"
        )
    area_ratio = (inner / preset.patch_inner_size) ** 2
    return dataclasses.replace(
        preset,
        name=f"{preset.name}-{size}px",
        patch_inner_size=inner,
        bright_stars_per_patch=round(preset.bright_stars_per_patch * area_ratio),
    )


def _simulation_digest() -> str:
    """Short hash of the simulation's source code: a changed simulation never reuses a stale cache."""
    from lsst.meas.extensions.deepdisc import sim

    digest = hashlib.sha1()
    for path in sorted(Path(sim.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def _cache_path(
    work_dir: Path,
    preset: str,
    tract: int,
    patch_xy: tuple[int, int],
    size: int,
    seed: int,
    density: float = 1.0,
) -> Path:
    dense = "" if density == 1.0 else f"-x{density:g}"
    name = (
        f"{preset}-tract{tract}-patch{patch_xy[0]}x{patch_xy[1]}-{size}px{dense}-seed{seed}"
        f"-sim{_simulation_digest()}-v{CACHE_VERSION}.npz"
    )
    return work_dir / name


def simulate_or_load(
    preset_name: str,
    tract: int | None,
    patch_xy: tuple[int, int] | None,
    size: int | None,
    seed: int | None,
    work_dir: Path,
    density: float = 1.0,
    jobs: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Simulate one patch, or find it in the cache; return the cache file and the patch description.

    Parameters
    ----------
    preset_name : `str`
        Simulation preset.
    tract : `int` or `None`
        Tract id (the preset's first tract if `None`).
    patch_xy : `tuple` [`int`, `int`] or `None`
        Patch indices (the central patch if `None`).
    size : `int` or `None`
        Patch side in pixels, border included (the preset's if `None`), see `sized_preset`.
    seed : `int` or `None`
        Scene seed (the tract's default if `None`).
    work_dir : `pathlib.Path`
        Cache directory (created if needed).
    density : `float`
        Factor on the preset's galaxy and star densities.
    jobs : `int`, optional
        Processes that draw the objects (default: the usable cores); the pixels do not depend on it.

    Returns
    -------
    path : `pathlib.Path`
        The ``.npz`` holding ``image``, ``variance``, ``mask`` and a JSON ``metadata`` string.
    metadata : `dict`
        Bands, geometry, WCS header, PSF sizes, truth counts and the simulation time.
    """
    from lsst.meas.extensions.deepdisc.sim.presets import get_preset

    base = get_preset(preset_name)
    tract = base.tracts[0].tract if tract is None else int(tract)
    seed = base.tract_spec(tract).seed if seed is None else int(seed)
    size = base.patch_size if size is None else int(size)
    preset = sized_preset(base, size, density)
    if patch_xy is None:
        patch_xy = (preset.n_patches_x // 2, preset.n_patches_y // 2)
    preset.patch_index(*patch_xy)  # Validates the indices with a clear message.
    path = _cache_path(work_dir, base.name, tract, patch_xy, size, seed, density)
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            return path, json.loads(str(data["metadata"]))

    from lsst.meas.extensions.deepdisc.sim.scene import simulate_patch

    print(f"simulating {preset.name} tract {tract} patch {patch_xy} ({size} px, seed {seed}) ...", flush=True)
    start = time.perf_counter()
    # Exact truth models instead of the simulation's own deblender and no object tables: only the pixels
    # and the truth matter here.
    jobs = len(os.sched_getaffinity(0)) if jobs is None else jobs
    patch = simulate_patch(
        preset, tract, patch_xy[0], patch_xy[1], seed=seed, truth_models=True, jobs=jobs, object_tables=False
    )
    sim_seconds = time.perf_counter() - start
    image = patch.image
    truth = patch.truth
    x0, y0 = image.xy0
    x = np.asarray(truth["x"], dtype=float)
    y = np.asarray(truth["y"], dtype=float)
    in_patch = (
        (x >= x0 - 0.5) & (x < x0 + image.width - 0.5) & (y >= y0 - 0.5) & (y < y0 + image.height - 0.5)
    )
    snr = np.asarray(truth["snr_detection"], dtype=float)
    metadata = {
        "preset": base.name,
        "simulated_preset": preset.name,
        "cropped": size != base.patch_size,
        "density": density,
        "full_patch_size": base.patch_size,
        "tract": tract,
        "patch_xy": list(patch_xy),
        "patch": preset.patch_index(*patch_xy),
        "seed": seed,
        "bands": list(image.bands),
        "height": image.height,
        "width": image.width,
        "xy0": [x0, y0],
        "mask_planes": dict(image.mask_planes),
        "wcs_header": image.wcs.to_header_string() if image.wcs is not None else "",
        "pixel_scale_arcsec": preset.pixel_scale_arcsec,
        "psf_fwhm_arcsec": {band: float(v) for band, v in patch.psf_fwhm_arcsec.items()},
        "bright_stars_per_patch": preset.bright_stars_per_patch,
        "n_truth_in_patch": int(in_patch.sum()),
        "n_truth_snr5_in_patch": int((in_patch & (snr >= REALISTIC_SNR)).sum()),
        "no_data_fraction": float(image.invalid_pixels(INVALID_PLANES).all(axis=0).mean()),
        "simulation_seconds": sim_seconds,
        "simulation_digest": _simulation_digest(),
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as stream:
        np.savez(
            stream,
            image=image.image,
            variance=image.variance,
            mask=image.mask,
            metadata=np.array(json.dumps(metadata)),
        )
    os.replace(partial, path)  # Atomic: an interrupted run never leaves a truncated cache behind.
    print(f"simulated in {sim_seconds:.1f} s, cached in {path}", flush=True)
    return path, metadata


def load_patch(path: Path) -> tuple[Any, dict[str, Any]]:
    """Read a cached patch back as a `~lsst.meas.extensions.deepdisc.core.multiband.MultibandImage`."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage

    with np.load(path, allow_pickle=False) as data:
        metadata = json.loads(str(data["metadata"]))
        image = MultibandImage(
            bands=tuple(metadata["bands"]),
            image=data["image"],
            variance=data["variance"],
            mask=data["mask"],
            mask_planes={str(k): int(v) for k, v in metadata["mask_planes"].items()},
            wcs=WCS(fits.Header.fromstring(metadata["wcs_header"])) if metadata["wcs_header"] else None,
            xy0=tuple(metadata["xy0"]),
            metadata={"BUNIT": "nJy", "psf_fwhm_arcsec": metadata["psf_fwhm_arcsec"]},
        )
    return image, metadata


def realistic_detections_cap(n_sources: int, height: int, width: int, tile_size: int, margin: float) -> int:
    """Detections per tile a trained model would emit: ``margin x n_sources`` scaled to a tile's area.

    ``n_sources`` is the number of real sources a detector finds on the whole ``height x width`` patch (by
    default sep's count on the same pixels: DeepDISC learns from labels made by such a detection); the
    margin covers spurious and duplicate detections above a trained model's score threshold.  A tile sees
    its whole area, overlaps included, so the count is scaled by the tile area, rounded up.
    """
    if n_sources < 0 or height < 1 or width < 1 or tile_size < 1 or margin <= 0:
        raise ValueError(
            f"need n_sources >= 0, a non-empty patch, tile_size >= 1 and margin > 0; got {n_sources}, "
            f"{height}x{width}, {tile_size}, {margin}"
        )
    tile_area = min(tile_size, height) * min(tile_size, width)
    return max(1, math.ceil(margin * n_sources * tile_area / (height * width)))


# ---------------------------------------------------------------------------------- measured methods ---


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process image only.
    ``getrusage``'s ``ru_maxrss`` is not used there: it keeps the peak of the image before ``execve``,
    i.e. of the parent a spawned child was forked from.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes.


def _reset_peak_rss() -> bool:
    """Restart the RSS high-water mark at the current RSS (Linux >= 4.0); `False` where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _run_sep(image: Any, metadata: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    from lsst.meas.extensions.deepdisc.core.baseline import run_sep_baseline

    psf_fwhm_pixels = max(metadata["psf_fwhm_arcsec"].values()) / metadata["pixel_scale_arcsec"]
    start = time.perf_counter()
    catalog = run_sep_baseline(
        image, **BASELINE_PARAMS, invalid_planes=INVALID_PLANES, psf_fwhm_pixels=psf_fwhm_pixels
    )
    total = time.perf_counter() - start
    return {"n_sources": len(catalog), "seconds": {"total": total}}


def _run_photutils(image: Any, metadata: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    from photutils.segmentation import deblend_sources, detect_sources
    from scipy import ndimage

    from lsst.meas.extensions.deepdisc.core.baseline import segmentation_to_spans

    start = time.perf_counter()
    # The variance-weighted band sum of run_sep_baseline, without its background step: the simulated
    # coadds are sky-subtracted, and photutils' Background2D is not part of detect + deblend.
    invalid = image.invalid_pixels(INVALID_PLANES)
    variance = image.variance
    invalid = invalid | ~np.isfinite(variance) | (variance <= 0)
    signal = np.where(invalid, 0.0, image.image).sum(axis=0, dtype=np.float64)
    noise_variance = np.where(invalid, 0.0, variance).sum(axis=0, dtype=np.float64)
    no_data = noise_variance <= 0
    snr = np.where(no_data, 0.0, signal / np.sqrt(np.where(no_data, 1.0, noise_variance)))
    smoothed = ndimage.convolve(snr, SEP_DEFAULT_KERNEL, mode="constant").astype(np.float32)
    prepared = time.perf_counter()
    segmentation = detect_sources(
        smoothed, BASELINE_PARAMS["thresh"], BASELINE_PARAMS["minarea"], mask=no_data
    )
    detected = time.perf_counter()
    n_detected = 0 if segmentation is None else int(segmentation.nlabels)
    if segmentation is not None:
        segmentation = deblend_sources(
            smoothed,
            segmentation,
            BASELINE_PARAMS["minarea"],
            n_levels=BASELINE_PARAMS["deblend_nthresh"],
            contrast=BASELINE_PARAMS["deblend_cont"],
            progress_bar=False,
        )
    deblended = time.perf_counter()
    if segmentation is None:
        footprints = []
    else:
        footprints = segmentation_to_spans(segmentation.data, int(segmentation.max_label), image.xy0)
    end = time.perf_counter()
    return {
        "n_sources": sum(1 for f in footprints if f.shape[0]),
        "n_before_deblend": n_detected,
        "seconds": {
            "prepare": prepared - start,
            "detect": detected - prepared,
            "deblend": deblended - detected,
            "catalog": end - deblended,
            "total": end - start,
        },
    }


def _deepdisc_package(image: Any, task: dict[str, Any]) -> Any:
    """The model package of a task: a trained one as it is, or a random-weight model packaged with Lupton."""
    import torch

    from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage
    from lsst.meas.extensions.deepdisc.core.models import ModelSpec, build_model_from_spec
    from lsst.meas.extensions.deepdisc.core.scaling import ScalingSpec

    if task.get("package"):
        return ModelPackage.load(task["package"])
    overrides = {} if task["cap"] is None else {"TEST.DETECTIONS_PER_IMAGE": int(task["cap"])}
    spec = ModelSpec(architecture=task["architecture"], bands=image.bands, overrides=overrides)
    torch.manual_seed(task["seed"])  # Random weights, but the same ones on every run.
    model = build_model_from_spec(spec, device="cpu")
    scaling = ScalingSpec("lupton", invalid_planes=INVALID_PLANES)
    return ModelPackage.from_model(model, spec, scaling, task["architecture"], version="random-init")


def _use_reference_path() -> None:
    """Make the detection task compute as the package did before the speed work (this process only).

    The whole patch scaled at once, in float64 (`reference_scaling`), and one forward call at a time on
    all of torch's threads with contiguous weights, torchvision's NMS for the proposals, all of a tile's
    proposals pooled at once by torchvision's ROIAlign, the mask head run on every box of a tile at once.
    """
    import functools

    from reference_scaling import reference_scaling

    from lsst.meas.extensions.deepdisc.core.inference import InferenceConfig
    from lsst.meas.extensions.deepdisc.core.models import roi_heads
    from lsst.meas.extensions.deepdisc.core.scaling import ScalingSpec
    from lsst.meas.extensions.deepdisc.tasks import detect

    def apply_array(self: Any, image: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
        return reference_scaling(self.name, image, invalid, **self.params)

    def scaled_cube(self: Any, image: Any) -> np.ndarray:  # The whole scaled patch, as before.
        return self.apply(image)[0]

    # All of a tile's proposals pooled and classified, and all its detections segmented, at once, as before
    # the chunking.
    for heads in (roi_heads.DeepDISCStandardROIHeads, roi_heads.DeepDISCCascadeROIHeads):
        heads.inference_box_chunk = 0
        heads.inference_mask_chunk = 0
    ScalingSpec.apply_array = apply_array  # type: ignore[method-assign]
    ScalingSpec.scaled_cube = scaled_cube  # type: ignore[method-assign]
    detect.InferenceConfig = functools.partial(  # type: ignore[misc]
        InferenceConfig,
        workers=1,
        channels_last=False,
        masks_of_reported_only=False,
        separable_roi_align=False,
        sparse_nms=False,
    )


def _save_catalog(catalog: Any, path: Path) -> None:
    """The columns that identify a detection, for comparing two runs on the same patch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        centroid_x=np.asarray(catalog["centroid_x"], dtype=np.float64),
        centroid_y=np.asarray(catalog["centroid_y"], dtype=np.float64),
        score=np.asarray(catalog["score"], dtype=np.float64),
        footprint_area=np.asarray(catalog["footprint_area"], dtype=np.int64),
        class_id=np.asarray(catalog["class_id"], dtype=np.int64),
    )


def _run_deepdisc(image: Any, metadata: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The detection task's own ``run`` (`DeepDiscDetectTask.run`): scaling, tiled inference, catalog."""
    import torch

    from lsst.meas.extensions.deepdisc.tasks.detect import DeepDiscDetectConfig, DeepDiscDetectTask

    if task.get("reference"):
        _use_reference_path()
    settings = task["inference"]
    start = time.perf_counter()
    package = _deepdisc_package(image, task)
    package_seconds = time.perf_counter() - start
    config = DeepDiscDetectConfig()
    config.device = "cuda" if task["device"].startswith("cuda") else task["device"]
    config.halfPrecision = bool(task["half"])
    config.cpuBfloat16 = bool(task.get("cpu_bfloat16"))
    config.numThreads = int(task["threads"])
    config.tileSize = settings["tile_size"]
    config.tileOverlap = settings["overlap"]
    config.batchSize = settings["batch_size"]
    config.stitchMargin = settings["stitch_margin"]
    config.edgeMargin = settings["edge_margin"]
    detect = DeepDiscDetectTask(config=config)
    device = task["device"]

    # One untimed run on a small cutout first: it pays what a process pays once, not per patch (lazy
    # imports in the first forward pass, on a GPU the CUDA context, cuDNN and the caching allocator).
    side = min(256, image.height, image.width)
    y_begin, x_begin = (image.height - side) // 2, (image.width - side) // 2
    start = time.perf_counter()
    detect.run(image.cutout(x_begin, y_begin, x_begin + side, y_begin + side), package)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_seconds = time.perf_counter() - start
    rss_after_build = _current_rss_bytes()

    start = time.perf_counter()
    result = detect.run(image, package, tract=metadata["tract"], patch=metadata["patch"])
    total = time.perf_counter() - start
    stats = result.detections.stats
    inference = float(detect.metadata["inference_seconds"])
    out: dict[str, Any] = {
        "n_sources": len(result.catalog),
        "seconds": {
            # Model building, scaling, validity mask and the catalog: the task's run minus inference.
            "prepare": total - inference,
            "inference": inference,
            "forward": stats["seconds_forward"],
            "catalog": None,
            "total": total,
        },
        "build_seconds": package_seconds,
        "warmup_seconds": warmup_seconds,
        "rss_after_build_bytes": rss_after_build,
        "device": str(stats["device"]),
        "half": bool(stats["half"]),
        "tiles": stats["tiles"],
        "workers": stats.get("workers"),
        "channels_last": stats.get("channels_last"),
        "detections_per_image_limit": _detections_limit(package),
        "n_raw": stats["n_raw"],
        "raw_per_tile": stats["n_raw"] / max(stats["tiles"], 1),
        "n_merged": stats["n_merged"],
        "n_below_min_snr": int(detect.metadata.get("n_below_min_snr", 0)),
        "counts": {key: value for key, value in stats.items() if key.startswith("n_")},
        "model_name": package.name,
        "model_version": str(package.version),
        "reference_path": bool(task.get("reference")),
    }
    if task.get("catalog_path"):
        _save_catalog(result.catalog, Path(task["catalog_path"]))
        out["catalog_path"] = task["catalog_path"]
    if device.startswith("cuda"):
        out["gpu_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        out["gpu_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return out


def _detections_limit(package: Any) -> int | None:
    """The model's per-image detection limit (``TEST.DETECTIONS_PER_IMAGE`` of a yacs model config)."""
    config = package.model_config.get("config") if isinstance(package.model_config, dict) else None
    value = (config or {}).get("TEST", {}).get("DETECTIONS_PER_IMAGE")
    return int(value) if value is not None else None


_RUNNERS = {"sep": _run_sep, "photutils": _run_photutils, "deepdisc": _run_deepdisc}


def _child_main(task: dict[str, Any], results: Any) -> None:
    """Body of a measuring process: load the patch, run one method, send back timings and memory."""
    try:
        threads = int(task["threads"])
        if task["kind"] == "deepdisc":
            import torch

            torch.set_num_threads(threads)
        image, metadata = load_patch(Path(task["cache"]))
        rss_before = _current_rss_bytes()
        peak_before = _peak_rss_bytes()
        # From here the high-water mark is the method's own (model building included), input loaded.
        peak_was_reset = _reset_peak_rss()
        load_before = os.getloadavg()[0]
        result = _RUNNERS[task["kind"]](image, metadata, task)
        result.update(
            peak_rss_bytes=max(_peak_rss_bytes(), peak_before),
            method_peak_rss_bytes=_peak_rss_bytes() if peak_was_reset else None,
            peak_rss_before_bytes=peak_before,
            rss_before_bytes=rss_before,
            loadavg_1min_before=load_before,
            loadavg_1min_after=os.getloadavg()[0],
        )
        results.put(("ok", result))
    except BaseException:  # noqa: B036 - everything, KeyboardInterrupt included, goes back to the parent.
        results.put(("error", traceback.format_exc()))


def run_isolated(task: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run one method in a freshly spawned process and return what it measured.

    A spawned (not forked) child starts from an empty interpreter, so its peak RSS holds only its own
    imports, the patch and the method.  A child that dies without answering (killed for memory, say) or
    raises gives a result with an ``error`` entry instead of stopping the benchmark.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child_main, args=(task, results), name=f"bench-{task['label']}")
    start = time.perf_counter()
    process.start()
    outcome = None
    while outcome is None:
        try:
            outcome = results.get(timeout=2.0)
        except queue.Empty:
            if not process.is_alive():
                break
            if timeout_s is not None and time.perf_counter() - start > timeout_s:
                process.terminate()
                process.join()
                outcome = ("error", f"timed out after {timeout_s:.0f} s")
    process.join()
    wall = time.perf_counter() - start
    base = {"label": task["label"], "kind": task["kind"], "task": _public_task(task), "process_seconds": wall}
    if outcome is None:
        return {**base, "error": f"the process exited with code {process.exitcode} without a result"}
    status, payload = outcome
    if status != "ok":
        return {**base, "error": payload}
    return {**base, **payload}


def _public_task(task: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in task.items() if key not in ("cache", "label", "kind")}


# ----------------------------------------------------------------------------------------- the runs ---


def build_tasks(
    args: argparse.Namespace, cache: Path, cap: int | None, *, baselines: bool
) -> list[dict[str, Any]]:
    """The methods to measure, in order.

    With ``baselines``: sep and/or photutils.  Otherwise each model of ``args.models`` capped at ``cap``
    detections per tile, then untrained (its own limit) if it is in ``args.untrained``, then each trained
    package of ``args.packages`` as it is.
    """
    common = {"cache": str(cache), "threads": args.threads, "seed": args.seed}
    if baselines:
        return [{**common, "kind": name, "label": name} for name in args.baselines]
    if args.models and cap is None:
        raise ValueError("the capped variant needs a per-tile cap")
    tasks = []
    inference = {
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "stitch_margin": TASK_DEFAULTS["stitch_margin"],
        "edge_margin": TASK_DEFAULTS["edge_margin"],
    }
    for architecture in args.models:
        variants = ["capped", "untrained"] if architecture in args.untrained else ["capped"]
        for variant in variants:
            label = f"{architecture} untrained" if variant == "untrained" else f"{architecture} cap {cap}"
            tasks.append(
                {
                    **common,
                    "kind": "deepdisc",
                    "label": label,
                    "architecture": architecture,
                    "variant": variant,
                    "cap": cap if variant == "capped" else None,
                    "device": args.device,
                    "half": args.half,
                    "inference": inference,
                }
            )
    for package in args.packages:
        tasks.append(
            {
                **common,
                "kind": "deepdisc",
                "label": f"{Path(package).stem} (trained package)",
                "package": str(Path(package).resolve()),
                "variant": "package",
                "cap": None,
                "device": args.device,
                "half": args.half,
                "inference": inference,
            }
        )
    return tasks


def median_seconds(
    function: Callable[[], Any], repeats: int, synchronize: Callable[[], None] | None = None
) -> float:
    """Median wall time of ``repeats`` calls of ``function`` after one untimed call.

    ``synchronize`` (a device's, e.g. ``torch.cuda.synchronize``) is called after each call, inside the
    timing, so that work queued on a device is counted.
    """
    function()
    if synchronize is not None:
        synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if synchronize is not None:
            synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def git_commit() -> str:
    """Short commit of the checkout, with ``-dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # --no-optional-locks: never refresh (write) the index of a checkout others are working in.
        status = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(REPO_DIR),
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "nogit"
    return f"{commit}-dirty" if status else commit


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """Hardware and software the numbers belong to (a version is `None` where a package is missing)."""
    import importlib

    import psutil
    import torch

    def version(module: str) -> str | None:
        try:
            return str(importlib.import_module(module).__version__)
        except ImportError:  # sep and photutils are not needed on a machine that runs DeepDISC only.
            return None

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
        "ram_bytes": int(psutil.virtual_memory().total),
        "ram_available_bytes_at_start": int(psutil.virtual_memory().available),
        "loadavg_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": threads,
        "detectron2": version("detectron2"),
        "sep": version("sep"),
        "photutils": version("photutils"),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu_name=properties.name,
            gpu_memory_bytes=int(properties.total_memory),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _machine_slug(info: dict[str, Any]) -> str:
    words = [w for w in _slug(info["cpu_model"]).split("-") if w not in ("processor", "cpu", "r", "tm")]
    name = "-".join(words[:3]) + f"-{info['usable_cores']}c"
    if "gpu_name" in info:
        name += "-" + "-".join(_slug(info["gpu_name"]).split("-")[:3])
    return name


# -------------------------------------------------------------------------------------------- report ---


def _ratios(results: list[dict[str, Any]]) -> None:
    """Add each method's wall-time ratio to sep's and photutils' (from the same run)."""
    references = {
        r["kind"]: r["seconds"]["total"] for r in results if "error" not in r and r["kind"] != "deepdisc"
    }
    for result in results:
        if "error" in result:
            continue
        for name, seconds in references.items():
            result[f"time_vs_{name}"] = result["seconds"]["total"] / seconds if seconds > 0 else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _rss_over_input(result: dict[str, Any]) -> float | None:
    """GiB the method added to the RSS of its process once the patch was loaded."""
    peak = result.get("method_peak_rss_bytes") or result.get("peak_rss_bytes")
    return None if peak is None else (peak - result["rss_before_bytes"]) / GIB


def _markdown(report: dict[str, Any]) -> str:
    machine, patch, settings = report["machine"], report["patch"], report["settings"]
    mpix = patch["height"] * patch["width"] / 1e6
    kind = "quick check" if settings["quick"] else "reduced patch" if patch["cropped"] else "full patch"
    lines = [
        f"# Detection benchmark {report['date']} ({kind})",
        "",
        f"- Command: `{report['command']}`",
        f"- Commit: `{report['commit']}`",
        f"- Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cores']} logical), {machine['ram_bytes'] / GIB:.1f} GiB RAM, Python "
        f"{machine['python']}, torch {machine['torch']} ({machine['torch_threads']} threads), detectron2 "
        f"{machine['detectron2']}, sep {machine['sep']}, photutils {machine['photutils']}; device "
        f"`{machine['device']}`" + (f" ({machine['gpu_name']})" if "gpu_name" in machine else ""),
        f"- Load average at start: {', '.join(f'{v:.2f}' for v in machine['loadavg_at_start'])} "
        "(other work on the machine slows every method; see each method's load in the JSON)",
        f"- Patch: preset `{patch['preset']}` tract {patch['tract']} patch {tuple(patch['patch_xy'])}, "
        f"{patch['width']} x {patch['height']} px ({mpix:.2f} MPix), bands {''.join(patch['bands'])}, "
        f"{patch['n_truth_in_patch']} simulated sources ({patch['n_truth_snr5_in_patch']} with detection "
        f"S/N >= {REALISTIC_SNR:g}), no-data fraction {patch['no_data_fraction']:.3f}",
    ]
    if patch["cropped"]:
        lines.append(
            f"- **Reduced patch**: {patch['width']} px instead of the preset's {patch['full_patch_size']} px "
            f"(simulated as `{patch['simulated_preset']}`: same densities, depths and PSFs)"
        )
    lines += [
        f"- DeepDISC: random weights (seed {settings['seed']}), Lupton scaling, tiles "
        f"{settings['tile_size']} px, overlap {settings['overlap']}, batch {settings['batch_size']}, "
        f"stitch margin {TASK_DEFAULTS['stitch_margin']}; `cap N` = `TEST.DETECTIONS_PER_IMAGE: N` per tile "
        f"({settings['detections_cap_source']})",
        f"- sep and photutils: threshold {BASELINE_PARAMS['thresh']} sigma, minarea "
        f"{BASELINE_PARAMS['minarea']}, {BASELINE_PARAMS['deblend_nthresh']} levels, contrast "
        f"{BASELINE_PARAMS['deblend_cont']}; one thread",
        "",
        "| method | sources | raw det./tile | prepare s | detect s (forward) | catalog s | total s | MPix/s "
        "| peak RSS GiB | RSS over input GiB | time / sep | time / photutils |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in report["results"]:
        if "error" in result:
            first = result["error"].strip().splitlines()[-1] if result["error"].strip() else "error"
            lines.append(f"| {result['label']} | failed: {first} |" + " |" * 10)
            continue
        seconds = result["seconds"]
        if result["kind"] == "deepdisc":
            detect = f"{seconds['inference']:.2f} ({seconds['forward']:.2f})"
            raw = f"{result['raw_per_tile']:.0f}"
        elif result["kind"] == "photutils":
            detect = f"{seconds['detect'] + seconds['deblend']:.2f}"
            raw = "—"
        else:
            detect, raw = f"{seconds['total']:.2f}", "—"
        gpu = ""
        if "gpu_peak_allocated_bytes" in result:
            gpu = f" (GPU {result['gpu_peak_allocated_bytes'] / GIB:.2f})"
        lines.append(
            f"| {result['label']} | {result['n_sources']} | {raw} | {_fmt(seconds.get('prepare'))} "
            f"| {detect} | {_fmt(seconds.get('catalog'))} | {seconds['total']:.2f} "
            f"| {result['mpix_per_s']:.3f} "
            f"| {result['peak_rss_bytes'] / GIB:.2f}{gpu} "
            f"| {_fmt(_rss_over_input(result))} "
            f"| {_fmt(result.get('time_vs_sep'), 1)} | {_fmt(result.get('time_vs_photutils'), 1)} |"
        )
    lines += [
        "",
        "DeepDISC runs `DeepDiscDetectTask.run`; its `prepare` is that run minus its inference (model "
        "building, scaling + validity mask, catalog); photutils' is the detection image + smoothing; "
        "`detect`: tiled inference with stitching (forward passes alone in brackets), photutils detect + "
        "deblend, the whole sep baseline; `catalog`: footprints from the segmentation map.  Peak RSS is the "
        "process's (interpreter, imports, the patch and the method); `RSS over input` is the method's own "
        "peak (model building included) minus the RSS once the patch was loaded.  `raw det./tile`: "
        "detections the model emitted per tile before stitching - an untrained model emits its limit, which "
        "inflates mask-head, paste and catalog cost.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``<date>-<machine>-<commit>[-quick|-<size>px].json`` and ``.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{report['date']}-{report['machine_slug']}-{report['commit']}"
    if report["settings"]["quick"]:
        stem += "-quick"
    elif report["patch"]["cropped"]:
        stem += f"-{report['patch']['width']}px"
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    md_path.write_text(_markdown(report))
    return json_path, md_path


# ---------------------------------------------------------------------------------------------- CLI ---


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(
        description="DeepDISC tiled-inference throughput and memory versus sep and photutils on one patch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="benchmark", help="simulation preset of the patch")
    parser.add_argument("--tract", type=int, default=None, help="tract id (default: the preset's first)")
    parser.add_argument(
        "--patch",
        type=int,
        nargs=2,
        default=None,
        metavar=("X", "Y"),
        help="patch indices (default: central)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="simulate a smaller patch of this many pixels (same densities; default: the preset's size)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model weights")
    parser.add_argument("--sim-seed", type=int, default=None, help="scene seed (default: the tract's)")
    parser.add_argument(
        "--models",
        nargs="*",
        default=["compact-R18-FPN", "R50-FPN"],
        help="architectures, each run with the realistic per-tile detection cap",
    )
    parser.add_argument(
        "--untrained",
        nargs="*",
        default=None,
        metavar="MODEL",
        help="models of --models that also run untrained, i.e. with their own per-tile limit (default: those "
        f"of {', '.join(CHEAP_UNTRAINED)}); give the option alone for none",
    )
    parser.add_argument(
        "--packages",
        nargs="*",
        default=None,
        type=Path,
        metavar="PACKAGE",
        help="trained model packages (deepdisc-model files) to run as they are, with their own scaling, "
        f"bands and score threshold (default: {SHIPPED_PACKAGE.relative_to(REPO_DIR)} when present); give "
        "the option alone for none",
    )
    parser.add_argument(
        "--detections-cap",
        default="sep",
        help="per-tile limit of the capped variant: a number, 'sep' (sep's source count on the patch, per "
        "tile area, times --cap-margin) or 'truth' (likewise with the simulated S/N >= 5 sources)",
    )
    parser.add_argument("--cap-margin", type=float, default=1.5, help="margin of the 'sep'/'truth' cap")
    parser.add_argument(
        "--baselines", nargs="*", choices=("sep", "photutils"), default=["sep", "photutils"], help="baselines"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (DeepDISC only)")
    parser.add_argument("--half", action="store_true", help="fp16 autocast on CUDA")
    parser.add_argument("--tile-size", type=int, default=TASK_DEFAULTS["tile_size"])
    parser.add_argument("--overlap", type=int, default=TASK_DEFAULTS["overlap"])
    parser.add_argument("--batch-size", type=int, default=TASK_DEFAULTS["batch_size"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/OpenMP threads (default: $OMP_NUM_THREADS, else the usable cores)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds after which a method is abandoned"
    )
    parser.add_argument("--quick", action="store_true", help=f"check the script on a {QUICK_SIZE} px patch")
    parser.add_argument(
        "--prepare-only", action="store_true", help="simulate and cache the patch, measure nothing"
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR, help="cache of simulated patches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="where results are written")
    parser.add_argument(
        "--machine", default=None, help="machine name in the file names (default: from the CPU)"
    )
    args = parser.parse_args(argv)
    if args.quick and args.size is None:
        args.size = QUICK_SIZE
    if args.untrained is None:
        args.untrained = [m for m in args.models if m in CHEAP_UNTRAINED]
    unknown = [m for m in args.untrained if m not in args.models]
    if unknown:
        parser.error(f"--untrained {unknown} not among --models {args.models}")
    if args.threads is None:
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        args.threads = int(from_env) if from_env.isdigit() and int(from_env) > 0 else int(usable or 1)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    cap_is_number = args.detections_cap.isdigit() and int(args.detections_cap) > 0
    if args.detections_cap not in ("sep", "truth") and not cap_is_number:
        parser.error(
            f"--detections-cap must be 'sep', 'truth' or a positive integer, got {args.detections_cap!r}"
        )
    if args.detections_cap == "sep" and args.models and "sep" not in args.baselines:
        parser.error("--detections-cap sep needs sep among --baselines; give a number or 'truth'")
    if args.cap_margin <= 0:
        parser.error(f"--cap-margin must be positive, got {args.cap_margin}")
    if args.packages is None:
        args.packages = [SHIPPED_PACKAGE] if SHIPPED_PACKAGE.is_file() else []
    missing = [str(p) for p in args.packages if not p.is_file()]
    if missing:
        parser.error(f"model package(s) not found: {missing}")
    if not args.models and not args.baselines and not args.packages:
        parser.error("nothing to measure: give --models and/or --baselines")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    return args


def _measure(task: dict[str, Any], patch: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    """Run one task isolated, add its throughput and print a one-line summary."""
    print(f"running {task['label']} on {patch['width']}x{patch['height']} px ...", flush=True)
    result = run_isolated(task, timeout_s=timeout_s)
    if "error" in result:
        print(f"  FAILED: {result['error']}", flush=True)
        return result
    seconds = result["seconds"]["total"]
    result["mpix_per_s"] = patch["height"] * patch["width"] / 1e6 / seconds if seconds > 0 else None
    print(
        f"  {result['n_sources']} sources in {seconds:.2f} s ({result['mpix_per_s']:.3f} MPix/s), "
        f"peak RSS {result['peak_rss_bytes'] / GIB:.2f} GiB",
        flush=True,
    )
    return result


def _resolve_cap(
    args: argparse.Namespace, patch: dict[str, Any], baselines: list[dict[str, Any]]
) -> tuple[int, str]:
    """The capped variant's per-tile limit and a sentence saying where it comes from."""
    if args.detections_cap not in ("sep", "truth"):
        return int(args.detections_cap), "given on the command line"
    if args.detections_cap == "sep":
        sep = [r for r in baselines if r["kind"] == "sep" and "error" not in r]
        if not sep:
            raise SystemExit("--detections-cap sep needs a successful sep run; give a number or 'truth'")
        n_sources, what = sep[0]["n_sources"], "sources sep found"
    else:
        n_sources = patch["n_truth_snr5_in_patch"]
        what = f"simulated sources with detection S/N >= {REALISTIC_SNR:g}"
    cap = realistic_detections_cap(
        n_sources, patch["height"], patch["width"], args.tile_size, args.cap_margin
    )
    return cap, f"{args.cap_margin:g} x the {n_sources} {what}, per tile area"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the process exit status (1 if a method failed)."""
    args = parse_args(argv)
    # Children inherit these before importing numpy/torch, so every library sees the same thread budget.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    command = shlex.join(["python", "bench/bench_detect.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info(args.device, args.threads)
    patch_xy = tuple(args.patch) if args.patch is not None else None
    try:
        cache, patch = simulate_or_load(
            args.preset, args.tract, patch_xy, args.size, args.sim_seed, args.work
        )
    except ValueError as error:  # Bad preset, tract, patch or size: say which, without a traceback.
        raise SystemExit(f"bench_detect.py: error: {error}") from None
    if args.prepare_only:
        print(f"patch ready: {cache}")
        return 0
    results = [_measure(task, patch, args.timeout) for task in build_tasks(args, cache, None, baselines=True)]
    cap, cap_source = None, "no random-weight models run"
    if args.models:
        cap, cap_source = _resolve_cap(args, patch, results)
        print(f"capped variant: at most {cap} detections per tile ({cap_source})", flush=True)
    results += [
        _measure(task, patch, args.timeout) for task in build_tasks(args, cache, cap, baselines=False)
    ]
    _ratios(results)
    now = datetime.datetime.now().astimezone()
    report = {
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "command": command,
        "commit": git_commit(),
        "machine_slug": args.machine or _machine_slug(machine),
        "machine": machine,
        "patch": patch,
        "settings": {
            "quick": bool(args.quick),
            "seed": args.seed,
            "tile_size": args.tile_size,
            "overlap": args.overlap,
            "batch_size": args.batch_size,
            "detections_cap": cap,
            "detections_cap_source": cap_source,
            "cap_margin": args.cap_margin,
            "untrained_models": list(args.untrained),
            "models": list(args.models),
            "baselines": list(args.baselines),
            "packages": [str(p) for p in args.packages],
            "threads": args.threads,
        },
        "results": results,
    }
    json_path, md_path = write_report(report, args.out)
    print(_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
