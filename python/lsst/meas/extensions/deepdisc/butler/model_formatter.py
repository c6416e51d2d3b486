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

"""Butler support for model packages: the ``deepdisc_model`` dataset and its formatter.

A trained model lives in a Butler repository as the dataset ``deepdisc_model`` (no dimensions, storage
class ``DeepDiscModelPackage``) in a RUN collection ``pretrained_models/<name>``, the convention of
meas_transiNet's ``pretrainedModelPackage``; tasks take it as a ``PrerequisiteInput``.  The file is the
package zip itself (`..core.model_package`), so reading it through the Butler applies every safety check.
Morphology classifiers (`..core.morphology.MorphologyPackage`) are stored the same way as the dataset
``deepdisc_morphology_model`` (storage class ``DeepDiscMorphologyPackage``).
"""

from __future__ import annotations

__all__ = [
    "MORPHOLOGY_DATASET_TYPE",
    "MORPHOLOGY_STORAGE_CLASS",
    "RELIABILITY_DATASET_TYPE",
    "STAR_GALAXY_DATASET_TYPE",
    "DeepDiscMorphologyFormatter",
    "MODEL_DATASET_TYPE",
    "MODEL_RUN_PREFIX",
    "MODEL_STORAGE_CLASS",
    "DeepDiscModelFormatter",
    "IngestResult",
    "ingest_model_package",
    "model_run_collection",
    "register_model_dataset_type",
]

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, override

from lsst.daf.butler import Butler, CollectionType, DatasetRef, DatasetType, FormatterV2
from lsst.daf.butler.registry import MissingCollectionError
from lsst.resources import ResourcePath

from ..core.model_package import ModelPackage, ModelPackageError
from ..core.morphology import MorphologyPackage
from .config_path import BUTLER_CONFIG_DIR

MODEL_DATASET_TYPE = "deepdisc_model"
"""Dataset type name of model packages."""

MODEL_STORAGE_CLASS = "DeepDiscModelPackage"
"""Storage class of model packages (declared in ``configs/storageClasses.yaml``)."""

MODEL_RUN_PREFIX = "pretrained_models"
"""Model packages go to the RUN collection ``pretrained_models/<name>``."""

MORPHOLOGY_DATASET_TYPE = "deepdisc_morphology_model"
"""Dataset type name of morphology classifier packages."""

STAR_GALAXY_DATASET_TYPE = "deepdisc_star_galaxy_classifier"
"""Dataset type of a trained star-galaxy classifier (StructuredDataDict; ``StarGalaxyClassifier.to_dict``)."""

RELIABILITY_DATASET_TYPE = "deepdisc_reliability_classifier"
"""Dataset type of a trained reliability classifier (StructuredDataDict; `ReliabilityClassifier.to_dict`)."""

MORPHOLOGY_STORAGE_CLASS = "DeepDiscMorphologyPackage"
"""Storage class of morphology classifier packages."""

_STORAGE = {
    ModelPackage: (MODEL_DATASET_TYPE, MODEL_STORAGE_CLASS),
    MorphologyPackage: (MORPHOLOGY_DATASET_TYPE, MORPHOLOGY_STORAGE_CLASS),
}


class DeepDiscModelFormatter(FormatterV2):
    """Read and write `~lsst.meas.extensions.deepdisc.core.model_package.ModelPackage` zip files.

    Reading goes through `ModelPackage.load`, so a corrupt or hostile file raises
    `~lsst.meas.extensions.deepdisc.core.model_package.ModelPackageError` and nothing in it is executed.
    Writing is deterministic: equal packages give byte-identical files.
    """

    default_extension: ClassVar[str] = ".zip"
    supported_extensions: ClassVar[frozenset[str]] = frozenset({".zip"})
    can_read_from_local_file: ClassVar[bool] = True
    package_type: ClassVar[type] = ModelPackage

    @override
    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        if component is not None:
            raise ValueError(f"{type(self).__name__} has no components (asked for {component!r})")
        return self.package_type.load(path)

    @override
    def to_bytes(self, in_memory_dataset: Any) -> bytes:
        if not isinstance(in_memory_dataset, self.package_type):
            raise TypeError(
                f"{type(self).__name__} writes {self.package_type.__name__} objects, got "
                f"{type(in_memory_dataset).__name__}"
            )
        return in_memory_dataset.to_bytes()

    @override
    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        # The Butler hands a temporary name whose suffix is not ours, so bypass ModelPackage.save's check.
        Path(uri.ospath).write_bytes(self.to_bytes(in_memory_dataset))


