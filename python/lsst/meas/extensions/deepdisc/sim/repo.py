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

"""Write simulated DRP patches into a Butler repository, as the Rubin pipelines would have left them.

`build_sim_repo` creates a repository (SQLite registry, local file datastore) or adds to an existing one
(any registry, PostgreSQL included: pass its config/URI or a writeable `~lsst.daf.butler.Butler`), then for
every requested patch simulates it (``sim.scene.simulate_patch``) and puts into a RUN collection:

``deep_coadd`` (tract, patch, band; ``MaskedImageV2``)
    The coadd: nJy image, variance, mask (``lsst.images`` plane names), tract TAN WCS.
``truth_patch`` (tract, patch; ``ArrowAstropy``)
    The simulated objects, with their footprint ``spans``.
``truth_artifacts`` (tract, patch; ``ArrowAstropy``)
    The image artifacts (ghosts, rays, scattered light, streaks), with their footprint ``spans``; written
    only by presets with artifacts (``SimPreset.has_artifacts``), the dataset type is always registered.
``object_scarlet_models`` (tract, patch; ``ScarletModelArchive``)
    The deblender's models in the upstream ``.scarlet`` format, PSFs in its metadata.
``object_deblend`` (tract, patch; ``ArrowAstropy``)
    The deblended catalog, parents and children, with footprint ``spans``.
``object_patch`` (tract, patch; ``ArrowAstropy``)
    The object table.
``sim_metadata`` (tract, patch; ``StructuredDataDict``)
    Preset, seed, depth, PSF FWHM, counts, blended fraction.

(every dataset type also has the ``skymap`` dimension).  A CHAINED collection (default ``sim/<preset>``)
holding the run is what users pass as input.  Span columns are ``list<int32>`` (flattened spans, see
`..core.footprints.flatten_spans`).

The repository-level description of each patch is the ``sim_metadata`` dataset: ``preset``, ``seed``,
``tract``, ``patch``, ``patch_x``, ``patch_y``, ``bbox`` (x0, y0, width, height), ``bands``,
``psf_fwhm_arcsec`` per band, ``truth_models``, ``skymap``, ``package_version`` and everything the
simulation put in ``SimulatedPatch.metadata`` (depth per band, counts, blended fraction, deblender name...).
`load_sim_metadata` reads them all back.

Dimension records: an instrument (``DeepDiscSim``) with one ``physical_filter`` per band (``sim_<band>``,
the only way to create ``band`` records in universe v8), the skymap (``deepdisc_sim_<preset>``, hash of its
geometry, so a different geometry under the same name is refused), tracts with their sky regions and patches
with ``cell_x``/``cell_y`` and their inner-box sky regions (`lsst.sphgeom.ConvexPolygon` of the corners).

Writing is idempotent: a patch whose datasets all exist in the run is skipped without simulating it; a
partly written patch is simulated again (deterministically) and only its missing datasets are put.  The
``sim_metadata`` of a patch is put last and records the preset and seed, so that asking for another seed
or preset in the same run is refused instead of mixing data sets.
"""

from __future__ import annotations

__all__ = [
    "ALL_DATASET_TYPES",
    "DEEP_COADD",
    "INSTRUMENT_NAME",
    "OBJECT_DEBLEND",
    "OBJECT_PATCH",
    "OBJECT_SCARLET_MODELS",
    "SIM_METADATA",
    "TRUTH_ARTIFACTS",
    "TRUTH_PATCH",
    "SimRepoInfo",
    "build_sim_repo",
    "default_collection",
    "load_sim_metadata",
    "skymap_name",
]

import hashlib
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsst.daf.butler import Butler, CollectionType, DatasetType
from lsst.resources import ResourcePathExpression

from .. import __version__
from ..butler.conversions import masked_image_from_multiband
from ..butler.records import register_band_filters
from ..butler.regions import pixel_box_region
from ..butler.repository import open_writeable_butler
from ..butler.tables import to_arrow
from .presets import SimPreset, get_preset, make_tract_wcs
from .scarlet_archive import model_data_from_deblended
from .types import SimulatedPatch

