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

"""`ModelPackage`: a trained model's network description, weights, bands and scaling, checked on creation."""

from __future__ import annotations

__all__ = ["BandMismatchError", "ModelPackage", "set_score_threshold"]

import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from ...version import __version__
from ..scaling import ScalingSpec
from ..star_galaxy import ReliabilityClassifier, StarGalaxyClassifier
from ._archive import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MANIFEST_MEMBER,
    MODEL_MEMBER,
    WEIGHTS_MEMBER,
    ModelPackageError,
    PackageLimits,
    package_members,
    read_package,
    sha256,
    write_package,
    write_package_file,
)
from ._consistency import check_config_agrees, check_config_safety, check_model_consistency
from ._display import describe_package, package_summary
from ._fields import (
    _checked_band_count_thresholds,
    _checked_classifiers,
    _checked_min_bands,
    _float_tuple,
    _string_tuple,
    _tensors_identical,
    _to_plain,
    _utc_now,
)
from ._metadata import checked_metadata, package_metadata

if TYPE_CHECKING:
    from ..models import ModelSpec

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BandMismatchError(ModelPackageError):
    """The bands of the data do not provide every band the model was trained on."""


def set_score_threshold(model: torch.nn.Module, threshold: float) -> int:
    """Set the test score threshold of every box predictor of ``model``; returns how many were set.

    Raises
    ------
    ValueError
        If ``threshold`` is outside ``[0, 1]`` or the model has no box predictor with such a threshold.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"score threshold must be in [0, 1], got {threshold}")
    count = 0
    for module in model.modules():
        if hasattr(module, "test_score_thresh"):
            module.test_score_thresh = float(threshold)
            count += 1
    if not count:
        raise ValueError(f"{type(model).__name__} has no box predictor with a test score threshold")
    return count


@dataclass(eq=False)
class ModelPackage:
    """A trained detectron2 model with everything needed to run it safely on multi-band coadds.

    The pytype of the Butler storage class ``DeepDiscModelPackage`` (dataset ``deepdisc_model``).

    Parameters
    ----------
    name : `str`
        Short identifier, also used in the collection ``pretrained_models/<name>``
        (letters, digits, ``.``, ``_``, ``-``).
    version : `str`
        Version of this trained model (free form, e.g. ``"1.0"``).
    model_config : `dict`
        Plain-data model description for `.models.build_model`.
    state_dict : `dict` [`str`, `torch.Tensor`]
        The weights (kept on the CPU).
    bands : `tuple` [`str`, ...]
        The bands the network takes, in the order of its input channels.
    scaling : `.scaling.ScalingSpec`
        The contrast scaling applied to fluxes before the network.
    class_names : `tuple` [`str`, ...]
        Name of each class index.
    pixel_mean, pixel_std : `tuple` [`float`, ...] or `None`
        Per-band normalisation the network applies to the scaled image (one number per band).
    architecture : `str`
        Name of the architecture (a factory registry name, or where the config came from).
    provenance : `dict`
        Plain data: training data and collections, iterations, metrics, source checkpoint sha256,
        creation time (UTC), command line.
    score_threshold : `float` or `None`
        The operating point: the detection score threshold chosen on validation data when the model was
        trained (`None`: not recorded; the model config's own ``SCORE_THRESH_TEST`` applies).  The detection
        task uses it unless configured otherwise, and `build_model` can set any other.
    band_count_thresholds : `dict` [`int`, `float`] or `None`
        For a model with ``min_bands``: the operating point chosen on validation data with only that many of
        its bands present (fewer bands give lower scores); `score_threshold_for` picks it.
    min_bands : `int` or `None`
        For a model trained with band dropout (its config has ``band_availability``): the fewest of its
        bands it runs on (absent bands are given to it as NaN planes; see `network_input`).  `None` for
        any other model, which needs all of its bands.  Defaults to 1 for a band-availability model.
    artifact_binning : `int` or `None`
        For a model with artifact classes trained on binned examples too (`.binning`): the binning at
        which it finds the large, faint artifacts; the detection task runs it on the patch binned so for
        those classes.  `None`: artifacts are found on the unbinned patch only.
    artifact_score_threshold : `float` or `None`
        Score threshold of that binned artifact pass (`None`: the sources' operating point).
    star_galaxy : `tuple` [`~..star_galaxy.StarGalaxyClassifier`, ...] or `None`
        Second-stage star-galaxy classifiers (PSF-matched measurements, colours and the network's log-odds),
        trained on this network's detections, in order of preference (e.g. one for all bands, then one
        trained on band subsets); the detection task uses the first that `star_galaxy_for` the measured
        bands gives and sets the class of star and galaxy rows from it.  Their bands must be among the
        package's; the model must have ``star`` and ``galaxy`` classes.  Stored as plain numbers in the
        metadata; mappings are read with `StarGalaxyClassifier.from_dict`.
    reliability : `tuple` [`~..star_galaxy.ReliabilityClassifier`, ...] or `None`
        Second-stage reliability classifiers (is a detection a real source?), in order of preference like
        ``star_galaxy`` (`reliability_for`); the detection task runs the network at the classifier's
        ``network_threshold`` instead of ``score_threshold`` and keeps the star and galaxy detections whose
        reliability reaches the classifier's threshold.
    package_version : `str`
        Version of meas_extensions_deepdisc that created the package.
    format_version : `int`
        On-disk format version (`FORMAT_VERSION`).
    """

    name: str
    version: str
    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    bands: tuple[str, ...]
    scaling: ScalingSpec
    class_names: tuple[str, ...]
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    architecture: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    score_threshold: float | None = None
    min_bands: int | None = None
    band_count_thresholds: dict[int, float] | None = None
    artifact_binning: int | None = None
    artifact_score_threshold: float | None = None
    star_galaxy: tuple[StarGalaxyClassifier, ...] | None = None
    reliability: tuple[ReliabilityClassifier, ...] | None = None
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ModelPackageError(
                f"model name {self.name!r} must be 1-128 letters, digits, '.', '_' or '-' "
                "(it becomes part of the collection name pretrained_models/<name>)"
            )
        if not isinstance(self.version, str) or not self.version:
            raise ModelPackageError(f"model version must be a non-empty string, got {self.version!r}")
        if not isinstance(self.architecture, str):
            raise ModelPackageError(f"architecture must be a string, got {self.architecture!r}")
        self.bands = _string_tuple(self.bands, "bands")
        self.class_names = _string_tuple(self.class_names, "class_names")
        if isinstance(self.scaling, Mapping):
            self.scaling = self._scaling_from_dict(self.scaling)
        if not isinstance(self.scaling, ScalingSpec):
            raise ModelPackageError(f"scaling must be a ScalingSpec, got {type(self.scaling).__name__}")
        _to_plain(self.scaling.to_dict(), "scaling")
        self.pixel_mean = _float_tuple(self.pixel_mean, "pixel_mean", len(self.bands), positive=False)
        self.pixel_std = _float_tuple(self.pixel_std, "pixel_std", len(self.bands), positive=True)
        if not isinstance(self.model_config, Mapping) or not self.model_config:
            raise ModelPackageError("model_config must be a non-empty mapping (the model described as data)")
        self.model_config = _to_plain(self.model_config, "model_config")
        check_config_agrees(self)
        if not isinstance(self.provenance, Mapping):
            raise ModelPackageError(f"provenance must be a mapping, got {type(self.provenance).__name__}")
        self.provenance = _to_plain(self.provenance, "provenance")
        if self.score_threshold is not None:
            if isinstance(self.score_threshold, bool) or not isinstance(self.score_threshold, (int, float)):
                raise ModelPackageError(f"score_threshold must be a number, got {self.score_threshold!r}")
            if not 0.0 <= float(self.score_threshold) <= 1.0:
                raise ModelPackageError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
            self.score_threshold = float(self.score_threshold)
        self.min_bands = _checked_min_bands(self.min_bands, self.band_availability, len(self.bands))
        self.band_count_thresholds = _checked_band_count_thresholds(
            self.band_count_thresholds, self.min_bands, len(self.bands)
        )
        if self.artifact_binning is not None and (
            isinstance(self.artifact_binning, bool)
            or not isinstance(self.artifact_binning, int)
            or self.artifact_binning < 2
        ):
            raise ModelPackageError(
                f"artifact_binning must be an integer >= 2, got {self.artifact_binning!r}"
            )
        if self.artifact_score_threshold is not None:
            value = self.artifact_score_threshold
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ModelPackageError(f"artifact_score_threshold must be in [0, 1], got {value!r}")
            if self.artifact_binning is None:
                raise ModelPackageError("artifact_score_threshold needs artifact_binning (the binned pass)")
            self.artifact_score_threshold = float(value)
        self.star_galaxy = _checked_classifiers(
            self.star_galaxy, StarGalaxyClassifier, "star_galaxy", self.bands, self.class_names
        )
        self.reliability = _checked_classifiers(
            self.reliability, ReliabilityClassifier, "reliability", self.bands, self.class_names
        )
        if not isinstance(self.state_dict, Mapping) or not self.state_dict:
            raise ModelPackageError("state_dict must be a non-empty mapping of names to tensors")
        for key, tensor in self.state_dict.items():
            if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
                raise ModelPackageError(
                    f"state_dict must map names to torch.Tensor, got {key!r}: {type(tensor).__name__}"
                )
        self.state_dict = {key: tensor.detach().cpu() for key, tensor in self.state_dict.items()}
        if not isinstance(self.package_version, str):
            raise ModelPackageError(f"package_version must be a string, got {self.package_version!r}")
        if type(self.format_version) is not int or self.format_version != FORMAT_VERSION:
            raise ModelPackageError(
                f"format version {self.format_version!r} is not supported: this code reads and writes "
                f"version {FORMAT_VERSION}"
            )

    @property
    def band_availability(self) -> bool:
        """Whether the model runs on a subset of its bands (trained with band dropout)."""
        return bool(self.model_config.get("band_availability", False))

    def star_galaxy_for(self, measured: Sequence[str]) -> StarGalaxyClassifier | None:
        """The first star-galaxy classifier with at least its ``min_bands`` of its bands in ``measured``."""
        return next((c for c in self.star_galaxy or () if c.runs_on(measured)), None)

    def reliability_for(self, measured: Sequence[str]) -> ReliabilityClassifier | None:
        """The first reliability classifier with at least its ``min_bands`` of its bands in ``measured``."""
        return next((c for c in self.reliability or () if c.runs_on(measured)), None)

    def score_threshold_for(self, n_bands: int) -> float | None:
        """The operating point for data with ``n_bands`` of the model's bands (`score_threshold` if none)."""
        if self.band_count_thresholds and n_bands in self.band_count_thresholds:
            return self.band_count_thresholds[n_bands]
        return self.score_threshold

    @staticmethod
    def _scaling_from_dict(data: Mapping[str, Any]) -> ScalingSpec:
        try:
            return ScalingSpec.from_dict(dict(data))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelPackageError(f"invalid scaling {dict(data)!r}: {exc}") from None

    # ------------------------------------------------------------------ creation

    @classmethod
    def from_model(
        cls,
        module: torch.nn.Module,
        spec_or_config: ModelSpec | Mapping[str, Any],
        scaling: ScalingSpec | Mapping[str, Any] | str,
        name: str,
        *,
        version: str = "1.0",
        bands: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        architecture: str | None = None,
        provenance: Mapping[str, Any] | None = None,
        min_bands: int | None = None,
    ) -> ModelPackage:
        """Package a live model.

        Parameters
        ----------
        module : `torch.nn.Module`
            The model; its state dict is copied to the CPU (later training does not change the package).
        spec_or_config : `.models.ModelSpec` or `~collections.abc.Mapping`
            A spec (bands, classes, pixel statistics and architecture default from it) or a plain model
            config as returned by `.models.make_model_config` or `.models.config_from_detectron2_yaml`
            (they default from its top-level ``bands``, ``class_names``, ``pixel_mean``, ``pixel_std`` and
            ``architecture``).
        scaling : `.scaling.ScalingSpec`, `~collections.abc.Mapping` or `str`
            The contrast scaling (a registered name uses that scaling's default parameters).
        name : `str`
            Package name.
        version, bands, class_names, pixel_mean, pixel_std, architecture
            Override the values taken from the spec.  Pixel statistics not given anywhere are read from
            the model's ``pixel_mean`` / ``pixel_std`` buffers when it has them.
        provenance : `~collections.abc.Mapping`, optional
            Plain data; ``created_utc`` is added when absent.
        min_bands : `int`, optional
            For a band-availability model, the fewest bands it runs on (default 1).

        Returns
        -------
        package : `ModelPackage`
        """
        from ..models import ModelSpec, make_model_config

        if isinstance(spec_or_config, ModelSpec):
            spec = spec_or_config
            model_config = make_model_config(spec)
            bands = spec.bands if bands is None else bands
            class_names = spec.class_names if class_names is None else class_names
            pixel_mean = spec.pixel_mean if pixel_mean is None else pixel_mean
            pixel_std = spec.pixel_std if pixel_std is None else pixel_std
            architecture = spec.architecture if architecture is None else architecture
        elif isinstance(spec_or_config, Mapping):
            model_config = dict(spec_or_config)
            bands = model_config.get("bands") if bands is None else bands
            class_names = model_config.get("class_names") if class_names is None else class_names
            if bands is None or class_names is None:
                raise ModelPackageError("packaging a model from a plain config needs bands and class_names")
        else:
            raise ModelPackageError(
                f"spec_or_config must be a ModelSpec or a plain config mapping, got {type(spec_or_config)}"
            )
        # Pixel statistics not given: those of the config (the factory always writes them), else the model's.
        buffers = dict(module.named_buffers())
        if pixel_mean is None:
            pixel_mean = model_config.get("pixel_mean")
        if pixel_mean is None and isinstance(buffers.get("pixel_mean"), torch.Tensor):
            pixel_mean = buffers["pixel_mean"].reshape(-1).tolist()
        if pixel_std is None:
            pixel_std = model_config.get("pixel_std")
        if pixel_std is None and isinstance(buffers.get("pixel_std"), torch.Tensor):
            pixel_std = buffers["pixel_std"].reshape(-1).tolist()
        if architecture is None and isinstance(model_config.get("architecture"), str):
            architecture = model_config["architecture"]
        if isinstance(scaling, str):
            scaling = ScalingSpec(name=scaling)
        elif isinstance(scaling, Mapping):
            scaling = cls._scaling_from_dict(scaling)
        provenance_data = dict(provenance or {})
        provenance_data.setdefault("created_utc", _utc_now())
        state_dict = {key: tensor.detach().cpu().clone() for key, tensor in module.state_dict().items()}
        package = cls(
            name=name,
            version=version,
            model_config=model_config,
            state_dict=state_dict,
            bands=tuple(bands),
            scaling=scaling,
            class_names=tuple(class_names),
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            architecture=architecture or "",
            provenance=provenance_data,
            min_bands=min_bands,
        )
        check_model_consistency(package, module)
        return package

    # ------------------------------------------------------------------ using the model

    def build_model(
        self, device: str | torch.device = "cpu", score_threshold: float | None = None
    ) -> torch.nn.Module:
        """Build the network from ``model_config`` and load the weights (``strict=True``), in eval mode.

        Parameters
        ----------
        device : `str` or `torch.device`
            Where the model runs.
        score_threshold : `float`, optional
            Detection score threshold of the built model's box predictors (every cascade stage), lower or
            higher than the config's ``SCORE_THRESH_TEST``; `None` keeps the config's.

        Returns
        -------
        model : `torch.nn.Module`

        Raises
        ------
        ModelPackageError
            If the config names a class the factory does not allow (nothing is executed), cannot be
            built, or the weights do not fit the built model (the first mismatching keys are named).
        """
        from ..models import UnsafeConfigError
        from ..models import build_model as factory_build_model

        check_config_safety(self.model_config)  # Also for packages made in memory, not loaded.
        try:
            # Every parameter and buffer is loaded below (strict): no random draws for them.
            model = factory_build_model(self.model_config, device=str(device), init_weights=False)
        except UnsafeConfigError as exc:
            raise ModelPackageError(
                f"{MODEL_MEMBER} of model package {self.name!r} is refused: {exc}"
            ) from exc
        except (KeyError, TypeError, ValueError) as exc:
            # Environment problems (e.g. a missing compiled extension) are not the package's fault.
            raise ModelPackageError(
                f"cannot build the model of package {self.name!r} from {MODEL_MEMBER}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        from ..checkpoints import compare_state_dicts

        diff = compare_state_dicts(model.state_dict(), self.state_dict)
        if not diff.is_empty:
            raise ModelPackageError(
                f"the weights of model package {self.name!r} do not fit the model its config builds: "
                f"{diff.describe()}"
            )
        model.load_state_dict(self.state_dict, strict=True)
        check_model_consistency(self, model)
        if score_threshold is not None:
            set_score_threshold(model, score_threshold)
        model.eval()
        return model

    def check_bands(self, bands: Sequence[str], *, allow_extra: bool = True) -> None:
        """Check, before any work, that data with these bands can feed the model.

        Parameters
        ----------
        bands : `~collections.abc.Sequence` [`str`]
            Bands of the data, in the data's order.
        allow_extra : `bool`
            Whether bands the model does not use are allowed (they are dropped; see `band_order_for`).

        Raises
        ------
        BandMismatchError
            If a band of the model is missing from the data, the data repeat a band, or (without
            ``allow_extra``) the data have other bands.  The message names both lists.
        """
        data_bands = tuple(str(band) for band in bands)
        repeated = sorted({band for band in data_bands if data_bands.count(band) > 1})
        missing = [band for band in self.bands if band not in data_bands]
        extra = [band for band in data_bands if band not in self.bands]
        problems = []
        if repeated:
            problems.append(f"repeated {repeated}")
        if missing and self.min_bands is None:
            problems.append(f"missing {missing}")
        elif self.min_bands is not None and len(self.bands) - len(missing) < self.min_bands:
            raise BandMismatchError(
                f"model {self.name!r} runs on any {self.min_bands} or more of the bands {list(self.bands)} "
                f"but the data have only {list(data_bands)}"
            )
        if extra and not allow_extra:
            problems.append(f"unexpected {extra}")
        if problems:
            raise BandMismatchError(
                f"model {self.name!r} needs bands {list(self.bands)} (in this order) but the data have bands "
                f"{list(data_bands)}: {', '.join(problems)}"
            )

    def usable_bands(self, available: Sequence[str]) -> tuple[str, ...]:
        """The model's bands that the data have, in the model's order (all of them for a strict model).

        Raises
        ------
        BandMismatchError
            If the data cannot serve the model (see `check_bands`).
        """
        available = tuple(str(band) for band in available)
        self.check_bands(available, allow_extra=True)
        return tuple(band for band in self.bands if band in available)

    def network_input(self, scaled: np.ndarray, bands: Sequence[str]) -> np.ndarray:
        """The ``[n_model_bands, H, W]`` network input from a scaled cube of some of the model's bands.

        Parameters
        ----------
        scaled : `numpy.ndarray`
            ``[len(bands), H, W]`` scaled planes.
        bands : `~collections.abc.Sequence` [`str`]
            Band of each plane, in the model's order (`usable_bands`).

        Returns
        -------
        cube : `numpy.ndarray`
            ``scaled`` itself when it holds all the model's bands, else a float32 cube with a NaN plane
            (`.models.band_availability.ABSENT_BAND_VALUE`) for each absent band.
        """
        bands = tuple(str(band) for band in bands)
        if bands == self.bands:
            return scaled
        if list(bands) != [band for band in self.bands if band in bands]:
            raise BandMismatchError(f"bands {list(bands)} are not in the model's order {list(self.bands)}")
        self.check_bands(bands, allow_extra=False)
        cube = np.full((len(self.bands), *scaled.shape[1:]), np.nan, dtype=np.float32)
        for plane, band in zip(scaled, bands, strict=True):
            cube[self.bands.index(band)] = plane
        return cube

    def band_order_for(self, available: Sequence[str]) -> tuple[int, ...]:
        """Indices into ``available`` that give the model's bands in the model's order.

        ``cube[list(package.band_order_for(data_bands))]`` turns a ``[C, H, W]`` cube in the data's band
        order into the network's input order, dropping bands the model does not use (for a model with
        `min_bands`, only the bands present: see `usable_bands` and `network_input`).

        Raises
        ------
        BandMismatchError
            If a band of the model is not available (see `check_bands`).
        """
        available = tuple(str(band) for band in available)
        return tuple(available.index(band) for band in self.usable_bands(available))

    # ------------------------------------------------------------------ description

    @property
    def n_parameters(self) -> int:
        """Number of values in the state dict (parameters and buffers)."""
        return int(sum(tensor.numel() for tensor in self.state_dict.values()))

    def metadata_dict(self) -> dict[str, Any]:
        """The content of ``metadata.yaml`` (plain data)."""
        return package_metadata(self)

    def describe(self) -> dict[str, Any]:
        """Plain-data description (metadata, weight statistics, content digest) for JSON output."""
        return describe_package(self)

    def summary(self) -> str:
        """Human-readable multi-line description."""
        return package_summary(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelPackage):
            return NotImplemented
        if self.metadata_dict() != other.metadata_dict() or self.model_config != other.model_config:
            return False
        # Key order is not part of the content (safetensors stores tensors in its own order).
        if set(self.state_dict) != set(other.state_dict):
            return False
        return all(_tensors_identical(self.state_dict[key], other.state_dict[key]) for key in self.state_dict)

    __hash__ = None  # type: ignore[assignment]  # Mutable container.

    # ------------------------------------------------------------------ writing

    def _members(self) -> dict[str, bytes]:
        return package_members(self.model_config, self.metadata_dict(), self.state_dict, self.format_version)

    def content_digest(self) -> str:
        """SHA-256 of ``manifest.yaml``, which hashes every member: equal digests mean equal content."""
        return sha256(self._members()[MANIFEST_MEMBER])

    def _write(self, stream: BinaryIO) -> None:
        write_package(stream, self._members())

    def to_bytes(self) -> bytes:
        """The package file as bytes (deterministic)."""
        buffer = io.BytesIO()
        self._write(buffer)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the package file atomically.

        Parameters
        ----------
        path : `str` or `os.PathLike`
            Destination ending in ``.deepdisc.zip`` or ``.zip``.

        Returns
        -------
        path : `pathlib.Path`
        """
        return write_package_file(path, self._members())

    # ------------------------------------------------------------------ reading

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, limits: PackageLimits = DEFAULT_LIMITS) -> ModelPackage:
        """Read and verify a package file.

        Parameters
        ----------
        path : `str` or `os.PathLike`
            The package file.
        limits : `PackageLimits`
            Size and compression caps.

        Returns
        -------
        package : `ModelPackage`

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        ModelPackageError
            If the file is not a valid package (see the module documentation).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model package file at {path}")
        with path.open("rb") as stream:
            return cls._read(stream, str(path), limits)

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: PackageLimits = DEFAULT_LIMITS) -> ModelPackage:
        """Inverse of `to_bytes`, with the checks of `load`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ModelPackageError(f"a model package is read from bytes, got {type(data).__name__}")
        return cls._read(io.BytesIO(bytes(data)), "<bytes>", limits)

    @classmethod
    def _read(cls, stream: BinaryIO, source: str, limits: PackageLimits) -> ModelPackage:
        members = read_package(stream, source, limits)
        try:
            return cls._from_members(members)
        except ModelPackageError as exc:
            raise ModelPackageError(f"model package {source}: {exc}") from None

    @classmethod
    def _from_members(cls, members: dict[str, Any]) -> ModelPackage:
        metadata = checked_metadata(members)
        model_config = members[MODEL_MEMBER]
        if not isinstance(model_config, dict):
            raise ModelPackageError(f"{MODEL_MEMBER} must be a mapping (the model config as data)")
        check_config_safety(model_config)
        return cls(
            name=metadata["name"],
            version=metadata["version"],
            model_config=model_config,
            state_dict=members[WEIGHTS_MEMBER],
            bands=metadata["bands"],
            scaling=cls._scaling_from_dict(metadata["scaling"]),
            class_names=metadata["class_names"],
            pixel_mean=metadata["pixel_mean"],
            pixel_std=metadata["pixel_std"],
            architecture=metadata["architecture"],
            provenance=metadata["provenance"],
            score_threshold=metadata.get("score_threshold"),
            min_bands=metadata.get("min_bands"),
            band_count_thresholds=metadata.get("band_count_thresholds"),
            artifact_binning=metadata.get("artifact_binning"),
            artifact_score_threshold=metadata.get("artifact_score_threshold"),
            star_galaxy=metadata.get("star_galaxy"),
            reliability=metadata.get("reliability"),
            package_version=metadata["package_version"],
            format_version=metadata["format_version"],
        )
