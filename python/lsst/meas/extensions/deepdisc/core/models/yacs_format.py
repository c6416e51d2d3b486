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

"""detectron2 yacs (``CfgNode``) configurations handled as data.

detectron2's own ``CfgNode.merge_from_file`` falls back to ``yaml.unsafe_load`` and yacs can execute
``.py`` config files; neither is used here.  YAML files are read with `yaml.safe_load`, ``_BASE_`` chains
are followed by this module (only to other ``.yaml`` files), and the merged dict is applied to detectron2's
defaults with ``merge_from_other_cfg`` (which type-checks every key and refuses unknown ones).  A yacs
model only ever names registry entries (``MODEL.BACKBONE.NAME`` ...), never import paths.
"""

from __future__ import annotations

__all__ = [
    "BASE_KEY",
    "build_cfg",
    "cfg_to_data",
    "load_yacs_yaml",
    "merge_dotted",
    "merge_tree",
    "model_zoo_config_dir",
]

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .safe_config import UnsafeConfigError, load_yaml_data

if TYPE_CHECKING:
    from detectron2.config import CfgNode

BASE_KEY = "_BASE_"
_MAX_BASE_DEPTH = 16


def model_zoo_config_dir() -> Path:
    """Directory of the yacs/LazyConfig files shipped inside the installed detectron2 package."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("detectron2 is not installed; see bin/install-detectron2.sh")
    return Path(next(iter(spec.submodule_search_locations))) / "model_zoo" / "configs"


def _merge_nested(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge_nested(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_yacs_yaml(path: str | Path, search_dirs: Sequence[Path] = ()) -> dict[str, Any]:
    """Read a detectron2 yacs YAML file and everything it inherits through ``_BASE_``, as one dict.

    A ``_BASE_`` path is resolved relative to the file naming it, then in ``search_dirs`` (by default
    nothing; the factory passes detectron2's model-zoo config directory, so a copied model-zoo file that
    says ``_BASE_: "../Base-RCNN-FPN.yaml"`` still works).

    Raises
    ------
    UnsafeConfigError
        If a file in the chain is not YAML (e.g. a ``.py`` config, which would execute code).
    FileNotFoundError
        If a base cannot be found.
    """

    def load(file: Path, depth: int) -> dict[str, Any]:
        if depth > _MAX_BASE_DEPTH:
            raise ValueError(f"_BASE_ chain deeper than {_MAX_BASE_DEPTH} at {file} (circular?)")
        if file.suffix not in (".yaml", ".yml"):
            raise UnsafeConfigError(
                f"refused config {file}: only .yaml files are read (a .py config runs code)"
            )
        data = load_yaml_data(file.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{file} does not hold a mapping of config keys")
        base_name = data.get(BASE_KEY)
        data = {key: value for key, value in data.items() if key != BASE_KEY}
        if base_name is None:
            return data
        candidates = [file.parent / str(base_name)]
        candidates += [Path(directory) / str(base_name) for directory in search_dirs]
        candidates += [Path(directory) / Path(str(base_name)).name for directory in search_dirs]
        base_file = next((c.resolve() for c in candidates if c.is_file()), None)
        if base_file is None:
            raise FileNotFoundError(f"_BASE_ {base_name!r} of {file} not found (looked in {candidates})")
        return _merge_nested(load(base_file, depth + 1), data)

    return load(Path(path), 0)


def build_cfg(data: Mapping[str, Any]) -> CfgNode:
    """detectron2's default ``CfgNode`` with ``data`` (a nested dict of config keys) merged in.

    Raises
    ------
    ValueError
        For an unknown key or a value of the wrong type.
    """
    from detectron2.config import get_cfg

    cfg = get_cfg()
    merge_tree(cfg, data)
    return cfg


def merge_tree(cfg: CfgNode, data: Mapping[str, Any]) -> None:
    """Merge a nested dict of config keys into ``cfg`` (type-checked; unknown keys refused)."""
    from detectron2.config import CfgNode

    if BASE_KEY in data:
        raise ValueError(f"{BASE_KEY} must be resolved before merging (use load_yacs_yaml)")
    try:
        cfg.merge_from_other_cfg(CfgNode(_to_cfg_values(data)))
    except (KeyError, AssertionError, ValueError) as exc:
        raise ValueError(f"invalid detectron2 config: {exc}") from exc


def merge_dotted(cfg: CfgNode, overrides: Mapping[str, Any]) -> None:
    """Set ``{"MODEL.RPN.NMS_THRESH": 0.5, ...}`` on ``cfg`` (type-checked; unknown keys refused)."""
    for key, value in overrides.items():
        try:
            cfg.merge_from_list([key, _to_cfg_values(value)])
        except (KeyError, AssertionError, ValueError) as exc:
            raise ValueError(f"cannot set detectron2 config key {key!r} to {value!r}: {exc}") from exc


def _to_cfg_values(value: Any) -> Any:
    # yacs accepts tuples and lists; nested dicts become CfgNodes in the CfgNode constructor.
    if isinstance(value, Mapping):
        return {key: _to_cfg_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_cfg_values(item) for item in value]
    return value


def cfg_to_data(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ``CfgNode`` as plain nested dicts and lists (``yaml.safe_dump``-able: tuples become lists)."""

    def convert(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(key): convert(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [convert(item) for item in value]
        return value

    return convert(cfg)