_log = logging.getLogger(__name__)

DEEP_COADD = "deep_coadd"
TRUTH_PATCH = "truth_patch"
TRUTH_ARTIFACTS = "truth_artifacts"
OBJECT_SCARLET_MODELS = "object_scarlet_models"
OBJECT_DEBLEND = "object_deblend"
OBJECT_PATCH = "object_patch"
SIM_METADATA = "sim_metadata"

INSTRUMENT_NAME = "DeepDiscSim"

_PATCH_DIMENSIONS = ("skymap", "tract", "patch")
# name -> (dimensions, storage class)
ALL_DATASET_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    DEEP_COADD: (("skymap", "tract", "patch", "band"), "MaskedImageV2"),
    TRUTH_PATCH: (_PATCH_DIMENSIONS, "ArrowAstropy"),
    TRUTH_ARTIFACTS: (_PATCH_DIMENSIONS, "ArrowAstropy"),
    OBJECT_SCARLET_MODELS: (_PATCH_DIMENSIONS, "ScarletModelArchive"),
    OBJECT_DEBLEND: (_PATCH_DIMENSIONS, "ArrowAstropy"),
    OBJECT_PATCH: (_PATCH_DIMENSIONS, "ArrowAstropy"),
    SIM_METADATA: (_PATCH_DIMENSIONS, "StructuredDataDict"),
}
"""Every dataset type the writer registers: name -> (dimensions, storage class)."""

SimulateFunction = Callable[..., SimulatedPatch]


def skymap_name(preset: SimPreset | str) -> str:
    """Name of the skymap of a preset's tracts."""
    name = preset if isinstance(preset, str) else preset.name
    return f"deepdisc_sim_{name}"


def default_collection(preset: SimPreset | str) -> str:
    """Default CHAINED collection of a preset (its RUN is ``<collection>/run``)."""
    name = preset if isinstance(preset, str) else preset.name
    return f"sim/{name}"


@dataclass
class SimRepoInfo:
    """What `build_sim_repo` wrote, for tests and scripts.

    Attributes
    ----------
    root : `str`
        Repository URI (what `~lsst.daf.butler.Butler.from_config` and the ``butler`` CLI accept).
    collection : `str`
        CHAINED collection to pass as input.
    run : `str`
        RUN collection holding the datasets.
    skymap : `str`
        Skymap name (queries must constrain ``skymap``).
    instrument : `str`
        Instrument whose physical filters define the bands.
    preset : `str`
        Preset name.
    bands : `tuple` [`str`, ...]
        Bands of ``deep_coadd``.
    data_ids : `list` [`dict`]
        ``{"skymap", "tract", "patch"}`` of every requested patch, in processing order.
    seeds : `dict` [`int`, `int`]
        Seed used per tract.
    written, skipped : `int`
        Patches simulated and written / found complete and skipped.
    """

    root: str
    collection: str
    run: str
    skymap: str
    instrument: str
    preset: str
    bands: tuple[str, ...]
    data_ids: list[dict[str, Any]] = field(default_factory=list)
    seeds: dict[int, int] = field(default_factory=dict)
    written: int = 0
    skipped: int = 0

    def band_data_ids(self) -> list[dict[str, Any]]:
        """``deep_coadd`` data IDs: every patch data ID times every band."""
        return [{**data_id, "band": band} for data_id in self.data_ids for band in self.bands]


# ---------------------------------------------------------------------------------------------------------
# Repository and dimension records
# ---------------------------------------------------------------------------------------------------------


