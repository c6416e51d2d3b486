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

"""Butler formatter for scarlet model archives (storage class ``ScarletModelArchive``).

Files are the zip archives of ``meas_extensions_scarlet`` (extension ``.scarlet``), read and written by
`..core.scarlet_io` without scarlet_lite or afw, so archives written by the Rubin pipelines can be read
here and the other way round.  Registered for the storage class in ``configs/datastores/fileDatastore.yaml``.
"""

from __future__ import annotations

__all__ = ["ScarletModelFormatter"]

from typing import Any, override

from lsst.daf.butler import FormatterV2

from ..core.scarlet_io import ScarletModelData, read_scarlet_models, scarlet_models_to_bytes


class ScarletModelFormatter(FormatterV2):
    """Read and write `~lsst.meas.extensions.deepdisc.core.scarlet_io.ScarletModelData` as ``.scarlet`` zips.

    Reads the pre-2025 single-JSON layout too (by content, whatever the extension).
    """

    default_extension = ".scarlet"
    supported_extensions = frozenset({".scarlet", ".json"})
    unsupported_parameters = None
    can_read_from_local_file = True

    @override
    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        # Docstring inherited.
        return read_scarlet_models(path)

    @override
    def to_bytes(self, in_memory_dataset: Any) -> bytes:
        # Docstring inherited.
        if not isinstance(in_memory_dataset, ScarletModelData):
            raise TypeError(
                f"ScarletModelFormatter writes ScarletModelData, not {type(in_memory_dataset).__name__}"
            )
        return scarlet_models_to_bytes(in_memory_dataset)
