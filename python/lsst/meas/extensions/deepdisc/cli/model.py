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

"""The ``deepdisc-model`` command: create, inspect and ingest model packages.

``deepdisc-model create``
    Package a model from our architecture registry or from a detectron2/DeepDISC YAML config, with the
    weights of a checkpoint (safetensors, or a torch file read with ``weights_only=True``) or a reproducible
    random initialisation.
``deepdisc-model inspect``
    Verify a package and describe it (``--json`` for machines).
``deepdisc-model ingest``
    Put a package into a Butler repository as dataset ``deepdisc_model`` in ``pretrained_models/<name>``.
``deepdisc-model export``
    Write a package of a Butler collection (a training run) to a file.
``deepdisc-model star-galaxy``, ``deepdisc-model reliability``
    Write a new version of a detection package carrying a star-galaxy or a reliability classifier (or
    without one).

Run ``deepdisc-model <command> --help`` for the options; ``python -m lsst.meas.extensions.deepdisc.cli.model``
works too.
"""

from __future__ import annotations

__all__ = ["build_parser", "main"]

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..core.checkpoints import compare_state_dicts, load_checkpoint_state_dict
from ..core.model_package import PACKAGE_SUFFIXES, ModelPackage, ModelPackageError, declared_format
from ..core.models import list_architectures
from ..core.morphology import MORPHOLOGY_FORMAT_NAME, MorphologyPackage
from ..core.safe_yaml import load_yaml
from ..core.scaling import SCALINGS, ScalingSpec
from ..core.star_galaxy import (
    EnsembleClassifier,
    ReliabilityClassifier,
    StarGalaxyClassifier,
    StarGalaxyError,
)

PROGRAM = "deepdisc-model"


class CommandError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


