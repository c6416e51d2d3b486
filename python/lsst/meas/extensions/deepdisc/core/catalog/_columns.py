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

"""The detection catalog's columns, units and class helpers."""

from __future__ import annotations

__all__ = ["APPORTION_RULE", "catalog_columns", "is_artifact_class"]

from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np

from ..artifacts import ARTIFACT_CLASS_PREFIX

APPORTION_RULE = (
    "pixel flux split among the covering footprints in proportion to each source's positive footprint flux "
    "in the detection image (sum of bands); equal shares if all such weights are zero"
)

FLUX_UNIT = u.nJy

"""Class names starting with this prefix are image artifacts, not sources (the model-package contract)."""


def is_artifact_class(class_names: Sequence[str] | str) -> np.ndarray | bool:
    """Whether class names are artifact classes (they start with `ARTIFACT_CLASS_PREFIX`).

    Returns a `bool` for one name, else a boolean array with one value per name.
    """
    if isinstance(class_names, str):
        return class_names.startswith(ARTIFACT_CLASS_PREFIX)
    return np.array([str(name).startswith(ARTIFACT_CLASS_PREFIX) for name in class_names], dtype=bool)


def catalog_columns(bands: Sequence[str], class_names: Sequence[str]) -> list[tuple[str, Any, Any, str]]:
    """The schema of a detection catalog: ``(name, dtype, unit, description)`` per column, in order.

    Quantities carry units (ratios are dimensionless); identifiers, counts, flags and labels have none.
    """
    columns: list[tuple[str, Any, Any, str]] = [
        ("id", np.int64, None, "Unique source id packed from (tract, patch, counter)"),
        (
            "parent",
            np.int64,
            None,
            "Id of the family head for other members of a family; else 0",
        ),
        ("nChild", np.int32, None, "Number of other members in the family of a family head; 0 otherwise"),
        ("family_id", np.int64, None, "Id of the family head (the source's own id when isolated)"),
        ("family_size", np.int32, None, "Number of detections in the family (footprint-overlap component)"),
        ("coord_ra", np.float64, u.deg, "Right ascension of the centroid (image WCS)"),
        ("coord_dec", np.float64, u.deg, "Declination of the centroid (image WCS)"),
        (
            "centroid_x",
            np.float64,
            u.pix,
            "Detection-image flux-weighted centroid x, parent coordinates",
        ),
        (
            "centroid_y",
            np.float64,
            u.pix,
            "Detection-image flux-weighted centroid y, parent coordinates",
        ),
        ("bbox_x0", np.int32, u.pix, "Footprint bounding box minimum x (inclusive), parent coordinates"),
        ("bbox_y0", np.int32, u.pix, "Footprint bounding box minimum y (inclusive), parent coordinates"),
        ("bbox_x1", np.int32, u.pix, "Footprint bounding box maximum x (inclusive), parent coordinates"),
        ("bbox_y1", np.int32, u.pix, "Footprint bounding box maximum y (inclusive), parent coordinates"),
        (
            "box_x0",
            np.float64,
            u.pix,
            "Model box left edge (XYXY: pixel i spans [i, i+1)), parent coords",
        ),
        ("box_y0", np.float64, u.pix, "Model box bottom edge (XYXY), parent coordinates"),
        ("box_x1", np.float64, u.pix, "Model box right edge (XYXY, exclusive), parent coordinates"),
        ("box_y1", np.float64, u.pix, "Model box top edge (XYXY, exclusive), parent coordinates"),
        ("footprint", object, None, "Footprint spans flattened as [y, x_begin, x_end(inclusive), ...]"),
        ("footprint_area", np.int32, u.pix, "Number of pixels in the footprint"),
        ("score", np.float32, u.dimensionless_unscaled, "Model detection score"),
        ("class_id", np.int32, None, "Predicted class index"),
        ("class_name", str, None, "Predicted class name"),
        (
            "is_artifact",
            bool,
            None,
            f"The detection is an image artifact (class name starting with {ARTIFACT_CLASS_PREFIX!r}), not a "
            "source: never primary, in no family",
        ),
    ]
    for name in class_names:
        columns.append(
            (f"prob_{name}", np.float32, u.dimensionless_unscaled, f"Model probability of class {name!r}")
        )
    for band in bands:
        columns += [
            (f"{band}_footprintFlux", np.float64, FLUX_UNIT, f"Sum of the {band} image over the footprint"),
            (
                f"{band}_footprintFluxErr",
                np.float64,
                FLUX_UNIT,
                f"Uncertainty of {band}_footprintFlux from the {band} variance plane",
            ),
            (
                f"{band}_apportionedFlux",
                np.float64,
                FLUX_UNIT,
                f"{band} footprint flux with pixels shared with overlapping sources apportioned by weight",
            ),
            (
                f"{band}_psfFlux",
                np.float64,
                FLUX_UNIT,
                f"{band} flux of a Gaussian PSF of the band's FWHM fitted at the refined centroid (linear, "
                "NO_DATA pixels left out); NaN without a PSF FWHM or with under half the PSF on valid pixels",
            ),
            (f"{band}_psfFluxErr", np.float64, FLUX_UNIT, f"Uncertainty of {band}_psfFlux"),
            (
                f"{band}_psfExcess",
                np.float64,
                FLUX_UNIT,
                f"{band} flux of a twice-wider Gaussian filter (normalised to a point source) minus "
                f"{band}_psfFlux: near zero for a point source, larger for extended light",
            ),
            (f"{band}_psfExcessErr", np.float64, FLUX_UNIT, f"Uncertainty of {band}_psfExcess"),
        ]
    columns += [
        (
            "star_galaxy_prob",
            np.float32,
            u.dimensionless_unscaled,
            "Star probability of the package's star-galaxy classifier (PSF-matched excess, colours, the "
            "network's log-odds); class_id/class_name of star and galaxy rows follow it; NaN where it was "
            "not run (artifact rows, a package without one, missing bands)",
        ),
        (
            "reliability",
            np.float32,
            u.dimensionless_unscaled,
            "Probability of a real source from the package's reliability classifier (PSF-matched S/N, "
            "colours, the network's score); the catalog keeps rows at or above its threshold; NaN where it "
            "was not run (artifact rows, a package without one, missing bands)",
        ),
        (
            "detection_snr",
            np.float32,
            u.dimensionless_unscaled,
            "Signal-to-noise ratio of the footprint: inverse-variance weighted mean of the band footprint "
            "fluxes over its error (a flat-spectrum detection S/N); NaN without usable variance",
        ),
        (
            "nodata_fraction",
            np.float32,
            u.dimensionless_unscaled,
            "Fraction of footprint pixels without data in any band",
        ),
        ("flag_nodata", bool, None, "Footprint has pixels without data (non-finite or NO_DATA) in some band"),
        ("flag_saturated", bool, None, "Footprint has a saturated pixel in some band"),
        (
            "flag_bad_variance",
            bool,
            None,
            "Footprint has valid pixels with zero, negative or non-finite variance in some band (left out "
            "of the flux errors; an error with no usable pixel is NaN)",
        ),
        ("flag_patch_edge", bool, None, "Footprint reaches within edge_margin pixels of the image border"),
        ("flag_merged_duplicate", bool, None, "A duplicate detection from an overlapping tile was merged in"),
        (
            "artifact_overlap_fraction",
            np.float32,
            u.dimensionless_unscaled,
            "Fraction of the footprint covered by artifact footprints (0 for artifact rows)",
        ),
        (
            "flag_in_artifact",
            bool,
            None,
            "Source whose artifact_overlap_fraction exceeds the artifact overlap threshold (never set on "
            "artifact rows)",
        ),
        (
            "detect_isPatchInner",
            bool,
            None,
            "Centroid lies in the patch's inner region (true for every row when the region is unknown)",
        ),
        (
            "detect_isTractInner",
            bool,
            None,
            "Centroid lies in the tract's inner region (true for every row when the region is unknown)",
        ),
        (
            "detect_isPrimary",
            bool,
            None,
            "detect_isPatchInner and detect_isTractInner and not is_artifact: the primary rows of all "
            "patches hold each source once",
        ),
        ("tile_index", np.int32, None, "Inference tile the detection was kept from"),
        ("tract", np.int64, None, "Tract id"),
        ("patch", np.int64, None, "Patch index within the tract"),
        ("model_name", str, None, "Name of the model that made the detection"),
        ("model_version", str, None, "Version of the model that made the detection"),
    ]
    return columns
