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
"""Model factory: DeepDISC-family detectron2 models for N-band coadds, with configurations as data.

See `~lsst.meas.extensions.deepdisc.core.models.factory` for the contract of the built models and
`~lsst.meas.extensions.deepdisc.core.models.safe_config` for what a configuration may contain.
Importing this package does not import detectron2; building a model does.
"""

__all__ = [
    "ARCHITECTURES",
    "CompiledExtensionMissingError",
    "ModelSpec",
    "UnsafeConfigError",
    "build_model",
    "build_model_from_spec",
    "config_from_detectron2_yaml",
    "has_compiled_extension",
    "list_architectures",
    "make_model_config",
]

from .compiled import CompiledExtensionMissingError, has_compiled_extension
from .detectron2_configs import config_from_detectron2_yaml
from .factory import (
    ARCHITECTURES,
    ModelSpec,
    build_model,
    build_model_from_spec,
    list_architectures,
    make_model_config,
)
from .safe_config import UnsafeConfigError