def _skymap_hash(preset: SimPreset) -> bytes:
    """20-byte hash of everything that fixes the skymap's geometry."""
    geometry = {
        "n_patches": [preset.n_patches_x, preset.n_patches_y],
        "inner": preset.patch_inner_size,
        "border": preset.patch_border,
        "scale": preset.pixel_scale_arcsec,
        "tracts": [[t.tract, t.ra, t.dec] for t in preset.tracts],
    }
    if preset.has_artifacts:
        # The registry wants a unique hash per skymap: a preset with artifacts on the geometry of another
        # (``artifacts`` on ``small``'s) must live beside it in one repository.
        geometry["name"] = preset.name
    return hashlib.sha1(json.dumps(geometry, sort_keys=True).encode()).digest()


def _register_dimensions(butler: Butler, preset: SimPreset, skymap: str, tracts: Sequence[int]) -> None:
    """Insert the instrument, filters, skymap, tract and patch records that are missing.

    The skymap record is synced (a different geometry under the same name is an error); records are
    inserted in batches, which matters on SQLite where every transaction is a disk sync.
    """
    registry = butler.registry
    register_band_filters(butler, INSTRUMENT_NAME, preset.bands, "sim_")
    try:
        registry.syncDimensionData(
            "skymap",
            {
                "name": skymap,
                "hash": _skymap_hash(preset),
                "tract_max": max(preset.tract_ids) + 1,
                "patch_nx_max": preset.n_patches_x,
                "patch_ny_max": preset.n_patches_y,
            },
        )
    except Exception as err:  # ConflictingDefinitionError; its import path moved between releases.
        raise ValueError(
            f"skymap {skymap!r} already exists in this repository with another geometry ({err}); "
            "use a fresh repository"
        ) from err
    existing = {record.id for record in butler.query_dimension_records("tract", skymap=skymap, explain=False)}
    height, width = preset.tract_shape
    for tract in tracts:
        if tract in existing:
            continue
        wcs = make_tract_wcs(preset, tract)
        registry.insertDimensionData(
            "tract", {"skymap": skymap, "id": tract, "region": pixel_box_region(wcs, 0, 0, width, height)}
        )
        patches = []
        for patch_x, patch_y in preset.patches():
            x_begin, y_begin, x_end, y_end = preset.inner_bbox(patch_x, patch_y)
            patches.append(
                {
                    "skymap": skymap,
                    "tract": tract,
                    "id": preset.patch_index(patch_x, patch_y),
                    "cell_x": patch_x,
                    "cell_y": patch_y,
                    "region": pixel_box_region(wcs, x_begin, y_begin, x_end, y_end),
                }
            )
        registry.insertDimensionData("patch", *patches, skip_existing=True)


def _register_dataset_types(butler: Butler) -> dict[str, DatasetType]:
    """Register every dataset type; an existing one with another definition is a clear error."""
    result = {}
    for name, (dimensions, storage_class) in ALL_DATASET_TYPES.items():
        dataset_type = DatasetType(name, dimensions, storage_class, universe=butler.dimensions)
        try:
            butler.registry.registerDatasetType(dataset_type)
        except Exception as err:  # ConflictingDefinitionError; its import path moved between releases.
            raise ValueError(
                f"dataset type {name!r} already exists in this repository with another definition "
                f"({err}); use a fresh repository for the simulation"
            ) from err
        result[name] = dataset_type
    return result


def _setup_collections(butler: Butler, collection: str, run: str) -> None:
    registry = butler.registry
    registry.registerRun(run)
    registry.registerCollection(collection, CollectionType.CHAINED)
    chain = list(registry.getCollectionChain(collection))
    if run not in chain:
        registry.setCollectionChain(collection, [run, *chain])


# ---------------------------------------------------------------------------------------------------------
# Writing one patch
# ---------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to YAML-safe Python values (for StructuredDataDict)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _patch_metadata(
    sim: SimulatedPatch, preset: SimPreset, seed: int, truth_models: bool, skymap: str
) -> dict[str, Any]:
    geometry = sim.geometry
    metadata = _plain(dict(sim.metadata))
    metadata.update(
        {
            "preset": preset.name,
            "seed": int(seed),
            "truth_models": bool(truth_models),
            "skymap": skymap,
            "tract": int(geometry.tract),
            "patch": int(geometry.patch),
            "patch_x": int(geometry.patch_x),
            "patch_y": int(geometry.patch_y),
            "bbox": [int(geometry.x0), int(geometry.y0), int(geometry.width), int(geometry.height)],
            "bands": list(sim.image.bands),
            "psf_fwhm_arcsec": {band: float(v) for band, v in sim.psf_fwhm_arcsec.items()},
            "package_version": __version__,
        }
    )
    return metadata


