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

"""A package's ``metadata.yaml``: its keys, writing it from a package and checking it when read."""

from __future__ import annotations

__all__ = ["checked_metadata", "package_metadata"]

from typing import TYPE_CHECKING, Any

from ._archive import METADATA_MEMBER, ModelPackageError

if TYPE_CHECKING:
    from ._package import ModelPackage

_METADATA_KEYS = (
    "name",
    "version",
    "architecture",
    "bands",
    "class_names",
    "scaling",
    "pixel_mean",
    "pixel_std",
    "provenance",
    "package_version",
    "format_version",
)
# Keys a package may carry (older packages lack them; they are written only when set).
_OPTIONAL_METADATA_KEYS = (
    "score_threshold",
    "min_bands",
    "band_count_thresholds",
    "artifact_binning",
    "artifact_score_threshold",
    "star_galaxy",
    "reliability",
)


def package_metadata(package: ModelPackage) -> dict[str, Any]:
    """The package's ``metadata.yaml`` as a dict (optional keys only when set)."""
    return {
        "name": package.name,
        "version": package.version,
        "architecture": package.architecture,
        "bands": list(package.bands),
        "class_names": list(package.class_names),
        "scaling": package.scaling.to_dict(),
        "pixel_mean": None if package.pixel_mean is None else list(package.pixel_mean),
        "pixel_std": None if package.pixel_std is None else list(package.pixel_std),
        "provenance": package.provenance,
        "package_version": package.package_version,
        "format_version": package.format_version,
        **({} if package.score_threshold is None else {"score_threshold": package.score_threshold}),
        **({} if package.min_bands is None else {"min_bands": package.min_bands}),
        **(
            {}
            if package.band_count_thresholds is None
            else {"band_count_thresholds": {str(n): t for n, t in package.band_count_thresholds.items()}}
        ),
        **({} if package.artifact_binning is None else {"artifact_binning": package.artifact_binning}),
        **(
            {}
            if package.artifact_score_threshold is None
            else {"artifact_score_threshold": package.artifact_score_threshold}
        ),
        **(
            {}
            if package.star_galaxy is None
            else {"star_galaxy": [classifier.to_dict() for classifier in package.star_galaxy]}
        ),
        **(
            {}
            if package.reliability is None
            else {"reliability": [classifier.to_dict() for classifier in package.reliability]}
        ),
    }


def checked_metadata(members: dict[str, Any]) -> dict[str, Any]:
    """The ``metadata.yaml`` member of a read package, with its keys and format version checked."""
    metadata = members[METADATA_MEMBER]
    if not isinstance(metadata, dict):
        raise ModelPackageError(f"{METADATA_MEMBER} must be a mapping")
    unknown = sorted(set(metadata) - set(_METADATA_KEYS) - set(_OPTIONAL_METADATA_KEYS))
    missing = [key for key in _METADATA_KEYS if key not in metadata]
    if unknown or missing:
        raise ModelPackageError(f"{METADATA_MEMBER} has unknown keys {unknown} / lacks keys {missing}")
    if metadata["format_version"] != members["format_version"]:
        raise ModelPackageError(
            f"{METADATA_MEMBER} format version {metadata['format_version']!r} differs from "
            f"the manifest's {members['format_version']!r}"
        )
    if not isinstance(metadata["scaling"], dict):
        raise ModelPackageError(f"scaling in {METADATA_MEMBER} must be a mapping")
    return metadata
