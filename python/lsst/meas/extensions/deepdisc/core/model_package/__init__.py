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

"""A trained model as one self-describing, safe file (dataset ``deepdisc_model``).

A `ModelPackage` holds everything inference needs - the model described as *data* (a plain config for the
model factory of `.models`, never code), the weights, the bands in the order the network expects them, the
contrast scaling, the pixel statistics, the class names - plus provenance.  On disk it is one zip file
(``*.deepdisc.zip`` or ``*.zip``) with exactly four members:

``manifest.yaml``
    Format name and version, and the size and SHA-256 of every other member.
``model.yaml``
    The model config, plain data for `.models.build_model` (only allowlisted ``_target_`` entries).
``metadata.yaml``
    Name, version, architecture, bands, scaling, pixel mean/std, class names, provenance, versions.
``weights.safetensors``
    The state dict in the safetensors format (a JSON header and raw tensor bytes).

Reading never executes anything from the file: there is no pickle (weights are safetensors, YAML is read
with a safe loader that also refuses aliases and duplicate keys) and the model config only names classes the
factory allowlists.  A corrupt or hostile file (unexpected or missing members, unsafe member paths, members
over the size cap or with suspicious compression ratios, hash mismatches, malformed YAML, an unknown format
version, a refused ``_target_``, weights that do not fit the model) raises `ModelPackageError` naming the
problem.  Writing is deterministic (fixed member order and timestamps), so equal content gives equal bytes.

Modules: ``_archive`` (the format: members, manifest, limits, guarded zip reading, weights encoding),
``_package`` (`ModelPackage`: validation, building the network, bands), ``_metadata`` (``metadata.yaml``),
``_fields`` (plain-data checks of the fields), ``_consistency`` (config, network and metadata agree; the
config is safe), ``_display`` (`ModelPackage.summary`).  Reading training
checkpoints (`~..checkpoints.load_checkpoint_state_dict`) belongs to `.checkpoints`.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_MEMBER",
    "METADATA_MEMBER",
    "MODEL_MEMBER",
    "PACKAGE_MEMBERS",
    "PACKAGE_SUFFIXES",
    "WEIGHTS_MEMBER",
    "BandMismatchError",
    "ModelPackage",
    "ModelPackageError",
    "PackageLimits",
    "declared_format",
    "set_score_threshold",
]

from ._archive import (
    DEFAULT_LIMITS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_MEMBER,
    METADATA_MEMBER,
    MODEL_MEMBER,
    PACKAGE_MEMBERS,
    PACKAGE_SUFFIXES,
    WEIGHTS_MEMBER,
    ModelPackageError,
    PackageLimits,
    declared_format,
)
from ._package import BandMismatchError, ModelPackage, set_score_threshold
