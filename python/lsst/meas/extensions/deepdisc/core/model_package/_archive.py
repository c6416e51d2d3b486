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

"""The on-disk format of a model package: members, manifest, limits, and guarded zip reading/writing.

Private to `.model_package`, which documents the format and re-exports the public names.
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
    "ModelPackageError",
    "PackageLimits",
    "declared_format",
    "file_sha256",
    "package_members",
    "read_package",
    "sha256",
    "write_package",
    "write_package_file",
]

import hashlib
import os
import re
import uuid
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import yaml

from .._zipfiles import member_problem, name_problem, read_member, write_zip
from ..safe_yaml import dump_yaml, load_yaml

FORMAT_NAME = "deepdisc-model-package"
"""Value of the ``format`` key of ``manifest.yaml``."""

FORMAT_VERSION = 1
"""On-disk format version written (and the only one read) by this code."""

PACKAGE_SUFFIXES = (".deepdisc.zip", ".zip")
"""File name endings accepted by `ModelPackage.save`."""

MANIFEST_MEMBER = "manifest.yaml"
MODEL_MEMBER = "model.yaml"
METADATA_MEMBER = "metadata.yaml"
WEIGHTS_MEMBER = "weights.safetensors"
PACKAGE_MEMBERS = (MANIFEST_MEMBER, MODEL_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER)
"""Every member of a package, in the order they are written."""

_HASHED_MEMBERS = (MODEL_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER)
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class ModelPackageError(ValueError):
    """A model package is corrupt, hostile, inconsistent or does not fit the data it is used with."""


@dataclass(frozen=True)
class PackageLimits:
    """Caps applied to a package *before* any member is decompressed.

    Parameters
    ----------
    max_yaml_bytes : `int`
        Largest uncompressed size of each YAML member.
    max_weights_bytes : `int`
        Largest uncompressed size of ``weights.safetensors``.
    max_compression_ratio : `float`
        Largest uncompressed/compressed size ratio of a member bigger than ``ratio_exempt_bytes``
        (zip-bomb guard; weights are stored uncompressed and YAML rarely compresses beyond 20).
    ratio_exempt_bytes : `int`
        Members up to this uncompressed size are not ratio-checked (they cannot hurt).
    """

    max_yaml_bytes: int = 16 * 2**20
    max_weights_bytes: int = 8 * 2**30
    max_compression_ratio: float = 200.0
    ratio_exempt_bytes: int = 2**20

    def cap_for(self, member: str) -> int:
        """Uncompressed-size cap of one member."""
        return self.max_weights_bytes if member == WEIGHTS_MEMBER else self.max_yaml_bytes


DEFAULT_LIMITS = PackageLimits()


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_member_yaml(data: bytes, member: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelPackageError(f"{member} is not UTF-8 text: {exc}") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ModelPackageError(f"{member} is not valid (safe) YAML: {exc}") from None
    except RecursionError:
        raise ModelPackageError(f"{member} is nested too deeply to be a model package member") from None


def _serialise_weights(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in state_dict.items():
        flat = tensor.detach().cpu().contiguous()
        storage = flat.untyped_storage()
        # safetensors refuses tensors sharing memory (tied weights, views): give those their own copy.
        if storage.data_ptr() in seen_storages or storage.nbytes() != flat.nbytes:
            flat = flat.clone()
        seen_storages.add(flat.untyped_storage().data_ptr())
        tensors[name] = flat
    return save(tensors, metadata={"format": "pt"})


def _deserialise_weights(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # The Rust parser raises its own error types.
        raise ModelPackageError(f"{WEIGHTS_MEMBER} is not a valid safetensors file: {exc}") from None


def package_members(
    model_config: Mapping[str, Any],
    metadata: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    format_version: int = FORMAT_VERSION,
    format_name: str = FORMAT_NAME,
) -> dict[str, bytes]:
    """The bytes of every member, manifest first (`PACKAGE_MEMBERS` order).

    Parameters
    ----------
    model_config, metadata : `~collections.abc.Mapping`
        Plain data of ``model.yaml`` and ``metadata.yaml``.
    state_dict : `~collections.abc.Mapping` [`str`, `torch.Tensor`]
        The weights.
    format_version : `int`
        Recorded in the manifest.
    format_name : `str`
        Recorded in the manifest: which kind of package this is (detection by default).

    Returns
    -------
    members : `dict` [`str`, `bytes`]
    """
    members = {
        MODEL_MEMBER: dump_yaml(dict(model_config)),
        METADATA_MEMBER: dump_yaml(dict(metadata)),
        WEIGHTS_MEMBER: _serialise_weights(state_dict),
    }
    manifest = {
        "format": format_name,
        "format_version": format_version,
        "members": {name: {"size": len(data), "sha256": sha256(data)} for name, data in members.items()},
    }
    return {MANIFEST_MEMBER: dump_yaml(manifest), **members}


def write_package(stream: BinaryIO, members: Mapping[str, bytes]) -> None:
    """Write `package_members` output as a deterministic zip file."""
    # Float weights barely compress; storing them keeps reads cheap and the ratio check exact.
    write_zip(
        stream,
        members,
        compression=lambda name: zipfile.ZIP_STORED if name == WEIGHTS_MEMBER else zipfile.ZIP_DEFLATED,
    )


def read_package(
    stream: BinaryIO, source: str, limits: PackageLimits = DEFAULT_LIMITS, format_name: str = FORMAT_NAME
) -> dict[str, Any]:
    """Read and verify the members of a package file.

    Parameters
    ----------
    stream : `typing.BinaryIO`
        The zip file.
    source : `str`
        Its name in error messages.
    limits : `PackageLimits`
        Size and compression caps.
    format_name : `str`
        The kind of package expected in the manifest (detection by default).

    Returns
    -------
    members : `dict` [`str`, `typing.Any`]
        ``"format_version"`` (of the manifest), the parsed ``model.yaml`` and ``metadata.yaml`` and the
        weights as a state dict, keyed by member name.

    Raises
    ------
    ModelPackageError
        If the file is not a valid package (the message starts with ``source``).
    """
    return _with_archive(stream, source, lambda archive: _read_members(archive, limits, format_name))


def declared_format(stream: BinaryIO, source: str, limits: PackageLimits = DEFAULT_LIMITS) -> Any:
    """The ``format`` the manifest of a package file declares (what kind of package it is).

    The zip structure is checked as `read_package` checks it; only the manifest is decompressed.

    Raises
    ------
    ModelPackageError
        If the file is not a readable package archive.
    """

    def read_format(archive: zipfile.ZipFile) -> Any:
        infos = _checked_infos(archive, limits)
        manifest = _load_member_yaml(read_member(archive, infos[MANIFEST_MEMBER]), "manifest")
        return manifest.get("format") if isinstance(manifest, dict) else None

    return _with_archive(stream, source, read_format)


def _with_archive(stream: BinaryIO, source: str, read: Callable[[zipfile.ZipFile], Any]) -> Any:
    """``read(archive)`` on the zip file, its failures as `ModelPackageError` naming ``source``."""
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ModelPackageError(
            f"{source} is not a readable zip archive ({exc}); a model package is the zip file written by "
            "ModelPackage.save or `deepdisc-model create`"
        ) from None
    with archive:
        try:
            return read(archive)
        except ModelPackageError as exc:
            raise ModelPackageError(f"model package {source}: {exc}") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, RuntimeError) as exc:
            # CRC errors, truncated or undecodable compressed data.
            raise ModelPackageError(f"model package {source} is corrupt: {exc}") from None


def _checked_infos(archive: zipfile.ZipFile, limits: PackageLimits) -> dict[str, zipfile.ZipInfo]:
    """Check the central directory before anything is decompressed."""
    infos = archive.infolist()
    if len(infos) > 4 * len(PACKAGE_MEMBERS):
        raise ModelPackageError(f"{len(infos)} members; a package has exactly {list(PACKAGE_MEMBERS)}")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        problem = name_problem(info.filename)
        if problem:
            raise ModelPackageError(f"member {info.filename!r} has {problem}; refused")
        if info.filename in by_name:
            raise ModelPackageError(f"member {info.filename!r} appears more than once")
        by_name[info.filename] = info
    unexpected = sorted(set(by_name) - set(PACKAGE_MEMBERS))
    if unexpected:
        raise ModelPackageError(
            f"unexpected member(s) {unexpected}; a package holds exactly {list(PACKAGE_MEMBERS)} "
            "(no pickles or code)"
        )
    missing = [name for name in PACKAGE_MEMBERS if name not in by_name]
    if missing:
        raise ModelPackageError(f"missing member(s) {missing}")
    for name, info in by_name.items():
        problem = member_problem(
            info,
            max_bytes=limits.cap_for(name),
            max_compression_ratio=limits.max_compression_ratio,
            ratio_exempt_bytes=limits.ratio_exempt_bytes,
        )
        if problem:
            raise ModelPackageError(problem)
    return by_name


def _read_members(archive: zipfile.ZipFile, limits: PackageLimits, format_name: str) -> dict[str, Any]:
    infos = _checked_infos(archive, limits)
    manifest = _parse_manifest(
        _load_member_yaml(read_member(archive, infos[MANIFEST_MEMBER]), "manifest"), format_name
    )
    raw: dict[str, bytes] = {}
    for name in _HASHED_MEMBERS:
        declared = manifest["members"][name]
        if infos[name].file_size != declared["size"]:
            raise ModelPackageError(
                f"member {name!r} holds {infos[name].file_size} bytes but the manifest declares "
                f"{declared['size']}"
            )
        data = read_member(archive, infos[name])
        digest = sha256(data)
        if digest != declared["sha256"]:
            raise ModelPackageError(
                f"sha256 mismatch for member {name!r}: manifest {declared['sha256']}, content {digest} "
                "(the file was modified or damaged)"
            )
        raw[name] = data
    return {
        "format_version": manifest["format_version"],
        MODEL_MEMBER: _load_member_yaml(raw[MODEL_MEMBER], MODEL_MEMBER),
        METADATA_MEMBER: _load_member_yaml(raw[METADATA_MEMBER], METADATA_MEMBER),
        WEIGHTS_MEMBER: _deserialise_weights(raw[WEIGHTS_MEMBER]),
    }


def _parse_manifest(manifest: Any, format_name: str) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise ModelPackageError(f"{MANIFEST_MEMBER} must be a mapping")
    unknown = sorted(set(manifest) - {"format", "format_version", "members"})
    if unknown:
        raise ModelPackageError(f"{MANIFEST_MEMBER} has unknown keys {unknown}")
    if manifest.get("format") != format_name:
        raise ModelPackageError(
            f"{MANIFEST_MEMBER} declares format {manifest.get('format')!r}, expected {format_name!r}"
        )
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        newer = type(version) is int and version > FORMAT_VERSION
        hint = "; upgrade meas_extensions_deepdisc to read it" if newer else ""
        raise ModelPackageError(
            f"format version {version!r} is not supported (this code reads version {FORMAT_VERSION}){hint}"
        )
    members = manifest.get("members")
    if not isinstance(members, dict) or sorted(members) != sorted(_HASHED_MEMBERS):
        listed = sorted(members) if isinstance(members, dict) else members
        raise ModelPackageError(
            f"{MANIFEST_MEMBER} must list exactly the members {list(_HASHED_MEMBERS)}, got {listed!r}"
        )
    for name, entry in members.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"size", "sha256"}
            or type(entry["size"]) is not int
            or entry["size"] < 0
            or not isinstance(entry["sha256"], str)
            or not _SHA256_PATTERN.match(entry["sha256"])
        ):
            raise ModelPackageError(
                f"{MANIFEST_MEMBER} entry for {name!r} must be "
                f"{{size: <bytes>, sha256: <64 hex digits>}}, got {entry!r}"
            )
    return manifest


def write_package_file(path: str | os.PathLike[str], members: Mapping[str, bytes]) -> Path:
    """Write a package file atomically (`write_package`); its name ends with one of `PACKAGE_SUFFIXES`."""
    path = Path(path)
    if not path.name.endswith(PACKAGE_SUFFIXES):
        raise ModelPackageError(f"a model package file name must end with {' or '.join(PACKAGE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling then a rename: readers never see a half-written package.  Opened with "xb" (not
    # tempfile) so that the file gets the usual umask-based permissions.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("xb") as stream:
            write_package(stream, members)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
