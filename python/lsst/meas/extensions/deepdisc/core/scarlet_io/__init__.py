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

"""Scarlet deblender model archives in Rubin's on-disk format, without scarlet_lite or afw.

The files written by ``meas_extensions_scarlet`` (dataset ``object_scarlet_models``, extension
``.scarlet``) are zip archives of JSON members:

``metadata``
    The model-level metadata, encoded like every metadata dict of the format: arrays become a flat list
    under their key plus ``<key>_shape`` and ``<key>_dtype`` entries, and an ``array_keys`` list names them.
    Holds ``model_psf`` (2-d), ``psf`` (``[C, h, w]``, the observed PSF per band) and ``bands``.
``version``
    The schema version of ``LsstScarletModelData`` (model type ``"lsst"``), ``"1.0.1"``.
``<parent id>``
    One member per parent blend: a ``HierarchicalBlendData`` dict (``blend_type`` ``"hierarchical"``)
    whose ``children`` map (deconvolved) blend ids to ``ScarletBlendData`` dicts (``blend_type``
    ``"blend"``, ``origin`` ``(y0, x0)``, ``shape``, ``sources``), and whose metadata holds the parent
    footprint as a boolean array ``spans`` over its bounding box and that box's ``origin`` ``(y0, x0)``.
    Sources hold components; a factorized component has ``origin``, ``shape``, ``peak`` ``(y, x)``,
    ``spectrum`` and a flattened ``morph``.
``<source id>``
    One member per isolated source (``source_type`` ``"isolated"``): a footprint mask ``span_array``
    (written as floats), its ``origin`` and the ``peak`` ``(y, x)``.

The classes below mirror upstream's data classes (same names, keys, key order, dtype strings, nesting
and versions) so that archives written here are readable by ``meas_extensions_scarlet`` and vice versa.
By default the writer differs from upstream's bytes in two lossless ways that make archives ~4x smaller:
floats are written with the nine significant digits that identify a float32 (upstream writes the 17-digit
repr of the double), and members are deflated (upstream stores them); ``compact=False, compress=False``
reproduces upstream's bytes exactly.
The pre-2025 layout, one JSON document holding ``blends`` (and, older still, a top-level ``psf`` and
``psfShape``), is read too.

Models live in the narrow *model* PSF space: a factorized component is ``spectrum[:, None, None] * morph``.
To compare with observed pixels each band must be convolved with the *difference kernel* that takes the
model PSF to that band's observed PSF, as scarlet does; `difference_kernel` computes it by regularised
Fourier division and `ModelRenderer` / `render_source_model` render sources in either space.

Modules: ``_encoding`` (versions, number and metadata encoding), ``_data`` (the data classes), ``_archive``
(zip archives), ``_render`` (PSF-space rendering).
"""

from __future__ import annotations

__all__ = [
    "LSST_MODEL_TYPE",
    "LSST_SCHEMA_VERSION",
    "SCARLET_LITE_SCHEMA_VERSION",
    "CubeComponentData",
    "FactorizedComponentData",
    "HierarchicalBlendData",
    "IsolatedSourceData",
    "ModelRenderer",
    "ScarletBlendData",
    "ScarletFormatError",
    "ScarletModelData",
    "ScarletSourceData",
    "decode_metadata",
    "difference_kernel",
    "encode_metadata",
    "read_scarlet_models",
    "render_source_model",
    "scarlet_models_to_bytes",
    "write_scarlet_models",
]

from ._archive import read_scarlet_models, scarlet_models_to_bytes, write_scarlet_models
from ._data import (
    CubeComponentData,
    FactorizedComponentData,
    HierarchicalBlendData,
    IsolatedSourceData,
    ScarletBlendData,
    ScarletModelData,
    ScarletSourceData,
)
from ._encoding import (
    LSST_MODEL_TYPE,
    LSST_SCHEMA_VERSION,
    SCARLET_LITE_SCHEMA_VERSION,
    ScarletFormatError,
    decode_metadata,
    encode_metadata,
)
from ._render import ModelRenderer, difference_kernel, render_source_model
