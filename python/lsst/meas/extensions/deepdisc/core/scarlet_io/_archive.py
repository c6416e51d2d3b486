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

"""Reading and writing ``.scarlet`` zip archives (and the pre-2025 single-document layout)."""

from __future__ import annotations

__all__ = ["read_scarlet_models", "scarlet_models_to_bytes", "write_scarlet_models"]

import io
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

from .._zipfiles import member_problem, read_member, write_zip
from ._data import (
    HierarchicalBlendData,
    IsolatedSourceData,
    ScarletBlendData,
    ScarletModelData,
    _blend_from_dict,
)
from ._encoding import _MAX_MEMBER_BYTES, _PRE_SCHEMA, _ZIP_MAGIC, ScarletFormatError, decode_metadata


def _parse_member(name: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScarletFormatError(f"member {name!r} of the scarlet archive is not valid JSON: {err}") from None


def _read_checked(archive: zipfile.ZipFile, name: str) -> bytes:
    """One member, refused before decompression if its entry is unsafe or too large."""
    info = archive.getinfo(name)
    # No ratio check: long runs of zeros in model arrays legitimately deflate by hundreds.
    problem = member_problem(info, max_bytes=_MAX_MEMBER_BYTES, max_compression_ratio=None)
    if problem:
        raise ScarletFormatError(f"scarlet archive {problem}")
    return read_member(archive, info)


def _model_from_zip(archive: zipfile.ZipFile, blend_ids: Iterable[int] | None) -> ScarletModelData:
    names = archive.namelist()
    if blend_ids is None:
        wanted = [n for n in names if n not in ("metadata", "version", "psf", "psf_shape")]
    else:
        wanted = [str(int(b)) for b in blend_ids]
        missing = [n for n in wanted if n not in names]
        if missing:
            raise KeyError(f"blend/source id(s) {missing} are not in this scarlet archive")
    if "metadata" in names:
        metadata = _parse_member("metadata", _read_checked(archive, "metadata"))
    elif "psf" in names:
        # Legacy zip archives stored the model PSF as two members.
        metadata = {
            "model_psf": _parse_member("psf", _read_checked(archive, "psf")),
            "model_psf_shape": _parse_member("psf_shape", _read_checked(archive, "psf_shape")),
            "array_keys": ["model_psf"],
        }
    else:
        metadata = None
    version = (
        _parse_member("version", _read_checked(archive, "version")) if "version" in names else _PRE_SCHEMA
    )
    blends: dict[int, HierarchicalBlendData | ScarletBlendData] = {}
    isolated: dict[int, IsolatedSourceData] = {}
    for name in wanted:
        try:
            key = int(name)
        except ValueError:
            raise ScarletFormatError(f"unexpected member {name!r} in scarlet archive") from None
        value = _parse_member(name, _read_checked(archive, name))
        if not isinstance(value, Mapping):
            raise ScarletFormatError(f"member {name!r} is not a JSON object")
        if "blend_type" in value:
            blends[key] = _blend_from_dict(value)
        elif value.get("source_type") == "isolated":
            isolated[key] = IsolatedSourceData.from_dict(value)
        else:
            raise ScarletFormatError(f"member {name!r} is neither a blend nor an isolated source")
    return ScarletModelData(
        blends=blends, isolated=isolated, metadata=decode_metadata(metadata), version=str(version)
    )


def read_scarlet_models(
    source: str | os.PathLike[str] | bytes | BinaryIO, blend_ids: Iterable[int] | None = None
) -> ScarletModelData:
    """Read a scarlet model archive (zip of JSON members) or a pre-2025 single JSON document.

    Parameters
    ----------
    source : `str`, `os.PathLike`, `bytes` or binary file object
        Path, raw bytes or an open binary stream.
    blend_ids : iterable of `int`, optional
        Only read these parent blend / isolated source ids (zip archives only).

    Returns
    -------
    data : `ScarletModelData`
        The models.

    Raises
    ------
    ScarletFormatError
        If the content is neither layout or is malformed.
    KeyError
        If a requested id is not in the archive.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            payload = stream.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        payload = bytes(source)
    else:
        payload = source.read()
    if payload[:4] == _ZIP_MAGIC or payload[:4] == b"PK\x05\x06":
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                return _model_from_zip(archive, blend_ids)
        except zipfile.BadZipFile as err:
            raise ScarletFormatError(f"corrupt scarlet model archive: {err}") from None
    stripped = payload.lstrip()
    if not stripped.startswith(b"{"):
        raise ScarletFormatError("not a scarlet model archive: neither a zip file nor a JSON document")
    data = ScarletModelData.from_dict(_parse_member("<document>", payload))
    if blend_ids is not None:
        keep = {int(b) for b in blend_ids}
        missing = keep - set(data.blends) - set(data.isolated)
        if missing:
            raise KeyError(f"blend/source id(s) {sorted(missing)} are not in this scarlet model file")
        data.blends = {k: v for k, v in data.blends.items() if k in keep}
        data.isolated = {k: v for k, v in data.isolated.items() if k in keep}
    return data


def scarlet_models_to_bytes(data: ScarletModelData, compress: bool = True, compact: bool = True) -> bytes:
    """Serialise to the bytes of a ``.scarlet`` zip archive (upstream layout, reproducible bytes).

    Parameters
    ----------
    data : `ScarletModelData`
        The models.
    compress : `bool`
        Deflate the members (upstream stores them uncompressed; zip readers, upstream's included, read both).
    compact : `bool`
        Shortest exact float text (see `ScarletModelData.zip_members`); `False` writes upstream's text.
    """
    buffer = io.BytesIO()
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    # Level 1 keeps ~90% of the size gain of the default level 6 for a fifth of the time.
    write_zip(buffer, data.zip_members(compact=compact), compression=compression, compresslevel=1)
    return buffer.getvalue()


def write_scarlet_models(
    data: ScarletModelData,
    path: str | os.PathLike[str] | BinaryIO,
    compress: bool = True,
    compact: bool = True,
) -> None:
    """Write a ``.scarlet`` zip archive to a path or a binary stream (see `scarlet_models_to_bytes`)."""
    payload = scarlet_models_to_bytes(data, compress=compress, compact=compact)
    if isinstance(path, (str, os.PathLike)):
        with open(path, "wb") as stream:
            stream.write(payload)
    else:
        path.write(payload)


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------
