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
"""A file cache of training examples, so that a re-run or a resumed training rebuilds nothing.

Cutting a labelled 1024 px patch into scaled tiles takes seconds; a training run over tens of patches
would spend minutes on it at every start.  `ExampleCache` keeps the examples of one patch in one ``.npz``
file named by a key that the caller derives from everything the examples depend on (the input datasets and
the example settings, see `cache_key`).  The format is plain arrays (``numpy.load(allow_pickle=False)``):

``images``
    ``[N, C, H, W]`` float32 (all tiles of a patch have one size), or one ``image_<i>`` array per example
    when their sizes differ.
``valid``
    ``[N, H, W]`` bool (or ``valid_<i>``); absent when no example has a valid map.
``spans``, ``span_counts``
    All instances' spans concatenated, and the number of spans of each instance.
``instances``
    ``[M, 4]`` float64: example index, class id, magnitude, blendedness; ``source_ids`` ``[M]`` int64.
``header``
    JSON: the example ids, bands and metadata.

Files are written to a temporary name and renamed, so an interrupted write never leaves a file that reads.
A file that fails to read is reported and rebuilt.
"""

from __future__ import annotations

__all__ = ["ExampleCache", "cache_key", "load_examples", "save_examples"]

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .training_data import InstanceLabel, TrainingExample

_LOG = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def cache_key(parts: Mapping[str, Any]) -> str:
    """24 hex digits of a hash of plain data (dataset ids, settings), independent of key order."""
    text = json.dumps({"format": CACHE_FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _stack_or_split(arrays: Sequence[np.ndarray], name: str) -> dict[str, np.ndarray]:
    if len({array.shape for array in arrays}) == 1:
        return {name: np.stack(arrays)}
    return {f"{name}_{index}": array for index, array in enumerate(arrays)}


def save_examples(path: str | os.PathLike[str], examples: Sequence[TrainingExample]) -> Path:
    """Write examples to ``path`` (``.npz``, atomically); see the module docstring for the format."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    if examples:
        arrays.update(_stack_or_split([example.image for example in examples], "images"))
        if any(example.valid is not None for example in examples):
            valid = [
                example.valid if example.valid is not None else np.ones(example.image.shape[1:], bool)
                for example in examples
            ]
            arrays.update(_stack_or_split(valid, "valid"))
    labels = [(index, label) for index, example in enumerate(examples) for label in example.instances]
    arrays["spans"] = (
        np.concatenate([label.spans for _, label in labels]) if labels else np.zeros((0, 3), np.int32)
    )
    arrays["span_counts"] = np.array([label.spans.shape[0] for _, label in labels], dtype=np.int64)
    arrays["instances"] = np.array(
        [[index, label.class_id, label.magnitude, label.blendedness] for index, label in labels],
        dtype=np.float64,
    ).reshape(-1, 4)
    arrays["source_ids"] = np.array([label.source_id for _, label in labels], dtype=np.int64)
    header = {
        "format": CACHE_FORMAT_VERSION,
        "examples": [
            {
                "id": example.example_id,
                "bands": list(example.bands),
                "metadata": example.metadata,
                "has_valid": example.valid is not None,
            }
            for example in examples
        ],
    }
    arrays["header"] = np.frombuffer(json.dumps(header, default=_plain).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_examples(path: str | os.PathLike[str]) -> list[TrainingExample]:
    """Read the examples written by `save_examples` (no pickle is ever loaded)."""
    with np.load(Path(path), allow_pickle=False) as data:
        header = json.loads(data["header"].tobytes().decode())
        if header.get("format") != CACHE_FORMAT_VERSION:
            raise ValueError(
                f"{path}: cache format {header.get('format')!r}, expected {CACHE_FORMAT_VERSION}"
            )
        entries = header["examples"]
        # Each access to an NpzFile member reads it again: read the stacked arrays once, and give every
        # example its own copy (a view would keep the whole stack alive as long as any example lives).
        stacked = {name: data[name] for name in ("images", "valid") if name in data.files}

        def array(name: str, index: int) -> np.ndarray:
            return stacked[name][index].copy() if name in stacked else data[f"{name}_{index}"]

        spans = data["spans"]
        offsets = np.concatenate([[0], np.cumsum(data["span_counts"])])
        instances = data["instances"]
        source_ids = data["source_ids"]
        per_example: list[list[InstanceLabel]] = [[] for _ in entries]
        for row, (index, class_id, magnitude, blendedness) in enumerate(instances):
            per_example[int(index)].append(
                InstanceLabel(
                    spans=spans[offsets[row] : offsets[row + 1]],
                    class_id=int(class_id),
                    source_id=int(source_ids[row]),
                    magnitude=float(magnitude),
                    blendedness=float(blendedness),
                )
            )
        return [
            TrainingExample(
                image=array("images", index),
                instances=per_example[index],
                example_id=entry["id"],
                bands=tuple(entry["bands"]),
                valid=array("valid", index) if entry["has_valid"] else None,
                metadata=entry["metadata"],
            )
            for index, entry in enumerate(entries)
        ]


class ExampleCache:
    """A directory of cached example files, one per key.

    Parameters
    ----------
    directory : `str` or `os.PathLike`
        Where the files live (created when the first one is written).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        """The file of ``key``."""
        return self.directory / f"examples_{key}.npz"

    def get_or_build(
        self,
        key: str,
        build: Callable[[], list[TrainingExample]],
        equivalent_keys: Sequence[str] = (),
    ) -> list[TrainingExample]:
        """The cached examples of ``key``, else ``build()``'s, written to the cache first.

        ``equivalent_keys`` are other keys whose examples are known to equal ``key``'s (for instance
        those built with a class list that ``key``'s extends, see the training task); a file under one
        of them is used when ``key`` has none.
        """
        for candidate in (key, *equivalent_keys):
            path = self.path(candidate)
            if not path.exists():
                continue
            try:
                examples = load_examples(path)
            except (OSError, ValueError, KeyError) as exc:
                _LOG.warning("Example cache file %s is unreadable (%s); rebuilding it", path, exc)
            else:
                self.hits += 1
                return examples
        path = self.path(key)
        examples = build()
        save_examples(path, examples)
        self.misses += 1
        return examples
