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

"""Image artifacts (ghosts, scattered light, rays and streaks): a pure-numpy generator and renderer.

The same code puts artifacts into the simulated coadds (``sim.artifacts``) and can inject them into training
tiles on the fly, so it only needs ``numpy`` and is fast on small crops (a few ms per artifact on a 320 px
tile; only the artifact's support is evaluated, long streaks row block by row block).

Classes
-------
`ARTIFACT_CLASSES` are the three classes of DeepGhostBusters (Tanoglidis et al. 2022, DES images), so that
their human annotations can be used as labels without relabelling:

``ghost_bright``
    Bright reflection ghosts: out-of-focus images of the pupil (discs, "donuts") at roughly 0.5-3 sigma of
    the per-pixel noise.
``ghost_faint``
    Faint ghosts (0.1-0.5 sigma per pixel) *and* diffuse scattered-light patches: DeepGhostBusters' "Faint"
    class holds both large faint reflections and diffuse scattered light, which are indistinguishable in
    shape and brightness at the patch scale, so the simulated ``scattered_patch`` artifacts belong to it.
``rays``
    Linear features: scattered-light rays from bright stars and straight streaks crossing the image
    (DeepGhostBusters' "Rays" are elongated scattered-light features; streaks share their morphology and
    what they do to a detector - long, thin, spurious detections - so they share the class).

Catalog and model class names prefix them with ``"artifact_"`` (`artifact_class_names`).

Geometry and units
------------------
An `Artifact` is defined in the pixel coordinates of the image it is drawn on (pixel centres at integer
coordinates; with ``xy0`` the image's pixel ``[0, 0]`` sits at parent coordinates ``xy0``).  Its brightness
is given per band in units of the image's per-pixel noise sigma (S/N per pixel), so it can be added to a
flux image (multiply by each band's noise sigma) or to an image already scaled to unit noise.  Profiles have
unit peak; ``surface_brightness`` (times the optional ``colour`` weights) is the peak per band.

Kinds and profiles:

``ghost_disc``
    Flat-topped elliptical disc of semi-major axis ``radius``, edges softened by a logistic of scale
    ``edge`` pixels.
``ghost_annulus``
    Flat-topped elliptical ring between ``inner_radius`` and ``radius`` (a "donut"), soft edges.
``scattered_patch``
    Elliptical Gaussian of standard deviation ``radius`` along the major axis.
``ray``
    A straight ray starting at ``(x, y)`` along ``angle``, of length ``length`` and Gaussian cross-section of
    FWHM ``width``; its brightness falls linearly to 30% at the far end.
``streak``
    A straight, uniform streak centred on ``(x, y)``, of length ``length`` and Gaussian cross-section of FWHM
    ``width``.

Masks
-----
The label mask of an artifact is its geometric support for discs and annuli (elliptical radius within
``[inner_radius, radius]``), and for the other kinds the pixels where the unit-peak profile reaches
``mask_fraction`` (default 0.25: within ~1.67 sigma of a scattered patch, ~0.7 FWHM either side of a ray's
axis).  Masks do not depend on the brightness, so a faint ghost is labelled as fully as a bright one.  Use
`artifact_spans` or the spans returned by `paint_artifacts` for the project's footprint spans
(`~.footprints`).

Limits: artifacts are not convolved with a PSF (their edges are softened instead), have no internal
structure (the spider shadows and asymmetric illumination of real ghosts) and no noise of their own; the
simulator adds their photon noise through the variance.
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT_CLASSES",
    "ARTIFACT_CLASS_PREFIX",
    "ARTIFACT_KINDS",
    "Artifact",
    "ArtifactConfig",
    "ArtifactStamp",
    "artifact_class_names",
    "artifact_spans",
    "draw_artifacts",
    "paint_artifacts",
    "render_artifact",
    "render_artifact_stamp",
]

from ._draw import ArtifactConfig, draw_artifacts
from ._model import (
    ARTIFACT_CLASS_PREFIX,
    ARTIFACT_CLASSES,
    ARTIFACT_KINDS,
    Artifact,
    ArtifactStamp,
    artifact_class_names,
)
from ._render import artifact_spans, paint_artifacts, render_artifact, render_artifact_stamp
