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

"""Model configurations as data: a safe, allowlist-based ``_target_`` instantiation.

detectron2's LazyConfig describes a model as nested dicts in which ``{"_target_": "a.b.C", **kwargs}`` means
"call ``a.b.C(**kwargs)``".  Loaded naively (``LazyConfig.load`` of a ``.py`` file, ``locate`` of any
string), such a config can run arbitrary code.  Here a config is *plain data* (dicts, lists, strings,
numbers, booleans, ``None``) and every ``_target_`` must name one of an explicit allowlist of callables:
the detectron2 modeling classes the DeepDISC family uses, a few ``torch.nn`` normalisation and activation
classes, and this package's own heads.  Anything else raises `UnsafeConfigError` naming the refused target,
*before* anything is imported or called.

Directives understood inside a ``_target_`` dict:

``_target_``
    Dotted name of an allowlisted callable (any of its public import paths, e.g.
    ``detectron2.modeling.FPN`` or ``detectron2.modeling.backbone.fpn.FPN``).
``_partial_``
    If true, return ``functools.partial(target, **kwargs)`` instead of calling it (Hydra's convention);
    this is how a layer *factory* such as ``norm_layer=partial(nn.LayerNorm, eps=1e-6)`` is written as data.
``_args_``
    Optional list of positional arguments.

Values may also be OmegaConf-style interpolations of a whole value, ``"${..num_classes}"`` (relative:
one dot is the dict holding the key, each further dot one level up) or ``"${model.x.y}"`` (absolute);
`resolve_interpolations` replaces them by copies of what they point to.  Resolver calls
(``"${oc.env:HOME}"``) are refused.

`load_yaml_data` reads YAML with a subclass of the package's safe loader (`..safe_yaml.SafeYamlLoader`,
which also refuses duplicate keys) that turns the Python tags written by
``LazyConfig.save`` (``!!python/name:``, ``!!python/object:``, ``!!python/object/apply:``,
``!!python/tuple``) into the inert directive dicts above instead of constructing objects.
"""

from __future__ import annotations

__all__ = [
    "ALLOWED_TARGETS",
    "UnsafeConfigError",
    "check_plain_data",
    "is_allowed_target",
    "load_yaml_data",
    "register_safe_target",
    "resolve_interpolations",
    "resolve_target",
    "safe_instantiate",
    "target_name",
    "validate_targets",
]

import functools
import importlib
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml

from ..safe_yaml import SafeYamlLoader, load_yaml

TARGET_KEY = "_target_"
PARTIAL_KEY = "_partial_"
ARGS_KEY = "_args_"
_DIRECTIVES = frozenset({TARGET_KEY, PARTIAL_KEY, ARGS_KEY})
# Hydra/OmegaConf directives that would change how a config is interpreted; refused rather than ignored.
_UNSUPPORTED_DIRECTIVE = re.compile(r"^_[a-z]+_$")


class UnsafeConfigError(ValueError):
    """A model configuration asks for something that is not plain data or not on the allowlist."""


