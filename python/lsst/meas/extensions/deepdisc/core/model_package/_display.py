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

"""What `ModelPackage.describe` and `ModelPackage.summary` show."""

from __future__ import annotations

__all__ = ["describe_package", "package_summary"]

from typing import TYPE_CHECKING, Any

from ._archive import FORMAT_NAME
from ._fields import _to_plain

if TYPE_CHECKING:
    from ._package import ModelPackage


def describe_package(package: ModelPackage) -> dict[str, Any]:
    """Plain-data description (metadata, weight statistics, content digest) for JSON output."""
    dtypes: dict[str, int] = {}
    for tensor in package.state_dict.values():
        dtype = str(tensor.dtype).removeprefix("torch.")
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    return {
        **_to_plain(package.metadata_dict(), "metadata"),
        "weights": {
            "tensors": len(package.state_dict),
            "values": package.n_parameters,
            "bytes": int(sum(t.numel() * t.element_size() for t in package.state_dict.values())),
            "dtypes": dtypes,
        },
        "content_sha256": package.content_digest(),
    }


def package_summary(package: ModelPackage) -> str:
    """Human-readable multi-line description."""
    info = describe_package(package)
    weights = info["weights"]
    dtypes = ", ".join(f"{dtype}: {count}" for dtype, count in weights["dtypes"].items())
    mean, std = _format_stats(package.pixel_mean), _format_stats(package.pixel_std)
    scaling = package.scaling
    params = ", ".join(f"{key}={value}" for key, value in scaling.params.items()) or "defaults"
    lines = [
        f"DeepDISC model package {package.name!r} version {package.version}",
        f"  architecture   : {package.architecture or '(not recorded)'}",
        f"  bands          : {' '.join(package.bands)} (network input order"
        + (")" if package.min_bands is None else f"; runs on any {package.min_bands} or more of them)"),
        f"  classes        : {', '.join(f'{i}={c}' for i, c in enumerate(package.class_names))}",
        f"  scaling        : {scaling.name} ({params}); invalid planes {list(scaling.invalid_planes)}",
        f"  pixel mean/std : {mean} / {std}",
        "  score threshold: "
        + ("(model config's)" if package.score_threshold is None else f"{package.score_threshold:g}")
        + (
            ""
            if not package.band_count_thresholds
            else " (with "
            + ", ".join(f"{n} bands: {t:g}" for n, t in sorted(package.band_count_thresholds.items()))
            + ")"
        ),
        *(
            []
            if package.artifact_binning is None
            else [
                f"  artifacts      : also found on the patch binned {package.artifact_binning}x"
                + (
                    ""
                    if package.artifact_score_threshold is None
                    else f" (score >= {package.artifact_score_threshold:g})"
                )
            ]
        ),
        *[
            f"  star/galaxy    : PSF-matched classifier on {' '.join(classifier.bands)}"
            + ("" if classifier.min_bands == len(classifier.bands) else f" (any {classifier.min_bands}+)")
            + f", star threshold {classifier.threshold:g}"
            + "".join(
                f", {key} {value}"
                for key, value in classifier.provenance.items()
                if key.startswith("validation_star_f1")
            )
            for classifier in package.star_galaxy or ()
        ],
        *[
            f"  reliability    : PSF-matched classifier on {' '.join(classifier.bands)}"
            + ("" if classifier.min_bands == len(classifier.bands) else f" (any {classifier.min_bands}+)")
            + f" of detections scoring >= {classifier.network_threshold:g}, keeps reliability >= "
            + f"{classifier.threshold:g}"
            + (
                ""
                if classifier.trust_score is None
                else f" or score >= {classifier.trust_score:g} at S/N >= {classifier.trust_snr:g}"
            )
            + "".join(
                f", {key} {value}"
                for key, value in classifier.provenance.items()
                if key.startswith("validation_")
            )
            for classifier in package.reliability or ()
        ],
        f"  weights        : {weights['tensors']} tensors, {weights['values']:,} values, "
        f"{weights['bytes'] / 2**20:.1f} MiB ({dtypes})",
        f"  format         : {FORMAT_NAME} v{package.format_version}, written by "
        f"meas_extensions_deepdisc {package.package_version}",
        f"  content sha256 : {info['content_sha256']}",
    ]
    if package.provenance:
        lines.append("  provenance     :")
        for key, value in package.provenance.items():
            lines.append(f"    {key}: {value}")
    return "\n".join(lines)


def _format_stats(values: tuple[float, ...] | None) -> str:
    return "(model default)" if values is None else "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
