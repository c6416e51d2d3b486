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

"""Shared pytest fixtures: a tiny simulated Butler repository, built once per test session.

Use with ``from sim_fixtures import tiny_repo`` in a test module (pytest then sees the fixture), or register
the module once with ``pytest_plugins = ["sim_fixtures"]`` in ``conftest.py``.

``tiny_repo`` writes the ``tiny`` preset (2 patches, bands g r i) with ``sim.scene.simulate_patch`` when that
module is available and otherwise with `gaussian_patch`, a small deterministic stand-in that honours the
same `SimulatedPatch` contract (Gaussian sources and PSFs, exact models); ``DEEPDISC_SIM_STANDIN=1`` forces
the stand-in.  `TinyRepo.simulator` says which was used.
"""

from __future__ import annotations

__all__ = ["TinyRepo", "gaussian_patch", "tiny_repo"]

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from astropy.table import Table
from scipy import ndimage

from lsst.meas.extensions.deepdisc.core.footprints import flatten_spans, mask_to_spans
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MultibandImage
from lsst.meas.extensions.deepdisc.sim.presets import SimPreset, get_preset, patch_geometry
from lsst.meas.extensions.deepdisc.sim.types import DeblendedBlend, DeblendedSource, SimulatedPatch

MODEL_PSF_SIGMA = 0.8
PSF_SIGMA = {"u": 1.9, "g": 1.7, "r": 1.5, "i": 1.4, "z": 1.4, "y": 1.5}
NOISE_NJY = 2.0
PSF_SIZE = 15


