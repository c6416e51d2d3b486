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
"""The morphology classifier as one safe file (dataset ``deepdisc_morphology_model``).

The same container as a detection package (`..model_package`): a deterministic zip of ``manifest.yaml``,
``model.yaml`` (the classifier described as data for `build_classifier`), ``metadata.yaml`` and
``weights.safetensors``, read with every check of a detection package (safe YAML, no pickle, hashes, size
caps), under the manifest format ``deepdisc-morphology-package`` so the two kinds are never confused.
"""

from __future__ import annotations

__all__ = ["MORPHOLOGY_FORMAT_NAME", "MorphologyPackage", "class_index"]

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ...version import __version__
from ..model_package import DEFAULT_LIMITS, ModelPackageError, PackageLimits
from ..model_package._archive import (
    MANIFEST_MEMBER,
    METADATA_MEMBER,
    MODEL_MEMBER,
    WEIGHTS_MEMBER,
    package_members,
    read_package,
    sha256,
    write_package,
    write_package_file,
)
from ..multiband import MissingBandError
from ._cutouts import CutoutConfig, CutoutError
from ._models import build_classifier, check_classifier_config

MORPHOLOGY_FORMAT_NAME = "deepdisc-morphology-package"
"""Manifest format name of morphology packages."""

_FORMAT_VERSION = 1
_OPTIONAL_KEYS = {"min_bands"}
_METADATA_KEYS = {
    "name",
    "version",
    "bands",
    "class_names",
    "cutout",
    "provenance",
    "metrics",
    "package_version",
}


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ModelPackageError(f"{what} must be a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise ModelPackageError(f"{what} must be distinct, got {value}")
    return list(value)


@dataclass
class MorphologyPackage:
    """A trained morphology classifier with what inference needs.

    Parameters
    ----------
    name, version : `str`
        Package name (its Butler collection is ``pretrained_models/<name>``) and version.
    classifier : `dict`
        Plain-data description for `build_classifier` (``in_channels`` = bands + 2).
    state_dict : `dict` [`str`, `torch.Tensor`]
        Weights.
    bands : `list` [`str`]
        Bands in the order of the input planes.
    class_names : `list` [`str`]
        Output classes (the classifier's ``num_classes``), in order.
    cutout : `CutoutConfig`
        How the cutouts were made in training (inference makes them the same way).
    provenance : `dict`
        Training data, configuration, time.
    metrics : `dict`
        Validation results recorded at training (top-k accuracies...).
    min_bands : `int`, optional
        Fewest of ``bands`` the classifier may run on (the others as zero planes), for a classifier trained
        with band dropout; `None`: it needs all of them.
    """

    name: str
    version: str
    classifier: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    bands: list[str]
    class_names: list[str]
    cutout: CutoutConfig = field(default_factory=CutoutConfig)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    package_version: str = __version__
    min_bands: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ModelPackageError(f"package name must be a non-empty string without '/', got {self.name!r}")
        self.bands = _string_list(self.bands, "bands")
        self.class_names = _string_list(self.class_names, "class_names")
        try:
            check_classifier_config(self.classifier)
        except ValueError as exc:
            raise ModelPackageError(f"{MODEL_MEMBER}: {exc}") from None
        if self.classifier["in_channels"] != len(self.bands) + 2:
            raise ModelPackageError(
                f"the classifier takes {self.classifier['in_channels']} planes but bands {self.bands} plus "
                "no_data and object_mask make " + str(len(self.bands) + 2)
            )
        if self.classifier["num_classes"] != len(self.class_names):
            raise ModelPackageError(
                f"the classifier has {self.classifier['num_classes']} outputs for {len(self.class_names)} "
                "class names"
            )
        if self.min_bands is not None and (
            type(self.min_bands) is not int or not 1 <= self.min_bands <= len(self.bands)
        ):
            raise ModelPackageError(
                f"min_bands must be an integer in [1, {len(self.bands)}], got {self.min_bands!r}"
            )
        for what, value in (("provenance", self.provenance), ("metrics", self.metrics)):
            if not isinstance(value, dict):
                raise ModelPackageError(f"{what} must be a mapping, got {type(value).__name__}")

    def usable_bands(self, available: Sequence[str]) -> list[str]:
        """The classifier's bands that ``available`` has, in its order.

        Raises
        ------
        MissingBandError
            If a band is missing and the classifier needs all of them, or fewer than ``min_bands`` remain.
        """
        present = [band for band in self.bands if band in available]
        missing = [band for band in self.bands if band not in available]
        needed = len(self.bands) if self.min_bands is None else self.min_bands
        if len(present) < needed:
            rule = "all of its bands" if self.min_bands is None else f"at least {self.min_bands} of its bands"
            raise MissingBandError(
                f"morphology model {self.name!r} needs band(s) {missing} ({rule} {self.bands}); the data "
                f"have {list(available)}"
            )
        return present

    @property
    def channel_names(self) -> list[str]:
        """Names of the input planes."""
        return self.cutout.channel_names(self.bands)

    def build_model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The classifier with its weights, in eval mode.

        Raises
        ------
        ModelPackageError
            If the weights do not fit the described classifier.
        """
        model = build_classifier(self.classifier)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelPackageError(
                f"the weights do not fit the classifier {self.classifier}: {exc}"
            ) from None
        return model.to(device).eval()

    def metadata_dict(self) -> dict[str, Any]:
        """Plain data of ``metadata.yaml``."""
        return {
            "name": self.name,
            "version": self.version,
            "bands": list(self.bands),
            "class_names": list(self.class_names),
            "cutout": self.cutout.to_dict(),
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
            "package_version": self.package_version,
            **({} if self.min_bands is None else {"min_bands": self.min_bands}),
        }

    def summary(self) -> str:
        """Human-readable description."""
        lines = [
            f"morphology package {self.name!r} version {self.version}",
            f"  classifier: {self.classifier}",
            f"  bands: {' '.join(self.bands)} (+ no_data, object_mask)"
            + ("" if self.min_bands is None else f"; runs on any {self.min_bands} or more of them"),
            f"  classes: {' '.join(self.class_names)}",
            f"  cutouts: {self.cutout.to_dict()}",
        ]
        lines += [f"  {key}: {value}" for key, value in sorted(self.metrics.items())]
        return "\n".join(lines)

    # ------------------------------------------------------------------ writing

    def _members(self) -> dict[str, bytes]:
        return package_members(
            self.classifier,
            self.metadata_dict(),
            self.state_dict,
            _FORMAT_VERSION,
            format_name=MORPHOLOGY_FORMAT_NAME,
        )

    def content_digest(self) -> str:
        """SHA-256 of the manifest, which hashes every member."""
        return sha256(self._members()[MANIFEST_MEMBER])

    def to_bytes(self) -> bytes:
        """The package file as bytes (deterministic)."""
        buffer = io.BytesIO()
        write_package(buffer, self._members())
        return buffer.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the package file atomically (name ending in ``.zip``)."""
        return write_package_file(path, self._members())

    # ------------------------------------------------------------------ reading

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, limits: PackageLimits = DEFAULT_LIMITS
    ) -> MorphologyPackage:
        """Read and verify a package file (`ModelPackageError` on anything wrong)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no morphology package file at {path}")
        with path.open("rb") as stream:
            return cls._read(stream, str(path), limits)

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: PackageLimits = DEFAULT_LIMITS) -> MorphologyPackage:
        """Inverse of `to_bytes`, with the checks of `load`."""
        return cls._read(io.BytesIO(bytes(data)), "<bytes>", limits)

    @classmethod
    def _read(cls, stream: BinaryIO, source: str, limits: PackageLimits) -> MorphologyPackage:
        members = read_package(stream, source, limits, format_name=MORPHOLOGY_FORMAT_NAME)
        try:
            return cls._from_members(members)
        except ModelPackageError as exc:
            raise ModelPackageError(f"morphology package {source}: {exc}") from None

    @classmethod
    def _from_members(cls, members: Mapping[str, Any]) -> MorphologyPackage:
        metadata = members[METADATA_MEMBER]
        if not isinstance(metadata, dict):
            raise ModelPackageError(f"{METADATA_MEMBER} must be a mapping")
        missing = sorted(_METADATA_KEYS - set(metadata))
        unknown = sorted(set(metadata) - _METADATA_KEYS - _OPTIONAL_KEYS)
        if missing or unknown:
            raise ModelPackageError(f"{METADATA_MEMBER}: missing keys {missing}, unknown keys {unknown}")
        cutout = metadata["cutout"]
        if not isinstance(cutout, dict):
            raise ModelPackageError(f"{METADATA_MEMBER}: cutout must be a mapping")
        try:
            cutout_config = CutoutConfig.from_dict(cutout)
        except (CutoutError, TypeError) as exc:
            raise ModelPackageError(f"{METADATA_MEMBER}: cutout: {exc}") from None
        return cls(
            name=metadata["name"],
            version=str(metadata["version"]),
            classifier=members[MODEL_MEMBER],
            state_dict=members[WEIGHTS_MEMBER],
            bands=metadata["bands"],
            class_names=metadata["class_names"],
            cutout=cutout_config,
            provenance=metadata["provenance"],
            metrics=metadata["metrics"],
            package_version=str(metadata["package_version"]),
            min_bands=metadata.get("min_bands"),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MorphologyPackage):
            return NotImplemented
        return self.content_digest() == other.content_digest()

    __hash__ = None  # type: ignore[assignment]


def class_index(class_names: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Index of every label in ``class_names``; `ModelPackageError` naming unknown labels."""
    lookup = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({label for label in labels if label not in lookup})
    if unknown:
        raise ModelPackageError(f"labels {unknown} are not among the classes {list(class_names)}")
    return [lookup[label] for label in labels]
