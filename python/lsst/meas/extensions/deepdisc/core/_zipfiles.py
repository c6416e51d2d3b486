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

"""Deterministic zip writing and guarded zip reading, shared by every zip format of the package.

Writing (`write_zip`) fixes member order, timestamps and permissions, so equal content gives equal bytes
(and equal Butler checksums).  Reading checks each member's central-directory entry *before* anything is
decompressed (`member_problem`: unsafe names, encryption, unknown compression, an uncompressed size over a
cap, a suspicious compression ratio) and never trusts the declared size (`read_member`).
"""

from __future__ import annotations

__all__ = ["ZIP_EPOCH", "member_problem", "name_problem", "read_member", "write_zip"]

import re
import zipfile
from collections.abc import Callable, Mapping
from typing import BinaryIO

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
"""Timestamp of every member written (the earliest a zip file can record)."""


def write_zip(
    stream: BinaryIO,
    members: Mapping[str, bytes | str],
    *,
    compression: int | Callable[[str], int] = zipfile.ZIP_DEFLATED,
    compresslevel: int | None = None,
) -> None:
    """Write ``members`` as a reproducible zip archive.

    Parameters
    ----------
    stream : `typing.BinaryIO`
        Writable binary stream.
    members : `~collections.abc.Mapping` [`str`, `bytes` or `str`]
        Member name to content, written in this order (text as UTF-8).
    compression : `int` or callable
        ``zipfile.ZIP_STORED`` / ``ZIP_DEFLATED``, or a function of the member name giving one.
    compresslevel : `int`, optional
        Deflate level (`None`: zlib's default).
    """
    with zipfile.ZipFile(stream, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = compression(name) if callable(compression) else compression
            if compresslevel is not None:
                info._compresslevel = compresslevel  # Public as `compress_level` from Python 3.13.
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)


def name_problem(name: str) -> str | None:
    """Why a member name is unsafe (absolute, with directories, ``..``, empty or with a NUL), or `None`."""
    if not name or "\x00" in name:
        return "an empty or NUL-containing name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        return "a '..' (path traversal) component"
    if len(parts) > 1:
        return "a path with directories"
    return None


def member_problem(
    info: zipfile.ZipInfo,
    *,
    max_bytes: int,
    max_compression_ratio: float | None,
    ratio_exempt_bytes: int = 2**20,
) -> str | None:
    """Why a member must not be decompressed, from its central-directory entry alone, or `None`.

    Parameters
    ----------
    info : `zipfile.ZipInfo`
        The member's entry.
    max_bytes : `int`
        Largest uncompressed size accepted.
    max_compression_ratio : `float` or `None`
        Largest uncompressed/compressed size ratio of a member bigger than ``ratio_exempt_bytes``
        (zip-bomb guard); `None` skips the check.
    ratio_exempt_bytes : `int`
        Members up to this uncompressed size are not ratio-checked (they cannot hurt).

    Returns
    -------
    problem : `str` or `None`
        A phrase such as ``"member 'x' is encrypted"``.
    """
    name = info.filename
    path = name_problem(name)
    if path:
        return f"member {name!r} has {path}; refused"
    if info.flag_bits & 0x1:
        return f"member {name!r} is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"member {name!r} uses unsupported compression {info.compress_type}"
    if info.file_size > max_bytes:
        return f"member {name!r} declares {info.file_size} bytes uncompressed, over the cap of {max_bytes}"
    if (
        max_compression_ratio is not None
        and info.file_size > ratio_exempt_bytes
        and (info.compress_size == 0 or info.file_size / info.compress_size > max_compression_ratio)
    ):
        return (
            f"member {name!r} would expand {info.compress_size} bytes to {info.file_size} "
            f"(ratio over {max_compression_ratio:g}); refused as a possible zip bomb"
        )
    return None


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """Decompress one member, reading at most one byte more than it declares.

    Raises
    ------
    zipfile.BadZipFile
        If the member does not hold exactly its declared number of bytes.
    """
    with archive.open(info) as member:
        data = member.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise zipfile.BadZipFile(f"member {info.filename!r} does not have its declared size")
    return data