def _key_value(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE``; the value is read as YAML (numbers, booleans, lists), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if not isinstance(value, str | int | float | bool | list) or value is None:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deepdisc-model``."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Create, inspect and ingest DeepDISC model packages (safe, self-describing).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    create = commands.add_parser(
        "create",
        help="package a model (architecture or detectron2 config + checkpoint or random init)",
        description="Package a model as one safe zip file (config as data, safetensors weights, metadata).",
    )
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--architecture", metavar="NAME", help=f"an architecture of ours: {', '.join(list_architectures())}"
    )
    source.add_argument(
        "--detectron2-config",
        metavar="FILE.yaml",
        type=Path,
        help="a detectron2/DeepDISC config as YAML (a .py LazyConfig must be saved as YAML first)",
    )
    create.add_argument("--bands", nargs="+", required=True, help="bands in network input order, e.g. g r i")
    create.add_argument("--classes", nargs="+", default=["star", "galaxy"], help="class names (star galaxy)")
    create.add_argument(
        "--scaling", default="lupton", help=f"contrast scaling, one of {', '.join(SCALINGS)} (lupton)"
    )
    create.add_argument(
        "--scaling-param",
        nargs="+",
        action="extend",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="parameters of the scaling, e.g. Q=10 stretch=0.5",
    )
    create.add_argument(
        "--invalid-plane",
        nargs="+",
        action="extend",
        default=None,
        metavar="PLANE",
        help="mask planes whose pixels are invalid for the scaling (NO_DATA)",
    )
    create.add_argument(
        "--override",
        nargs="+",
        action="extend",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for --architecture, e.g. MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.3",
    )
    create.add_argument("--pixel-mean", nargs="+", type=float, help="per-band mean the network subtracts")
    create.add_argument("--pixel-std", nargs="+", type=float, help="per-band std the network divides by")
    weights = create.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="weights: .safetensors or a torch .pth/.pt file"
    )
    weights.add_argument("--random-init", action="store_true", help="reproducible random weights (tests)")
    create.add_argument("--seed", type=int, default=0, help="seed of --random-init (0)")
    create.add_argument("--name", required=True, help="package name (collection pretrained_models/<name>)")
    create.add_argument("--version", default="1.0", help="version of this trained model (1.0)")
    create.add_argument("--output", required=True, type=Path, metavar="PKG.zip", help="output file")
    create.add_argument("--force", action="store_true", help="overwrite an existing output file")
    create.add_argument("--training-data", help="provenance: what the model was trained on")
    create.add_argument(
        "--training-collection", nargs="+", action="extend", default=[], help="provenance: Butler collections"
    )
    create.add_argument("--iterations", type=int, help="provenance: training iterations")
    create.add_argument(
        "--metric",
        nargs="+",
        action="extend",
        type=_key_value,
        default=[],
        metavar="NAME=VALUE",
        help="provenance: validation metrics, e.g. AP=41.2",
    )
    create.set_defaults(handler=_create)

    inspect = commands.add_parser("inspect", help="verify and describe a package")
    inspect.add_argument("package", type=Path, metavar="PKG.zip")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    _add_check_model_options(inspect)
    inspect.set_defaults(handler=_inspect)

    ingest = commands.add_parser("ingest", help="put a package into a Butler repository")
    ingest.add_argument("repo", help="Butler repository (path, URI or label)")
    ingest.add_argument("package", type=Path, metavar="PKG.zip")
    ingest.add_argument("--name", help="collection pretrained_models/<name> (default: the package's name)")
    ingest.add_argument(
        "--replace", action="store_true", help="replace a different package already in that collection"
    )
    _add_check_model_options(ingest)
    ingest.set_defaults(handler=_ingest)

    export = commands.add_parser(
        "export", help="write a deepdisc_model from a Butler collection (e.g. a training run) to a file"
    )
    export.add_argument("repo", help="Butler repository (path, URI or label)")
    export.add_argument("collection", help="collection holding the deepdisc_model dataset")
    export.add_argument("--output", type=Path, required=True, metavar="PKG.zip")
    export.add_argument(
        "--half",
        action="store_true",
        help="store float32 weights as float16 (half the size; the model computes in float32 after loading)",
    )
    export.add_argument("--force", action="store_true", help="overwrite an existing output file")
    export.add_argument(
        "--morphology", action="store_true", help="export the deepdisc_morphology_model of the collection"
    )
    export.set_defaults(handler=_export)

    for kind in _CLASSIFIER_KINDS.values():
        _add_classifier_command(commands, kind)
    return parser


@dataclasses.dataclass(frozen=True)
class _ClassifierKind:
    """A second-stage classifier that a subcommand puts into a package."""

    command: str
    what: str
    cls: type[EnsembleClassifier]
    dataset_type: str
    field: str
    pipeline: str


_CLASSIFIER_KINDS = {
    kind.command: kind
    for kind in (
        _ClassifierKind(
            "star-galaxy",
            "star-galaxy classifier",
            StarGalaxyClassifier,
            "deepdisc_star_galaxy_classifier",
            "star_galaxy",
            "pipelines/DeepDiscStarGalaxy.yaml",
        ),
        _ClassifierKind(
            "reliability",
            "reliability classifier",
            ReliabilityClassifier,
            "deepdisc_reliability_classifier",
            "reliability",
            "pipelines/DeepDiscReliability.yaml",
        ),
    )
}


def _add_classifier_command(commands: Any, kind: _ClassifierKind) -> None:
    """The ``star-galaxy`` or ``reliability`` subcommand."""
    command = commands.add_parser(
        kind.command,
        help=f"put a trained {kind.what} into a detection package (a new version)",
        description=f"Write a copy of a detection package that carries a {kind.what} ({kind.pipeline} "
        "trains one), from a Butler collection or a YAML file.",
    )
    command.add_argument("package", type=Path, metavar="PKG.zip", help="the detection package")
    origin = command.add_mutually_exclusive_group(required=True)
    origin.add_argument(
        "--collection",
        nargs="+",
        help=f"collections holding {kind.dataset_type} (with --repo), in order of preference",
    )
    origin.add_argument(
        "--classifier",
        type=Path,
        nargs="+",
        metavar="FILE.yaml",
        help="classifiers as YAML, in order of preference",
    )
    origin.add_argument("--remove", action="store_true", help="write the package without a classifier")
    command.add_argument("--repo", help="Butler repository of --collection")
    command.add_argument("--version", required=True, help="version of the package written")
    command.add_argument("--output", type=Path, required=True, metavar="PKG.zip")
    command.add_argument("--force", action="store_true", help="overwrite an existing output file")
    command.set_defaults(handler=_put_classifiers, kind=kind)