# (module, qualified name) of every callable a config may name.  Modules are imported only from this
# fixed list, never from a string found in a config.
_D2 = "detectron2.modeling"
ALLOWED_TARGETS: tuple[tuple[str, str], ...] = (
    (f"{_D2}.meta_arch.rcnn", "GeneralizedRCNN"),
    (f"{_D2}.backbone.fpn", "FPN"),
    (f"{_D2}.backbone.fpn", "LastLevelMaxPool"),
    (f"{_D2}.backbone.fpn", "LastLevelP6P7"),
    (f"{_D2}.backbone.resnet", "ResNet"),
    (f"{_D2}.backbone.resnet", "ResNet.make_default_stages"),
    (f"{_D2}.backbone.resnet", "ResNet.make_stage"),
    (f"{_D2}.backbone.resnet", "BasicStem"),
    (f"{_D2}.backbone.resnet", "BasicBlock"),
    (f"{_D2}.backbone.resnet", "BottleneckBlock"),
    (f"{_D2}.backbone.resnet", "DeformBottleneckBlock"),
    (f"{_D2}.backbone.mvit", "MViT"),
    (f"{_D2}.backbone.swin", "SwinTransformer"),
    (f"{_D2}.backbone.vit", "ViT"),
    (f"{_D2}.backbone.vit", "SimpleFeaturePyramid"),
    (f"{_D2}.proposal_generator.rpn", "RPN"),
    (f"{_D2}.proposal_generator.rpn", "StandardRPNHead"),
    (f"{_D2}.proposal_generator.rrpn", "RRPN"),
    (f"{_D2}.anchor_generator", "DefaultAnchorGenerator"),
    (f"{_D2}.anchor_generator", "RotatedAnchorGenerator"),
    (f"{_D2}.matcher", "Matcher"),
    (f"{_D2}.box_regression", "Box2BoxTransform"),
    (f"{_D2}.box_regression", "Box2BoxTransformRotated"),
    (f"{_D2}.poolers", "ROIPooler"),
    (f"{_D2}.roi_heads.roi_heads", "StandardROIHeads"),
    (f"{_D2}.roi_heads.cascade_rcnn", "CascadeROIHeads"),
    (f"{_D2}.roi_heads.rotated_fast_rcnn", "RROIHeads"),
    (f"{_D2}.roi_heads.fast_rcnn", "FastRCNNOutputLayers"),
    (f"{_D2}.roi_heads.box_head", "FastRCNNConvFCHead"),
    (f"{_D2}.roi_heads.mask_head", "MaskRCNNConvUpsampleHead"),
    ("detectron2.layers.shape_spec", "ShapeSpec"),
    ("detectron2.layers.batch_norm", "FrozenBatchNorm2d"),
    ("torch.nn.modules.normalization", "LayerNorm"),
    ("torch.nn.modules.normalization", "GroupNorm"),
    ("torch.nn.modules.batchnorm", "BatchNorm2d"),
    ("torch.nn.modules.batchnorm", "SyncBatchNorm"),
    ("torch.nn.modules.activation", "GELU"),
    ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.activation", "SiLU"),
    ("torch.nn.modules.activation", "LeakyReLU"),
    ("torch.nn.modules.linear", "Identity"),
    ("lsst.meas.extensions.deepdisc.core.models.roi_heads", "DeepDISCStandardROIHeads"),
    ("lsst.meas.extensions.deepdisc.core.models.roi_heads", "DeepDISCCascadeROIHeads"),
)