class DeepDiscMorphologyFormatter(DeepDiscModelFormatter):
    """Read and write `~lsst.meas.extensions.deepdisc.core.morphology.MorphologyPackage` zip files."""

    package_type: ClassVar[type] = MorphologyPackage


def model_run_collection(name: str) -> str:
    """The RUN collection ``pretrained_models/<name>`` that holds the model package ``name``."""
    if not name or "/" in name or name != name.strip():
        raise ValueError(f"invalid model name {name!r} for collection {MODEL_RUN_PREFIX}/<name>")
    return f"{MODEL_RUN_PREFIX}/{name}"


def register_model_dataset_type(butler: Butler, package_type: type = ModelPackage) -> DatasetType:
    """Register dataset type ``deepdisc_model`` (no dimensions) if it is not there yet.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable Butler.
    package_type : `type`
        `ModelPackage` (``deepdisc_model``) or `MorphologyPackage` (``deepdisc_morphology_model``).

    Returns
    -------
    dataset_type : `lsst.daf.butler.DatasetType`

    Raises
    ------
    RuntimeError
        If the storage class is unknown (``DAF_BUTLER_CONFIG_PATH`` lacks `BUTLER_CONFIG_DIR`).
    lsst.daf.butler.registry.ConflictingDefinitionError
        If the repository defines ``deepdisc_model`` differently.
    """
    name, storage_class = _STORAGE[package_type]
    try:
        dataset_type = DatasetType(
            name, dimensions=(), storageClass=storage_class, universe=butler.dimensions
        )
        dataset_type.storageClass  # noqa: B018 - resolves the storage class name now, for a clear error.
    except KeyError as exc:
        raise RuntimeError(
            f"storage class {storage_class!r} is unknown to this Butler ({exc}); put "
            f"{BUTLER_CONFIG_DIR} on DAF_BUTLER_CONFIG_PATH before creating the Butler"
        ) from None
    butler.registry.registerDatasetType(dataset_type)
    return dataset_type


@dataclass(frozen=True)
class IngestResult:
    """What `ingest_model_package` did.

    Parameters
    ----------
    status : `str`
        ``"ingested"`` (new), ``"unchanged"`` (the same content was already there) or ``"replaced"``.
    ref : `lsst.daf.butler.DatasetRef`
        The dataset now in the collection.
    run : `str`
        The RUN collection.
    """

    status: Literal["ingested", "unchanged", "replaced"]
    ref: DatasetRef
    run: str


def ingest_model_package(
    butler: Butler,
    package: ModelPackage | MorphologyPackage,
    *,
    name: str | None = None,
    replace: bool = False,
) -> IngestResult:
    """Put a model package into ``pretrained_models/<name>``; idempotent.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A writeable Butler.
    package : `~lsst.meas.extensions.deepdisc.core.model_package.ModelPackage` or `MorphologyPackage`
        The package (a detection model goes to ``deepdisc_model``, a morphology classifier to
        ``deepdisc_morphology_model``).
    name : `str`, optional
        Collection name suffix; defaults to ``package.name``.
    replace : `bool`
        Replace a package with different content in that collection (it is otherwise an error).

    Returns
    -------
    result : `IngestResult`

    Raises
    ------
    ModelPackageError
        If the collection holds a package with different content and ``replace`` is false.
    """
    run = model_run_collection(name or package.name)
    dataset_type = register_model_dataset_type(butler, type(package))
    try:
        existing = butler.find_dataset(dataset_type, collections=run)
    except MissingCollectionError:
        existing = None
    if existing is not None:
        try:
            stored_digest = butler.get(existing).content_digest()
        except ModelPackageError:  # A damaged stored package can only be replaced.
            stored_digest = "(unreadable)"
        new_digest = package.content_digest()
        if stored_digest == new_digest:
            return IngestResult("unchanged", existing, run)
        if not replace:
            raise ModelPackageError(
                f"collection {run!r} already holds a different {dataset_type.name} (content sha256 "
                f"{stored_digest}, new {new_digest}); choose another name or replace it explicitly"
            )
        butler.pruneDatasets([existing], disassociate=True, unstore=True, purge=True)
    butler.collections.register(run, CollectionType.RUN)
    ref = butler.put(package, dataset_type, run=run)
    return IngestResult("replaced" if existing is not None else "ingested", ref, run)