def _add_check_model_options(command: argparse.ArgumentParser) -> None:
    """``--check-model`` (the default) / ``--no-check-model`` of ``inspect`` and ``ingest``."""
    command.add_argument(
        "--check-model",
        dest="check_model",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="build the model on the CPU (nothing is downloaded) and check that the weights fit it exactly "
        "(default); --no-check-model skips this for speed",
    )


def _check_model(package: ModelPackage | MorphologyPackage) -> None:
    """Build the package's model and load its weights strictly (`ModelPackageError` names what is wrong)."""
    package.build_model("cpu")


def load_any_package(path: Path) -> ModelPackage | MorphologyPackage:
    """A detection package, or a morphology package when its manifest says so (same checks either way)."""
    if not path.is_file():
        raise FileNotFoundError(f"no model package file at {path}")
    with path.open("rb") as stream:
        kind = declared_format(stream, str(path))
    return (MorphologyPackage if kind == MORPHOLOGY_FORMAT_NAME else ModelPackage).load(path)


def _read_detectron2_config(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Our plain config from a user's detectron2/DeepDISC YAML config (never a .py file)."""
    if path.suffix == ".py":
        raise CommandError(
            f"{path} is a Python LazyConfig, i.e. code, which is not executed here. In your environment run "
            f"`from detectron2.config import LazyConfig; LazyConfig.save(LazyConfig.load({str(path)!r}), "
            f"{path.with_suffix('.yaml').name!r})` and pass the YAML file"
        )
    if path.suffix not in (".yaml", ".yml"):
        raise CommandError(f"--detectron2-config takes a .yaml file, got {path}")
    if not path.is_file():
        raise CommandError(f"no detectron2 config file at {path}")
    from ..core.models import config_from_detectron2_yaml

    try:
        return config_from_detectron2_yaml(
            path,
            bands=tuple(args.bands),
            class_names=tuple(args.classes),
            pixel_mean=args.pixel_mean,
            pixel_std=args.pixel_std,
        )
    except (TypeError, ValueError) as exc:  # UnsafeConfigError is a ValueError.
        raise ModelPackageError(f"cannot use detectron2 config {path}: {exc}") from None


def _create(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from ..core.models import ModelSpec, build_model, make_model_config

    output: Path = args.output
    if not output.name.endswith(PACKAGE_SUFFIXES):
        raise CommandError(f"--output must end with {' or '.join(PACKAGE_SUFFIXES)}, got {output}")
    if output.exists() and not args.force:
        raise CommandError(f"{output} exists; pass --force to overwrite it")
    invalid_planes = tuple(args.invalid_plane) if args.invalid_plane is not None else ("NO_DATA",)
    try:
        scaling = ScalingSpec(
            name=args.scaling, params=dict(args.scaling_param), invalid_planes=invalid_planes
        )
    except KeyError as exc:
        raise CommandError(str(exc).strip("\"'")) from None
    provenance: dict[str, Any] = {"command": shlex.join([PROGRAM, *argv])}

    spec_or_config: Any
    if args.architecture is not None:
        try:
            spec = ModelSpec(
                architecture=args.architecture,
                bands=tuple(args.bands),
                class_names=tuple(args.classes),
                pixel_mean=None if args.pixel_mean is None else tuple(args.pixel_mean),
                pixel_std=None if args.pixel_std is None else tuple(args.pixel_std),
                overrides=dict(args.override),
            )
            model_config = make_model_config(spec)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        spec_or_config = spec
    else:
        if args.override:
            raise CommandError("--override applies to --architecture; edit the detectron2 config instead")
        model_config = _read_detectron2_config(args.detectron2_config, args)
        spec_or_config = model_config
        provenance["detectron2_config"] = args.detectron2_config.name
        config_bytes = args.detectron2_config.read_bytes()
        provenance["detectron2_config_sha256"] = hashlib.sha256(config_bytes).hexdigest()

    # Read the checkpoint before the (slower) build, so that a refused file fails fast.
    weights, checkpoint_info = (None, {}) if args.random_init else load_checkpoint_state_dict(args.checkpoint)
    # Fork the RNG so that a seeded build neither depends on nor disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_model(model_config, device="cpu")
    if weights is None:
        provenance["random_init_seed"] = args.seed
    else:
        diff = compare_state_dicts(model.state_dict(), weights)
        if not diff.is_empty:
            raise ModelPackageError(f"checkpoint {args.checkpoint} does not fit the model: {diff.describe()}")
        model.load_state_dict(weights, strict=True)
        provenance.update(checkpoint_info)
    if args.iterations is not None:
        provenance["iterations"] = args.iterations
    if args.training_data:
        provenance["training_data"] = args.training_data
    if args.training_collection:
        provenance["training_collections"] = list(args.training_collection)
    if args.metric:
        provenance["metrics"] = dict(args.metric)

    package = ModelPackage.from_model(
        model,
        spec_or_config,
        scaling,
        args.name,
        version=args.version,
        bands=tuple(args.bands),
        class_names=tuple(args.classes),
        pixel_mean=args.pixel_mean,
        pixel_std=args.pixel_std,
        provenance=provenance,
    )
    package.save(output)
    print(package.summary())
    print(f"wrote {output}")
    return 0


def _inspect(args: argparse.Namespace, argv: Sequence[str]) -> int:
    package = load_any_package(args.package)
    if args.check_model:
        _check_model(package)
    if args.json:
        if isinstance(package, MorphologyPackage):
            description = {"kind": "morphology", **package.metadata_dict(), "classifier": package.classifier}
        else:
            description = package.describe()
        description["file"] = str(args.package)
        if args.check_model:
            description["model_check"] = "weights load into the model built from model.yaml"
        print(json.dumps(description, indent=2))
    else:
        print(package.summary())
        if args.check_model:
            print("model check    : weights load into the model built from model.yaml")
    return 0


def _ingest(args: argparse.Namespace, argv: Sequence[str]) -> int:
    package = load_any_package(args.package)
    if args.check_model:
        _check_model(package)  # Before the repository is touched.
    from ..butler.config_path import ensure_butler_config_path
    from ..butler.model_formatter import ingest_model_package

    ensure_butler_config_path()
    from lsst.daf.butler import Butler

    with Butler.from_config(args.repo, writeable=True) as butler:
        result = ingest_model_package(butler, package, name=args.name, replace=args.replace)
    messages = {
        "ingested": "ingested",
        "replaced": "replaced the previous package with",
        "unchanged": "already present (same content), nothing to do:",
    }
    dataset_type = result.ref.datasetType.name
    print(f"{messages[result.status]} {package.name!r} as {dataset_type} in collection {result.run!r}")
    return 0


def half_precision_weights(package: ModelPackage) -> ModelPackage:
    """A copy of the package whose float32 weights are stored as float16 (recorded in the provenance)."""
    import torch

    state_dict = {
        key: tensor.to(torch.float16) if tensor.dtype == torch.float32 else tensor
        for key, tensor in package.state_dict.items()
    }
    provenance = {**package.provenance, "weights_stored_as": "float16 (exported with --half)"}
    return dataclasses.replace(package, state_dict=state_dict, provenance=provenance)


def _export(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..butler.config_path import ensure_butler_config_path
    from ..butler.model_formatter import MODEL_DATASET_TYPE, MORPHOLOGY_DATASET_TYPE

    if args.output.exists() and not args.force:
        raise CommandError(f"{args.output} exists; pass --force to overwrite it")
    if args.morphology and args.half:
        raise CommandError("--half applies to detection packages only")
    dataset_type = MORPHOLOGY_DATASET_TYPE if args.morphology else MODEL_DATASET_TYPE
    ensure_butler_config_path()
    from lsst.daf.butler import Butler

    with Butler.from_config(args.repo) as butler:
        refs = list(butler.query_datasets(dataset_type, collections=args.collection, explain=False))
        if not refs:
            raise CommandError(f"no {dataset_type} dataset in collection {args.collection!r}")
        package = butler.get(refs[0])
    if args.half:
        package = half_precision_weights(package)
    if args.force and args.output.exists():
        args.output.unlink()
    package.save(args.output)
    size = args.output.stat().st_size / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB): {package.name!r} version {package.version}")
    return 0


def _read_classifiers(args: argparse.Namespace) -> list[EnsembleClassifier]:
    """The classifiers that the command puts into the package, in order (none for ``--remove``)."""
    kind: _ClassifierKind = args.kind
    if args.remove:
        return []
    data = []
    if args.classifier is not None:
        for path in args.classifier:
            if not path.is_file():
                raise CommandError(f"no classifier file at {path}")
            data.append((str(path), load_yaml(path.read_bytes())))
    else:
        if not args.repo:
            raise CommandError("--collection needs --repo")
        from ..butler.config_path import ensure_butler_config_path

        ensure_butler_config_path()
        from lsst.daf.butler import Butler

        with Butler.from_config(args.repo) as butler:
            for collection in args.collection:
                refs = list(butler.query_datasets(kind.dataset_type, collections=collection, explain=False))
                if not refs:
                    raise CommandError(f"no {kind.dataset_type} dataset in collection {collection!r}")
                data.append((collection, butler.get(refs[0])))
    classifiers = []
    for origin, item in data:
        try:
            classifiers.append(kind.cls.from_dict(item))
        except StarGalaxyError as exc:
            raise ModelPackageError(f"{kind.what} from {origin}: {exc}") from None
    return classifiers


def _put_classifiers(args: argparse.Namespace, argv: Sequence[str]) -> int:
    kind: _ClassifierKind = args.kind
    if args.output.exists() and not args.force:
        raise CommandError(f"{args.output} exists; pass --force to overwrite it")
    package = ModelPackage.load(args.package)
    classifiers = _read_classifiers(args)
    provenance = dict(package.provenance)
    if classifiers:
        origins = (
            [str(p) for p in args.classifier]
            if args.classifier
            else [f"{args.repo} {c}" for c in args.collection]
        )
        provenance[f"{kind.field}_from"] = origins
    else:
        provenance.pop(f"{kind.field}_from", None)
    updated = dataclasses.replace(
        package, version=args.version, provenance=provenance, **{kind.field: tuple(classifiers) or None}
    )
    if args.force and args.output.exists():
        args.output.unlink()
    updated.save(args.output)
    if not classifiers:
        what = f"without a {kind.what}"
    else:
        what = f"with {kind.what}(s) " + "; ".join(
            f"on {' '.join(c.bands)} (any {c.min_bands}, threshold {c.threshold:g})" for c in classifiers
        )
    print(f"wrote {args.output}: {package.name!r} version {args.version} {what}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deepdisc-model``.

    Parameters
    ----------
    argv : `~collections.abc.Sequence` [`str`], optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    status : `int`
        0 on success, 1 for a refused or invalid package or checkpoint, 2 for a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args, argv)
    except CommandError as exc:
        print(f"{PROGRAM} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ModelPackageError, FileNotFoundError) as exc:
        print(f"{PROGRAM} {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