def gaussian_image(shape: tuple[int, int], x: float, y: float, sigma: float) -> np.ndarray:
    """Unit-flux circular Gaussian sampled at pixel centres of an array of ``shape``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2.0 * sigma**2))
    return image / (2.0 * np.pi * sigma**2)


def _kernel(sigma: float, size: int = PSF_SIZE) -> np.ndarray:
    kernel = gaussian_image((size, size), size // 2, size // 2, sigma)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_patch(
    preset: SimPreset, tract: int, patch_x: int, patch_y: int, seed: int, truth_models: bool = False
) -> SimulatedPatch:
    """A small deterministic `SimulatedPatch` of Gaussian sources (stand-in for ``simulate_patch``).

    Sources are circular Gaussians of width ``s`` seen through Gaussian PSFs, so the model-space morphology
    (width ``sqrt(s^2 + 0.8^2)``) convolved with the difference kernel is exactly the observed profile.
    Two close pairs make blends; the other sources are isolated.
    """
    geometry = patch_geometry(preset, tract, patch_x, patch_y)
    rng = np.random.default_rng([seed, tract, geometry.patch])
    bands = tuple(preset.bands)
    height, width = geometry.height, geometry.width
    x0, y0 = geometry.x0, geometry.y0
    n_single = 8
    # Local positions: a grid of well separated singles plus two pairs 4 px apart.
    xs = list(rng.uniform(30, width - 30, n_single))
    ys = list(np.linspace(30, height - 30, n_single) + rng.uniform(-5, 5, n_single))
    for cx, cy in ((width * 0.3, height * 0.5), (width * 0.7, height * 0.35)):
        xs += [cx - 2.0, cx + 2.5]
        ys += [cy, cy + 1.0]
    n_sources = len(xs)
    sizes = rng.uniform(0.5, 2.0, n_sources)
    fluxes = rng.uniform(300, 3000, (n_sources, len(bands)))
    ids = np.array([(tract << 48) + (geometry.patch << 32) + (1 << 31) + k for k in range(n_sources)])

    image = np.zeros((len(bands), height, width), dtype=np.float64)
    per_source = np.zeros((n_sources, height, width))
    for k in range(n_sources):
        for b, band in enumerate(bands):
            sigma = np.hypot(sizes[k], PSF_SIGMA[band])
            profile = gaussian_image((height, width), xs[k], ys[k], sigma)
            image[b] += fluxes[k, b] * profile
            per_source[k] += fluxes[k, b] * profile
    noise_free_sum = image.sum(axis=0)
    noise = rng.normal(0.0, NOISE_NJY, image.shape)
    mask = np.zeros(image.shape, dtype=np.int32)
    mask[:, :4, :] |= 1 << DEFAULT_MASK_PLANES["EDGE"]
    mask[:, -4:, :] |= 1 << DEFAULT_MASK_PLANES["EDGE"]
    mask[:, :, :4] |= 1 << DEFAULT_MASK_PLANES["EDGE"]
    mask[:, :, -4:] |= 1 << DEFAULT_MASK_PLANES["EDGE"]
    mask[:, -12:, -12:] |= 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    observed = (image + noise).astype(np.float32)
    observed[:, -12:, -12:] = 0.0

    threshold = NOISE_NJY * np.sqrt(len(bands))
    footprints = [per_source[k] > threshold for k in range(n_sources)]
    ra, dec = geometry.wcs.pixel_to_world_values(np.array(xs) + x0, np.array(ys) + y0)
    truth = Table()
    truth["id"] = ids
    truth["ra"] = np.asarray(ra) % 360.0
    truth["ra"].unit = "deg"
    truth["dec"] = np.asarray(dec)
    truth["dec"].unit = "deg"
    truth["x"] = np.array(xs) + x0
    truth["y"] = np.array(ys) + y0
    truth["type"] = np.array(["galaxy"] * n_sources)
    truth["is_star"] = np.zeros(n_sources, dtype=bool)
    for b, band in enumerate(bands):
        truth[f"flux_{band}"] = fluxes[:, b]
        truth[f"flux_{band}"].unit = "nJy"
        truth[f"mag_{band}"] = 31.4 - 2.5 * np.log10(fluxes[:, b])
    truth["size"] = sizes * geometry.pixel_scale_arcsec
    truth["e1"] = np.zeros(n_sources)
    truth["e2"] = np.zeros(n_sources)
    spans_column = np.empty(n_sources, dtype=object)
    for k in range(n_sources):
        spans_column[k] = flatten_spans(mask_to_spans(footprints[k], xy0=(x0, y0)))
    truth["spans"] = spans_column
    truth["spans"].description = "footprint spans (y, x_begin, x_end), flattened, parent coordinates"
    truth["footprint_area"] = np.array([int(f.sum()) for f in footprints])

    # Deblender output: connected regions of the detection image, exact models of their sources.
    labels, n_labels = ndimage.label(noise_free_sum > threshold)
    blends = []
    deblend_rows = []
    counter = 1
    for label in range(1, n_labels + 1):
        region = labels == label
        members = [k for k in range(n_sources) if region[int(round(ys[k])), int(round(xs[k]))]]
        if not members:
            continue
        rows, cols = np.nonzero(region)
        origin = (int(rows.min()) + y0, int(cols.min()) + x0)
        shape = (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
        parent_id = (tract << 48) + (geometry.patch << 32) + counter
        counter += 1
        children = []
        for k in members:
            sigma_model = np.hypot(sizes[k], MODEL_PSF_SIGMA)
            half = int(np.ceil(5 * sigma_model))
            cx, cy = int(round(xs[k])), int(round(ys[k]))
            morph = gaussian_image(
                (2 * half + 1, 2 * half + 1), half + xs[k] - cx, half + ys[k] - cy, sigma_model
            )
            scale = morph.max()
            child_id = parent_id if len(members) == 1 else (tract << 48) + (geometry.patch << 32) + counter
            if len(members) > 1:
                counter += 1
            children.append(
                DeblendedSource(
                    source_id=int(child_id),
                    parent_id=int(parent_id),
                    peak=(xs[k] + x0, ys[k] + y0),
                    origin=(cy - half + y0, cx - half + x0),
                    spectrum=(fluxes[k] * scale).astype(np.float32),
                    morph=(morph / scale).astype(np.float32),
                    is_isolated=len(members) == 1,
                )
            )
        spans = mask_to_spans(region, xy0=(x0, y0))
        blends.append(DeblendedBlend(parent_id, origin, shape, spans, children))
        deblend_rows.append((parent_id, 0, len(children) if len(children) > 1 else 0, spans))
        if len(children) > 1:
            for child in children:
                deblend_rows.append((child.source_id, parent_id, 0, spans))

    object_deblend = Table()
    object_deblend["id"] = np.array([r[0] for r in deblend_rows], dtype=np.int64)
    object_deblend["parent"] = np.array([r[1] for r in deblend_rows], dtype=np.int64)
    object_deblend["nChild"] = np.array([r[2] for r in deblend_rows], dtype=np.int32)
    deblend_spans = np.empty(len(deblend_rows), dtype=object)
    for index, row in enumerate(deblend_rows):
        deblend_spans[index] = flatten_spans(row[3])
    object_deblend["spans"] = deblend_spans
    object_patch = Table()
    object_patch["objectId"] = object_deblend["id"][object_deblend["nChild"] == 0]
    object_patch["parentObjectId"] = object_deblend["parent"][object_deblend["nChild"] == 0]
    object_patch["refBand"] = np.array(["i"] * len(object_patch))

    mb = MultibandImage(
        bands=bands,
        image=observed,
        variance=np.full(image.shape, NOISE_NJY**2, dtype=np.float32),
        mask=mask,
        wcs=geometry.wcs,
        xy0=(x0, y0),
        metadata={"psf_fwhm_arcsec": {b: PSF_SIGMA[b] * 2.3548 * 0.2 for b in bands}},
    )
    return SimulatedPatch(
        geometry=geometry,
        image=mb,
        psf_images={b: _kernel(PSF_SIGMA[b]) for b in bands},
        psf_fwhm_arcsec={b: PSF_SIGMA[b] * 2.3548 * geometry.pixel_scale_arcsec for b in bands},
        model_psf=_kernel(MODEL_PSF_SIGMA),
        truth=truth,
        blends=blends,
        object_deblend=object_deblend,
        object_patch=object_patch,
        metadata={
            "preset": preset.name,
            "seed": seed,
            "blended_fraction": float(np.mean([len(b.children) > 1 for b in blends])),
            "n_truth": n_sources,
            "deblender": "gaussian_patch (exact models)",
            "depth_5sigma_mag": {b: 27.0 for b in bands},
        },
    )


def _real_simulator() -> Any | None:
    """``sim.scene.simulate_patch`` once the simulation modules it needs all exist, else `None`.

    Setting the environment variable ``DEEPDISC_SIM_STANDIN=1`` forces the stand-in.
    """
    if os.environ.get("DEEPDISC_SIM_STANDIN", "") not in ("", "0"):
        return None
    for module in ("scene", "deblend", "measure"):
        if importlib.util.find_spec(f"lsst.meas.extensions.deepdisc.sim.{module}") is None:
            return None
    from lsst.meas.extensions.deepdisc.sim.scene import simulate_patch

    return simulate_patch


@dataclass
class TinyRepo:
    """The session's tiny simulated repository.

    Attributes
    ----------
    root : `str`
        Repository root directory.
    collection : `str`
        CHAINED collection to use as input (``sim/tiny``).
    run : `str`
        RUN collection (``sim/tiny/run``).
    skymap : `str`
        Skymap name (constrain queries with it).
    bands : `tuple` [`str`, ...]
        Bands of ``deep_coadd`` (g, r, i).
    data_ids : `list` [`dict`]
        ``{"skymap", "tract", "patch"}`` per patch.
    patches : `dict` [`tuple` [`int`, `int`], `SimulatedPatch`]
        What was written, by ``(tract, patch)``.
    simulator : `str`
        ``"simulate_patch"`` (sim.scene) or ``"gaussian_patch"`` (the stand-in).
    info : `lsst.meas.extensions.deepdisc.sim.repo.SimRepoInfo`
        The writer's own summary.
    """

    root: str
    collection: str
    run: str
    skymap: str
    bands: tuple[str, ...]
    data_ids: list[dict[str, Any]]
    patches: dict[tuple[int, int], SimulatedPatch] = field(default_factory=dict)
    simulator: str = ""
    info: Any = None

    def band_data_ids(self) -> list[dict[str, Any]]:
        """``deep_coadd`` data IDs (patch data IDs times bands)."""
        return [{**data_id, "band": band} for data_id in self.data_ids for band in self.bands]


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> TinyRepo:
    """Build the ``tiny`` preset into a fresh repository once per session (see `TinyRepo`)."""
    from lsst.meas.extensions.deepdisc.sim.repo import build_sim_repo

    real = _real_simulator()
    simulate = real if real is not None else gaussian_patch
    written: dict[tuple[int, int], SimulatedPatch] = {}

    def recording_simulate(*args: Any, **kwargs: Any) -> SimulatedPatch:
        patch = simulate(*args, **kwargs)
        written[(patch.geometry.tract, patch.geometry.patch)] = patch
        return patch

    root = tmp_path_factory.mktemp("tiny_repo") / "repo"
    assert os.environ.get("DAF_BUTLER_CONFIG_PATH"), "conftest.py must set DAF_BUTLER_CONFIG_PATH"
    info = build_sim_repo(root, preset=get_preset("tiny"), simulate=recording_simulate)
    return TinyRepo(
        root=info.root,
        collection=info.collection,
        run=info.run,
        skymap=info.skymap,
        bands=info.bands,
        data_ids=list(info.data_ids),
        patches=written,
        simulator="simulate_patch" if real is not None else "gaussian_patch",
        info=info,
    )