def _check_consistent(
    existing: Mapping[str, Any], preset: SimPreset, seed: int, truth_models: bool, run: str
) -> None:
    wanted = {"preset": preset.name, "seed": int(seed), "truth_models": bool(truth_models)}
    found = {key: existing.get(key) for key in wanted}
    if found != wanted:
        raise ValueError(
            f"run {run!r} already holds a simulation with {found}, not {wanted}; "
            "write to another collection (or another repository) instead of mixing data sets"
        )


def _write_patch(
    butler: Butler,
    sim: SimulatedPatch,
    data_id: dict[str, Any],
    missing: set[str],
    metadata: dict[str, Any],
    run: str,
    pixel_frame: Any,
) -> None:
    """Put the missing datasets of one simulated patch; ``sim_metadata`` last (the completion marker)."""
    image = sim.image
    if image.metadata.get("psf_fwhm_arcsec") is None:
        image.metadata["psf_fwhm_arcsec"] = dict(sim.psf_fwhm_arcsec)
    for band in image.bands:
        if f"{DEEP_COADD}:{band}" in missing:
            masked = masked_image_from_multiband(image, band, pixel_frame=pixel_frame)
            butler.put(masked, DEEP_COADD, {**data_id, "band": band}, run=run)
    if TRUTH_PATCH in missing:
        butler.put(to_arrow(sim.truth), TRUTH_PATCH, data_id, run=run)
    if TRUTH_ARTIFACTS in missing:
        if sim.truth_artifacts is None:
            raise ValueError(
                f"the preset has artifacts but the simulation of {data_id} returned no truth_artifacts table"
            )
        butler.put(to_arrow(sim.truth_artifacts), TRUTH_ARTIFACTS, data_id, run=run)
    if OBJECT_SCARLET_MODELS in missing:
        models = model_data_from_deblended(sim.blends, image.bands, sim.psf_images, sim.model_psf)
        butler.put(models, OBJECT_SCARLET_MODELS, data_id, run=run)
    if OBJECT_DEBLEND in missing:
        butler.put(to_arrow(sim.object_deblend), OBJECT_DEBLEND, data_id, run=run)
    if OBJECT_PATCH in missing:
        butler.put(to_arrow(sim.object_patch), OBJECT_PATCH, data_id, run=run)
    if SIM_METADATA in missing:
        butler.put(metadata, SIM_METADATA, data_id, run=run)


def _missing_datasets(
    butler: Butler, data_id: dict[str, Any], bands: Sequence[str], run: str, artifacts: bool = False
) -> set[str]:
    """Keys (``deep_coadd:<band>`` or dataset type name) of the datasets not yet in ``run``."""
    missing = set()
    for band in bands:
        if butler.find_dataset(DEEP_COADD, {**data_id, "band": band}, collections=run) is None:
            missing.add(f"{DEEP_COADD}:{band}")
    names = (TRUTH_PATCH, OBJECT_SCARLET_MODELS, OBJECT_DEBLEND, OBJECT_PATCH, SIM_METADATA)
    for name in (TRUTH_ARTIFACTS, *names) if artifacts else names:
        if butler.find_dataset(name, data_id, collections=run) is None:
            missing.add(name)
    return missing


