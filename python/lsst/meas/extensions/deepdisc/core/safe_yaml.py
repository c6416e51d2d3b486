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

"""The one safe YAML reader and writer of the package: plain data only, never objects.

`load_yaml` parses with `SafeYamlLoader`, a `yaml.SafeLoader` subclass (it constructs no Python objects)
that also refuses duplicate mapping keys and, unless asked to accept them, aliases (whose expansion can be
exponential).  `dump_yaml` writes with a `yaml.SafeDumper` that never emits anchors or aliases, so that
what it writes is always readable by `load_yaml`.  The model package (`.model_package`) and the model
config reader (`.models.safe_config.load_yaml_data`, which adds the inert handling of ``LazyConfig.save``
Python tags on top of `SafeYamlLoader`) both use these.
"""

from __future__ import annotations

__all__ = ["PlainDumper", "SafeYamlLoader", "dump_yaml", "load_yaml"]

from typing import Any, ClassVar, override

import yaml


class SafeYamlLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys and, unless `allow_aliases`, aliases.

    Subclasses that read documents legitimately holding aliases (``LazyConfig.save`` output, hand-written
    configs with anchors) set ``allow_aliases = True``.
    """

    allow_aliases: ClassVar[bool] = False
    """Whether ``*alias`` references are accepted."""

    @override
    def compose_node(self, parent: Any, index: Any) -> Any:
        if not self.allow_aliases and self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not allowed here", event.start_mark
            )
        return super().compose_node(parent, index)

    @override
    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # An unhashable key: the base class reports it.
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


class _AliasTolerantLoader(SafeYamlLoader):
    allow_aliases = True


class PlainDumper(yaml.SafeDumper):
    """`yaml.SafeDumper` that never writes anchors/aliases (which `SafeYamlLoader` refuses)."""

    @override
    def ignore_aliases(self, data: Any) -> bool:
        return True


def load_yaml(text: str | bytes, *, allow_aliases: bool = False) -> Any:
    """Parse one YAML document into plain data (dicts, lists, strings, numbers, booleans, ``None``).

    Parameters
    ----------
    text : `str` or `bytes`
        The document (bytes are decoded by the YAML reader: UTF-8/16 with or without a BOM).
    allow_aliases : `bool`
        Accept ``&anchor`` / ``*alias`` references.

    Returns
    -------
    data : `typing.Any`
        The parsed document.

    Raises
    ------
    yaml.YAMLError
        For malformed YAML, a tag that is not plain data, a duplicate key or a refused alias.
    RecursionError
        For a document nested too deeply to parse.
    """
    loader = _AliasTolerantLoader if allow_aliases else SafeYamlLoader
    return yaml.load(text, Loader=loader)  # A SafeLoader subclass: plain data only.


def dump_yaml(data: Any) -> bytes:
    """UTF-8 YAML of plain ``data``: block style, keys in insertion order, no anchors (deterministic)."""
    text = yaml.dump(data, Dumper=PlainDumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.encode("utf-8")