def _getattr_path(obj: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _AllowList:
    """Alias name -> allowed callable, built on first use (it imports detectron2 and torch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Any] | None = None
        self._extra: list[tuple[str, str]] = []

    def _aliases(self, module_name: str, qualname: str) -> Iterator[tuple[str, Any]]:
        module = importlib.import_module(module_name)
        obj = _getattr_path(module, qualname)
        head = qualname.split(".")[0]
        head_obj = getattr(module, head)
        parts = module_name.split(".")
        # Every package on the way that re-exports the same object gives a valid spelling, which is what
        # detectron2's LazyConfig.save writes (the shortest importable path).  Only modules that are
        # already imported are consulted: a name is never imported because a config mentions it.
        for stop in range(1, len(parts) + 1):
            prefix = ".".join(parts[:stop])
            package = sys.modules.get(prefix)
            if package is not None and getattr(package, head, None) is head_obj:
                yield f"{prefix}.{qualname}", obj

    def names(self) -> dict[str, Any]:
        with self._lock:
            if self._by_name is None:
                by_name: dict[str, Any] = {}
                for module_name, qualname in (*ALLOWED_TARGETS, *self._extra):
                    by_name.update(self._aliases(module_name, qualname))
                self._by_name = by_name
            return self._by_name

    def add(self, module_name: str, qualname: str) -> None:
        with self._lock:
            self._extra.append((module_name, qualname))
            self._by_name = None


_ALLOWLIST = _AllowList()


def register_safe_target(obj: Callable[..., Any]) -> Callable[..., Any]:
    """Add a callable to the allowlist (usable as a class decorator).

    Only code can extend the allowlist; a configuration never can.
    """
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or not qualname or "<" in qualname:
        raise TypeError(f"{obj!r} is not an importable module-level callable")
    _ALLOWLIST.add(module_name, qualname)
    return obj


def is_allowed_target(name: str) -> bool:
    """Whether ``name`` spells an allowlisted callable."""
    return isinstance(name, str) and name in _ALLOWLIST.names()


def resolve_target(name: Any) -> Any:
    """The allowlisted callable spelled ``name``.

    Raises
    ------
    UnsafeConfigError
        If ``name`` is not a string or not on the allowlist.
    """
    if not isinstance(name, str):
        raise UnsafeConfigError(f"_target_ must be a dotted name (a string), got {type(name).__name__}")
    try:
        return _ALLOWLIST.names()[name]
    except KeyError:
        raise UnsafeConfigError(
            f"refused _target_ {name!r}: it is not on the allowlist of model-building callables "
            "(see lsst.meas.extensions.deepdisc.core.models.safe_config.ALLOWED_TARGETS)"
        ) from None


def target_name(obj: Any) -> str:
    """Canonical dotted name (``module.qualname``) of an allowlisted callable."""
    if not any(allowed is obj or allowed == obj for allowed in _ALLOWLIST.names().values()):
        raise UnsafeConfigError(f"{obj!r} is not on the allowlist of model-building callables")
    return f"{obj.__module__}.{obj.__qualname__}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def check_plain_data(tree: Any, path: str = "") -> None:
    """Raise `UnsafeConfigError` unless ``tree`` is made of dicts, lists, strings, numbers, bools, None."""
    if tree is None or isinstance(tree, bool | int | float | str):
        return
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{path or 'config'}: key {key!r} is not a string")
            check_plain_data(value, _join(path, key))
        return
    if isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            check_plain_data(value, _join(path, index))
        return
    raise UnsafeConfigError(
        f"{path or 'config'}: a value of type {type(tree).__name__} is not plain data; "
        "configs may hold only dicts, lists, strings, numbers, booleans and None"
    )


def _check_directives(node: Mapping[str, Any], path: str) -> None:
    for key in node:
        if key not in _DIRECTIVES and _UNSUPPORTED_DIRECTIVE.match(key):
            raise UnsafeConfigError(f"{path or 'config'}: unsupported directive {key!r}")
    if ARGS_KEY in node and not isinstance(node[ARGS_KEY], list | tuple):
        raise UnsafeConfigError(f"{path or 'config'}: {ARGS_KEY} must be a list")


def validate_targets(tree: Any, path: str = "") -> None:
    """Check, without calling anything, that ``tree`` is plain data whose every ``_target_`` is allowed."""
    check_plain_data(tree, path)
    _validate(tree, path)


def _validate(tree: Any, path: str) -> None:
    if isinstance(tree, Mapping):
        if TARGET_KEY in tree:
            _check_directives(tree, path)
            resolve_target(tree[TARGET_KEY])
        for key, value in tree.items():
            if key != TARGET_KEY:
                _validate(value, _join(path, key))
    elif isinstance(tree, list | tuple):
        for index, value in enumerate(tree):
            _validate(value, _join(path, index))


def safe_instantiate(tree: Any, path: str = "") -> Any:
    """Build the objects a plain-data config describes, calling only allowlisted callables.

    The whole tree is validated first, so a refused target anywhere (however deeply nested) raises
    `UnsafeConfigError` before any constructor runs.  Dicts without ``_target_`` become dicts, lists
    stay lists, scalars are returned as they are.
    """
    validate_targets(tree, path)
    return _instantiate(tree, path)


def _instantiate(tree: Any, path: str) -> Any:
    if isinstance(tree, Mapping):
        if TARGET_KEY not in tree:
            return {key: _instantiate(value, _join(path, key)) for key, value in tree.items()}
        target = resolve_target(tree[TARGET_KEY])
        positional = tree.get(ARGS_KEY, ())
        args = [_instantiate(value, _join(path, f"{ARGS_KEY}.{i}")) for i, value in enumerate(positional)]
        kwargs = {
            key: _instantiate(val, _join(path, key)) for key, val in tree.items() if key not in _DIRECTIVES
        }
        if tree.get(PARTIAL_KEY, False):
            return functools.partial(target, *args, **kwargs)
        try:
            return target(*args, **kwargs)
        except Exception as exc:
            raise ValueError(f"could not build {path or 'config'} ({tree[TARGET_KEY]}): {exc}") from exc
    if isinstance(tree, list | tuple):
        return [_instantiate(value, _join(path, index)) for index, value in enumerate(tree)]
    return tree


_INTERPOLATION = re.compile(r"^\$\{([^${}]*)\}$")
_MAX_INTERPOLATION_HOPS = 64


def resolve_interpolations(tree: Any, only: str | None = None) -> Any:
    """Return a copy of ``tree`` with every ``"${path}"`` value replaced by (a copy of) its target.

    Paths follow OmegaConf: ``${a.b}`` is absolute from ``tree``; ``${.a}`` is a sibling key, each extra
    leading dot climbs one container (lists count as containers); list items are numeric segments.
    With ``only``, just ``tree[only]`` is resolved and returned (absolute paths still start at ``tree``),
    so that unrelated sections of a full LazyConfig (data loaders, optimiser) are never looked at.

    Raises
    ------
    UnsafeConfigError
        For a resolver call such as ``${oc.env:HOME}``.
    ValueError
        For an interpolation that does not resolve, a cycle, or one embedded inside a longer string.
    """

    def lookup(stack: list[Any], expr: str, hops: int) -> tuple[Any, list[Any]]:
        if ":" in expr:
            raise UnsafeConfigError(f"refused interpolation ${{{expr}}}: resolvers are not allowed")
        if hops > _MAX_INTERPOLATION_HOPS:
            raise ValueError(f"interpolation ${{{expr}}} is circular")
        stripped = expr.lstrip(".")
        dots = len(expr) - len(stripped)
        if dots > len(stack):
            raise ValueError(f"interpolation ${{{expr}}} climbs above the top of the config")
        node_stack = stack[:1] if dots == 0 else stack[: len(stack) - dots + 1]
        node = node_stack[-1]
        for segment in stripped.split(".") if stripped else []:
            if isinstance(node, Mapping) and segment in node:
                node = node[segment]
            elif isinstance(node, list | tuple) and segment.isdigit() and int(segment) < len(node):
                node = node[int(segment)]
            else:
                raise ValueError(f"interpolation ${{{expr}}} does not resolve (no {segment!r})")
            node_stack.append(node)
        return node, node_stack[:-1]

    def resolve(value: Any, stack: list[Any], hops: int) -> Any:
        if isinstance(value, str) and "${" in value:
            match = _INTERPOLATION.match(value)
            if match is None:
                if ":" in value:
                    raise UnsafeConfigError(f"refused interpolation {value!r}: resolvers are not allowed")
                raise ValueError(f"only whole-value interpolations such as '${{a.b}}' work, not {value!r}")
            target, target_stack = lookup(stack, match.group(1).strip(), hops)
            return resolve(target, target_stack, hops + 1)
        if isinstance(value, Mapping):
            return {key: resolve(item, [*stack, value], hops) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [resolve(item, [*stack, value], hops) for item in value]
        return value

    if only is None:
        return resolve(tree, [], 0)
    return resolve(tree[only], [tree], 0)


class _DirectiveLoader(SafeYamlLoader):
    """`.safe_yaml.SafeYamlLoader` mapping LazyConfig.save's Python tags to inert directive dicts."""

    allow_aliases = True  # LazyConfig.save writes anchors for objects referenced twice.


def _python_name(loader: _DirectiveLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    # `!!python/name:torch.nn.LayerNorm ''` is a reference to a callable: a partial with no arguments.
    return {TARGET_KEY: suffix, PARTIAL_KEY: True}


def _python_object(loader: _DirectiveLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    # `!!python/object:pkg.Cls {field: value}` (dataclasses such as ShapeSpec): a call with keywords.
    state = loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else {}
    return {TARGET_KEY: suffix, **state}


def _python_apply(loader: _DirectiveLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.SequenceNode):
        spec: dict[str, Any] = {"args": loader.construct_sequence(node, deep=True)}
    else:
        spec = loader.construct_mapping(node, deep=True)
    if suffix == "functools.partial":
        # partial.__reduce__ state: [func, args, keywords, __dict__]; func arrives as a name directive.
        state = spec.get("state") or [*(spec.get("args") or []), (), {}, None]
        func, args, keywords = state[0], list(state[1] or ()), dict(state[2] or {})
        if not isinstance(func, Mapping) or TARGET_KEY not in func:
            raise UnsafeConfigError("refused functools.partial of something that is not a named callable")
        out = {TARGET_KEY: func[TARGET_KEY], PARTIAL_KEY: True, **keywords}
        if args:
            out[ARGS_KEY] = args
        return out
    if spec.get("state") or spec.get("listitems") or spec.get("dictitems"):
        raise UnsafeConfigError(f"refused !!python/object/apply:{suffix}: object state cannot be restored")
    out = {TARGET_KEY: suffix, **dict(spec.get("kwds") or {})}
    if spec.get("args"):
        out[ARGS_KEY] = list(spec["args"])
    return out


def _python_tuple(loader: _DirectiveLoader, node: yaml.Node) -> list[Any]:
    return loader.construct_sequence(node, deep=True)


def _python_str(loader: _DirectiveLoader, node: yaml.Node) -> str:
    return loader.construct_scalar(node)


def _refuse(loader: _DirectiveLoader, suffix: str, node: yaml.Node) -> Any:
    raise UnsafeConfigError(f"refused YAML tag {node.tag!r}")


_DirectiveLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", _python_name)
_DirectiveLoader.add_multi_constructor("tag:yaml.org,2002:python/object:", _python_object)
_DirectiveLoader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", _python_apply)
_DirectiveLoader.add_multi_constructor("tag:yaml.org,2002:python/object/new:", _python_apply)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/tuple", _python_tuple)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/str", _python_str)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/unicode", _python_str)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/int", yaml.SafeLoader.construct_yaml_int)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/long", yaml.SafeLoader.construct_yaml_int)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/float", yaml.SafeLoader.construct_yaml_float)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/bool", yaml.SafeLoader.construct_yaml_bool)
_DirectiveLoader.add_constructor("tag:yaml.org,2002:python/none", yaml.SafeLoader.construct_yaml_null)
_DirectiveLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse)
_DirectiveLoader.add_multi_constructor("!", _refuse)


def load_yaml_data(text: str, *, python_tags: bool = False) -> Any:
    """Parse YAML text into plain data.

    Parameters
    ----------
    text : `str`
        The YAML document.
    python_tags : `bool`
        If false, plain data only (`..safe_yaml.load_yaml`, aliases accepted).  If true, also accept the
        Python tags written by detectron2's ``LazyConfig.save`` and turn them into directive dicts (see the
        module docstring); the referenced names are *not* resolved here - that happens against the
        allowlist when the config is built.

    Raises
    ------
    UnsafeConfigError
        For a tag that cannot be represented as data.
    """
    try:
        if not python_tags:
            return load_yaml(text, allow_aliases=True)
        return yaml.load(text, Loader=_DirectiveLoader)  # A SafeLoader subclass: constructs no objects.
    except yaml.constructor.ConstructorError as exc:
        raise UnsafeConfigError(f"YAML holds something that is not data: {exc}") from exc