def _resolve_patches(
    preset: SimPreset, patches: Iterable[int | tuple[int, int]] | None
) -> list[tuple[int, int]]:
    if patches is None:
        return list(preset.patches())
    result = []
    for patch in patches:
        if isinstance(patch, (tuple, list)):
            patch_x, patch_y = (int(v) for v in patch)
            preset.patch_index(patch_x, patch_y)  # Validates.
            result.append((patch_x, patch_y))
        else:
            result.append(preset.patch_xy(int(patch)))
    if len(set(result)) != len(result):
        raise ValueError(f"patches listed more than once: {result}")
    return result


def _default_simulate() -> SimulateFunction:
    try:
        from .scene import simulate_patch
    except ImportError as err:
        raise ImportError(
            "the pixel simulation (lsst.meas.extensions.deepdisc.sim.scene) is not available; "
            "pass simulate=... to build_sim_repo"
        ) from err
    return simulate_patch


def build_sim_repo(
    root_or_butler: Butler | ResourcePathExpression,
    preset: str | SimPreset = "tiny",
    seed: int | None = None,
    collection: str | None = None,
    truth_models: bool = False,
    patches: Iterable[int | tuple[int, int]] | None = None,
    *,
    tracts: Iterable[int] | None = None,
    run: str | None = None,
    create: bool | None = None,
    simulate: SimulateFunction | None = None,
    jobs: int = 1,
) -> SimRepoInfo:
    """Simulate patches and write them, with their dimension records, into a Butler repository.

    Parameters
    ----------
    root_or_butler : `~lsst.daf.butler.Butler`, `str` or path
        A writeable Butler, a repository root / ``butler.yaml`` URI (any registry), or a directory where a
        new repository (SQLite, local files) is created.
    preset : `str` or ``SimPreset``
        Simulation preset (``"tiny"``, ``"small"``, ``"artifacts"``, ``"benchmark"``...) or a ``SimPreset``.
    seed : `int`, optional
        Base seed; by default each tract's own seed from the preset.  With an explicit seed, tract ``t``
        uses ``seed + t`` (tracts stay independent).
    collection : `str`, optional
        CHAINED input collection, default ``sim/<preset>``.
    truth_models : `bool`
        Replace the deblender output by the exact models (see ``simulate_patch``).
    patches : iterable of `int` or ``(patch_x, patch_y)``, optional
        Patches to write in each tract (default: all).  An empty list writes only the dimension records,
        dataset types and collections (e.g. to ingest one's own coadds on the simulated skymap).
    tracts : iterable of `int`, optional
        Tracts to write (default: all tracts of the preset).
    run : `str`, optional
        RUN collection, default ``<collection>/run``.
    create : `bool`, optional
        `True`: the repository must not exist yet; `False`: it must exist; `None`: create if missing.
    simulate : callable, optional
        ``simulate(preset, tract, patch_x, patch_y, seed, truth_models=...) -> SimulatedPatch``;
        default ``sim.scene.simulate_patch``.
    jobs : `int`
        Patches simulated at once in worker processes (the Butler writes stay in this process, in order).
        ``simulate`` must then be picklable (a module-level function).

    Returns
    -------
    info : `SimRepoInfo`
        Root, collections, skymap, bands, data IDs and counts.

    Raises
    ------
    ValueError
        For an unknown preset/tract/patch, conflicting dataset types or a run holding another simulation.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    collection = collection or default_collection(preset)
    run = run or f"{collection}/run"
    if run == collection:
        raise ValueError(f"the RUN collection must differ from the CHAINED collection {collection!r}")
    tract_ids = list(preset.tract_ids if tracts is None else [int(t) for t in tracts])
    for tract in tract_ids:
        preset.tract_spec(tract)  # Validates.
    patch_list = _resolve_patches(preset, patches)
    seeds = {
        tract: (preset.tract_spec(tract).seed if seed is None else int(seed) + tract) for tract in tract_ids
    }
    if simulate is None and patch_list:
        simulate = _default_simulate()

    butler, root = open_writeable_butler(root_or_butler, create)
    skymap = skymap_name(preset)
    _register_dimensions(butler, preset, skymap, tract_ids)
    _register_dataset_types(butler)
    _setup_collections(butler, collection, run)

    info = SimRepoInfo(
        root=root,
        collection=collection,
        run=run,
        skymap=skymap,
        instrument=INSTRUMENT_NAME,
        preset=preset.name,
        bands=tuple(preset.bands),
        seeds=seeds,
    )
    tract_height, tract_width = preset.tract_shape
    total = len(tract_ids) * len(patch_list)
    pending = []  # (done index, tract, patch_x, patch_y, data_id, missing) of the patches to simulate
    done = 0
    for tract in tract_ids:
        for patch_x, patch_y in patch_list:
            patch = preset.patch_index(patch_x, patch_y)
            data_id = {"skymap": skymap, "tract": tract, "patch": patch}
            info.data_ids.append(data_id)
            missing = _missing_datasets(butler, data_id, preset.bands, run, preset.has_artifacts)
            if SIM_METADATA not in missing:
                existing = butler.get(SIM_METADATA, data_id, collections=run)
                _check_consistent(existing, preset, seeds[tract], truth_models, run)
            done += 1
            if not missing:
                info.skipped += 1
                _log.info(
                    "patch %d/%d (tract %d, patch %d): already complete, skipped", done, total, tract, patch
                )
                continue
            pending.append((done, tract, patch_x, patch_y, data_id, missing))

    def submit(executor: Executor | None, item: tuple) -> Future:
        _, tract, patch_x, patch_y, _, _ = item
        args = (preset, tract, patch_x, patch_y, seeds[tract])
        if executor is None:
            future: Future = Future()
            future.set_result(simulate(*args, truth_models=truth_models))
            return future
        return executor.submit(simulate, *args, truth_models=truth_models)

    start = time.perf_counter()
    frames = {tract: _tract_frame(skymap, tract, tract_height, tract_width) for tract in tract_ids}
    executor = (
        ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        if jobs > 1 and len(pending) > 1
        else None
    )
    try:
        # A window of `jobs` patches in flight bounds the memory held by finished, unwritten patches.
        window = max(1, jobs)
        futures = [submit(executor, item) for item in pending[:window]]
        for index, item in enumerate(pending):
            number, tract, _, _, data_id, missing = item
            sim = futures[index].result()
            if index + window < len(pending):
                futures.append(submit(executor, pending[index + window]))
            metadata = _patch_metadata(sim, preset, seeds[tract], truth_models, skymap)
            write_start = time.perf_counter()
            _write_patch(butler, sim, data_id, missing, metadata, run, frames[tract])
            written = time.perf_counter()
            info.written += 1
            per_patch = (written - start) / info.written
            _log.info(
                "patch %d/%d (tract %d, patch %d) written in %.1f s; %.1f patches/min, ETA %.0f s",
                number,
                total,
                tract,
                data_id["patch"],
                written - write_start,
                60.0 / per_patch if per_patch > 0 else float("inf"),
                (len(pending) - info.written) * per_patch,
            )
            del sim
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return info


def _tract_frame(skymap: str, tract: int, height: int, width: int) -> Any:
    """The ``lsst.images`` pixel frame of a tract (so coadds know which tract grid they are on)."""
    from lsst.images import Box, TractFrame

    return TractFrame(skymap=skymap, tract=tract, bbox=Box.from_shape((height, width)))


def load_sim_metadata(
    butler: Butler, collections: str | Sequence[str], skymap: str | None = None
) -> dict[tuple[int, int], dict[str, Any]]:
    """Every patch's ``sim_metadata`` in the collections, keyed by ``(tract, patch)``."""
    where = "" if skymap is None else f"skymap = '{skymap}'"
    refs = butler.query_datasets(
        SIM_METADATA, collections=collections, where=where, find_first=True, explain=False
    )
    return {
        (int(ref.dataId["tract"]), int(ref.dataId["patch"])): butler.get(ref)
        for ref in sorted(refs, key=lambda r: (r.dataId["tract"], r.dataId["patch"]))
    }
