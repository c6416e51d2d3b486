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
"""The star-galaxy classifier: a small network over PSF-matched shape, colour and the detector's opinion.

The detection network sees colour and shape but not the PSF, and the seeing changes from patch to patch:
at 22-24 mag it cannot tell a point source from a compact galaxy.  This second stage can, because its
inputs are measured against each band's PSF (`psf_photometry`):

``psf_excess_fraction``
    sum over bands of the wide-filter excess over the sum of the PSF fluxes (near 0.05 for a point source,
    0.15-0.5 for a galaxy);
``psf_excess_significance``
    the same excess over its uncertainty (``asinh(x / 3)``), which separates bright compact galaxies;
``psf_snr``
    ``log10`` of the band-summed PSF flux signal-to-noise ratio, so the network knows how far to trust both;
``network_logit``
    the detection network's own star-versus-galaxy log-odds (it recognises saturated stars, whose flat cores
    fool the PSF filters);
``colour_<b1>_<b2>``
    asinh-magnitude colours of the PSF fluxes of adjacent bands (stars lie on a narrow locus);
``saturated``
    the footprint's saturation flag;
``neighbour_distance``
    ``log10`` of the distance in pixels to the nearest other classified detection (blends bias the excess);
``footprint_area``
    ``log10`` of the detection's footprint area in pixels (the network's own view of the source's extent).

The network (`StarGalaxyClassifier`) is plain numbers: feature standardisation, a few dense ``tanh``
layers and a logistic output, so a package can carry it as safe YAML.  `fit_star_galaxy` trains it with
torch (full batch, Adam, weight decay, a fixed seed) and `best_f1_threshold` picks the star threshold on
validation objects.
"""

from __future__ import annotations

__all__ = [
    "FEATURE_NAMES_BASE",
    "EnsembleClassifier",
    "Network",
    "StarGalaxyClassifier",
    "StarGalaxyError",
    "best_f1_threshold",
    "feature_names",
    "fit_ensemble",
    "fit_star_galaxy",
    "star_f1",
    "star_galaxy_features",
]

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
from scipy.spatial import cKDTree

FEATURE_NAMES_BASE = (
    "psf_excess_fraction",
    "psf_excess_significance",
    "psf_snr",
    "network_logit",
    "saturated",
    "neighbour_distance",
    "footprint_area",
)
"""Features that do not depend on the band list (the colours follow them)."""

_MAX_LAYERS = 8
_MAX_NETWORKS = 32
_MAX_WIDTH = 1024


class StarGalaxyError(ValueError):
    """A star-galaxy classifier or its inputs are not usable (the message says why)."""


def feature_names(bands: Sequence[str]) -> tuple[str, ...]:
    """The classifier's feature names for ``bands`` (base features, then adjacent-band colours)."""
    colours = tuple(f"colour_{a}_{b}" for a, b in zip(bands[:-1], bands[1:]))
    return FEATURE_NAMES_BASE + colours


def _asinh_mag(flux: np.ndarray, softening: np.ndarray) -> np.ndarray:
    """Asinh magnitudes up to a constant: finite for zero and negative fluxes."""
    return -2.5 / math.log(10.0) * np.arcsinh(flux / (2.0 * softening))


def star_galaxy_features(
    columns: Mapping[str, Any], bands: Sequence[str], absent: Sequence[str] = ()
) -> np.ndarray:
    """The ``[N, F]`` feature matrix of detection-catalog rows (`feature_names` order).

    Parameters
    ----------
    columns : mapping
        Catalog columns: ``<band>_psfFlux``, ``<band>_psfFluxErr``, ``<band>_psfExcess``,
        ``<band>_psfExcessErr`` for every band, ``prob_star``, ``prob_galaxy``, ``flag_saturated``,
        ``centroid_x``, ``centroid_y``, ``footprint_area``.
    bands : sequence of `str`
        The classifier's bands, in its order.
    absent : sequence of `str`
        Bands without measurements (their columns, if any, are ignored): their colours are missing and the
        sums run over the other bands.

    Returns
    -------
    features : `numpy.ndarray`
        ``float64``; NaN where a measurement is missing (the classifier imputes the training mean).

    Raises
    ------
    StarGalaxyError
        If a needed column is missing.
    """
    present = [band for band in bands if band not in set(absent)]
    if not present:
        raise StarGalaxyError(f"none of the star-galaxy classifier's bands {list(bands)} is measured")
    needed = [
        f"{band}_{name}"
        for band in present
        for name in ("psfFlux", "psfFluxErr", "psfExcess", "psfExcessErr")
    ]
    needed += ["prob_star", "prob_galaxy", "flag_saturated", "centroid_x", "centroid_y", "footprint_area"]
    missing = [name for name in needed if name not in columns]
    if missing:
        raise StarGalaxyError(f"the catalog lacks the star-galaxy classifier's input columns {missing}")

    n_rows = len(columns["prob_star"])

    def stack(name: str) -> np.ndarray:
        return np.stack(
            [
                np.asarray(columns[f"{band}_{name}"], dtype=np.float64)
                if band in present
                else np.full(n_rows, np.nan)
                for band in bands
            ],
            axis=1,
        )

    flux, flux_err, excess, excess_err = (
        stack(n) for n in ("psfFlux", "psfFluxErr", "psfExcess", "psfExcessErr")
    )
    usable = np.isfinite(flux) & np.isfinite(excess) & np.isfinite(flux_err) & np.isfinite(excess_err)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_sum = np.where(usable, flux, 0.0).sum(axis=1)
        excess_sum = np.where(usable, excess, 0.0).sum(axis=1)
        flux_noise = np.sqrt(np.where(usable, flux_err**2, 0.0).sum(axis=1))
        excess_noise = np.sqrt(np.where(usable, excess_err**2, 0.0).sum(axis=1))
        fraction = np.where(flux_sum > 0, np.clip(excess_sum / flux_sum, -1.0, 2.0), np.nan)
        significance = np.where(excess_noise > 0, np.arcsinh(excess_sum / excess_noise / 3.0), np.nan)
        snr = np.where(flux_noise > 0, np.log10(np.clip(flux_sum / flux_noise, 1.0, 1e6)), np.nan)
        p_star = np.asarray(columns["prob_star"], dtype=np.float64)
        p_galaxy = np.asarray(columns["prob_galaxy"], dtype=np.float64)
        share = np.clip(p_star / (p_star + p_galaxy), 1e-4, 1.0 - 1e-4)
        logit = np.log(share / (1.0 - share))
        mags = _asinh_mag(np.where(usable, flux, np.nan), np.where(usable & (flux_err > 0), flux_err, np.nan))
        colours = np.clip(mags[:, :-1] - mags[:, 1:], -5.0, 5.0)
    saturated = np.asarray(columns["flag_saturated"], dtype=np.float64)
    xy = np.stack(
        [np.asarray(columns["centroid_x"], float), np.asarray(columns["centroid_y"], float)], axis=1
    )
    distance = np.full(len(xy), 200.0)
    finite = np.isfinite(xy).all(axis=1)
    if finite.sum() > 1:
        nearest, _ = cKDTree(xy[finite]).query(xy[finite], k=2)
        distance[finite] = nearest[:, 1]
    neighbour = np.log10(np.clip(distance, 0.5, 200.0))
    area = np.log10(np.clip(np.asarray(columns["footprint_area"], dtype=np.float64), 1.0, None))
    base = np.stack([fraction, significance, snr, logit, saturated, neighbour, area], axis=1)
    return np.concatenate([base, colours], axis=1)


Network = tuple[list[np.ndarray], list[np.ndarray]]
"""One network of the ensemble: its dense layers' weight matrices and biases."""


def _checked_network(
    network: Any, n_features: int, what: str = "star-galaxy", error: type[ValueError] = StarGalaxyError
) -> Network:
    """Layers as float64 arrays whose shapes chain from ``n_features`` inputs to one output."""
    try:
        layer_weights, layer_biases = network
    except (TypeError, ValueError):
        raise error(f"a {what} network must be a (weights, biases) pair") from None
    if not 1 <= len(layer_weights) <= _MAX_LAYERS or len(layer_weights) != len(layer_biases):
        raise error(f"a {what} network needs 1-{_MAX_LAYERS} layers with one bias each")
    weights, biases, width = [], [], n_features
    for weight, bias in zip(layer_weights, layer_biases):
        weight = np.asarray(weight, dtype=np.float64)
        bias = np.asarray(bias, dtype=np.float64).reshape(-1)
        if weight.ndim != 2 or weight.shape[0] != width or weight.shape[1] > _MAX_WIDTH:
            raise error(f"{what} layer of shape {weight.shape} does not take {width} inputs")
        if bias.shape != (weight.shape[1],) or not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise error(f"{what} layer biases must match the layer and all values be finite")
        weights.append(weight)
        biases.append(bias)
        width = weight.shape[1]
    if width != 1:
        raise error(f"the last {what} layer must have one output, not {width}")
    return weights, biases


@dataclass
class EnsembleClassifier:
    """A trained second-stage classifier: an ensemble of small networks (plain arrays: safe as YAML).

    The common part of `StarGalaxyClassifier` and `ReliabilityClassifier`: a subclass names its format,
    its features (`names_for`) and what its probability means.

    Parameters
    ----------
    bands : `tuple` [`str`, ...]
        Bands whose PSF photometry it reads (their order fixes the colours).
    mean, scale : `numpy.ndarray`
        Feature standardisation (``(x - mean) / scale``; missing features take the mean).
    networks : `list` [`tuple` [`list` [`numpy.ndarray`], `list` [`numpy.ndarray`]]]
        One ``(weights, biases)`` pair per network: dense layers with ``tanh`` between them, the last with
        one output (the log-odds).  The probability is the mean over the networks.
    threshold : `float`
        Probability at or above which a source is called positive (a star; a real source).
    min_bands : `int` or `None`
        The fewest of its bands it may run on (trained with band subsets); `None`: all of them.
    provenance : `dict`
        Free-form record of the training data and validation metrics.
    """

    bands: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    networks: list[Network]
    threshold: float = 0.5
    min_bands: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    FORMAT: ClassVar[str] = ""
    FORMAT_VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "second-stage classifier"
    ERROR: ClassVar[type[ValueError]] = ValueError

    @classmethod
    def names_for(cls, bands: Sequence[str]) -> tuple[str, ...]:
        """The feature names of a classifier of ``bands``."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        what, error = self.WHAT, self.ERROR
        self.bands = tuple(str(b) for b in self.bands)
        n_features = len(self.names_for(self.bands))
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        if len(self.bands) < 1 or len(set(self.bands)) != len(self.bands):
            raise error(f"{what} bands must be distinct and non-empty: {self.bands}")
        if self.mean.shape != (n_features,) or self.scale.shape != (n_features,):
            raise error(f"{what} standardisation must have {n_features} values")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.scale).all() and (self.scale > 0).all()):
            raise error(f"{what} standardisation must be finite with positive scales")
        if not 1 <= len(self.networks) <= _MAX_NETWORKS:
            raise error(f"a {what} needs 1-{_MAX_NETWORKS} networks")
        short = what.removesuffix(" classifier")
        self.networks = [_checked_network(network, n_features, short, error) for network in self.networks]
        threshold = float(self.threshold)
        if not 0.0 < threshold < 1.0:
            raise error(f"{short} threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        if self.min_bands is None:
            self.min_bands = len(self.bands)
        if isinstance(self.min_bands, bool) or not isinstance(self.min_bands, int | np.integer):
            raise error(f"min_bands must be an integer, got {self.min_bands!r}")
        if not 1 <= self.min_bands <= len(self.bands):
            raise error(f"min_bands must be in [1, {len(self.bands)}], got {self.min_bands}")
        self.min_bands = int(self.min_bands)

    def runs_on(self, measured: Sequence[str]) -> bool:
        """Whether at least ``min_bands`` of its bands are among the ``measured`` ones."""
        return sum(band in measured for band in self.bands) >= self.min_bands

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the input features, in order."""
        return self.names_for(self.bands)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probability of every row of a feature matrix (`feature_names` columns)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.mean):
            raise self.ERROR(f"expected [N, {len(self.mean)}] features, got shape {features.shape}")
        x = (features - self.mean) / self.scale
        x = np.where(np.isfinite(x), x, 0.0)
        probability = np.zeros(len(x))
        for weights, biases in self.networks:
            out = x
            for i, (weight, bias) in enumerate(zip(weights, biases)):
                out = out @ weight + bias
                if i < len(weights) - 1:
                    out = np.tanh(out)
            probability += 1.0 / (1.0 + np.exp(-np.clip(out[:, 0], -50.0, 50.0)))
        return probability / len(self.networks)

    def _extra_dict(self) -> dict[str, Any]:
        """A subclass's own fields for `to_dict`."""
        return {}

    @classmethod
    def _extra_kwargs(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """A subclass's own constructor arguments from `to_dict` data."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists and numbers) for safe YAML."""
        return {
            "format": self.FORMAT,
            "format_version": self.FORMAT_VERSION,
            "bands": list(self.bands),
            "features": list(self.feature_names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "networks": [
                {"weights": [w.tolist() for w in weights], "biases": [b.tolist() for b in biases]}
                for weights, biases in self.networks
            ],
            "threshold": self.threshold,
            "min_bands": self.min_bands,
            **self._extra_dict(),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of `to_dict`, checking the format and every shape.

        Raises
        ------
        ValueError
            (`ERROR`, e.g. `StarGalaxyError`) If the data is not a classifier of this format or its arrays
            do not fit together.
        """
        what, error = cls.WHAT, cls.ERROR
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            raise error(f"not a {what} (format must be {cls.FORMAT!r})")
        if data.get("format_version") != cls.FORMAT_VERSION:
            raise error(
                f"{what} format version {data.get('format_version')!r} is not "
                f"{cls.FORMAT_VERSION}: re-train it with this version of the package"
            )
        try:
            classifier = cls(
                bands=tuple(data["bands"]),
                mean=np.asarray(data["mean"], dtype=np.float64),
                scale=np.asarray(data["scale"], dtype=np.float64),
                networks=[
                    (
                        [np.asarray(w, dtype=np.float64) for w in network["weights"]],
                        [np.asarray(b, dtype=np.float64) for b in network["biases"]],
                    )
                    for network in data["networks"]
                ],
                threshold=data.get("threshold", 0.5),
                min_bands=data.get("min_bands"),
                provenance=dict(data.get("provenance") or {}),
                **cls._extra_kwargs(data),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, error):
                raise
            raise error(f"malformed {what}: {err}") from err
        if tuple(data.get("features", classifier.feature_names)) != classifier.feature_names:
            raise error(
                f"{what} features {data.get('features')} are not this version's "
                f"{list(classifier.feature_names)}"
            )
        return classifier


@dataclass
class StarGalaxyClassifier(EnsembleClassifier):
    """A trained star-galaxy classifier (`EnsembleClassifier` over `star_galaxy_features`).

    Its probability is the star probability; ``threshold`` the star threshold.
    """

    FORMAT: ClassVar[str] = "deepdisc-star-galaxy-classifier"
    FORMAT_VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "star-galaxy classifier"
    ERROR: ClassVar[type[ValueError]] = StarGalaxyError

    @classmethod
    def names_for(cls, bands: Sequence[str]) -> tuple[str, ...]:
        """`feature_names` of ``bands``."""
        return feature_names(bands)


def star_f1(is_star: np.ndarray, called_star: np.ndarray) -> float:
    """F1 of the star class (NaN when there are neither true nor called stars)."""
    is_star = np.asarray(is_star, dtype=bool)
    called_star = np.asarray(called_star, dtype=bool)
    tp = int(np.sum(is_star & called_star))
    wrong = int(np.sum(is_star != called_star))
    return float("nan") if 2 * tp + wrong == 0 else 2.0 * tp / (2 * tp + wrong)


def best_f1_threshold(probability: np.ndarray, is_star: np.ndarray) -> tuple[float, float]:
    """The star threshold with the best star F1 over a grid (ties: the middle of the best run).

    Returns ``(threshold, f1)``; ``(0.5, nan)`` without stars.
    """
    probability = np.asarray(probability, dtype=np.float64)
    is_star = np.asarray(is_star, dtype=bool)
    if not is_star.any():
        return 0.5, float("nan")
    grid = np.round(np.arange(0.05, 0.951, 0.025), 3)
    scores = [star_f1(is_star, probability >= threshold) for threshold in grid]
    scores = np.asarray(scores)
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    index = int(best[len(best) // 2])
    return float(grid[index]), float(scores[index])


def _train_network(
    x: np.ndarray,
    labels: np.ndarray,
    hidden: Sequence[int],
    epochs: int,
    learning_rate: float,
    weight_decay: float,
    positive_weight: float,
    seed: int,
) -> tuple[Network, float]:
    """One network trained full batch with Adam on standardised features; its final loss."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    widths = [x.shape[1], *hidden, 1]
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        weight = torch.randn(n_in, n_out, generator=generator, dtype=torch.float64) / math.sqrt(n_in)
        layers.append((weight.requires_grad_(), torch.zeros(n_out, dtype=torch.float64, requires_grad=True)))
    inputs = torch.from_numpy(x)
    target = torch.from_numpy(labels.astype(np.float64))
    sample_weight = torch.where(target > 0, float(positive_weight), 1.0)
    optimizer = torch.optim.Adam(
        [p for layer in layers for p in layer], lr=learning_rate, weight_decay=weight_decay
    )
    for _ in range(epochs):
        optimizer.zero_grad()
        out = inputs
        for i, (weight, bias) in enumerate(layers):
            out = out @ weight + bias
            if i < len(layers) - 1:
                out = torch.tanh(out)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], target, weight=sample_weight)
        loss.backward()
        optimizer.step()
    network = (
        [w.detach().numpy().copy() for w, _ in layers],
        [b.detach().numpy().copy() for _, b in layers],
    )
    return network, loss.item()


def fit_star_galaxy(
    features: np.ndarray,
    is_star: np.ndarray,
    bands: Sequence[str],
    *,
    hidden: Sequence[int] = (32, 32),
    ensemble: int = 3,
    epochs: int = 600,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-3,
    star_weight: float = 1.0,
    seed: int = 0,
) -> StarGalaxyClassifier:
    """Train a `StarGalaxyClassifier` on labelled feature rows (threshold 0.5; set it on validation).

    Parameters
    ----------
    features : `numpy.ndarray`
        ``[N, F]`` `star_galaxy_features` rows.
    is_star : `numpy.ndarray`
        ``[N]`` labels.
    bands : sequence of `str`
        The bands the features were built from.
    hidden : sequence of `int`
        Widths of the hidden layers.
    ensemble : `int`
        Networks trained from different initial weights (seeds ``seed``, ``seed + 1``...), averaged: with a
        few hundred stars, one network's decision boundary depends on its start.
    epochs, learning_rate, weight_decay : `int`, `float`, `float`
        Full-batch Adam settings.
    star_weight : `float`
        Loss weight of the stars relative to the galaxies.
    seed : `int`
        Seed of the first network's initial weights (the fit is deterministic on CPU).

    Raises
    ------
    StarGalaxyError
        If the features do not match the bands or either class is absent.
    """
    features = np.asarray(features, dtype=np.float64)
    is_star = np.asarray(is_star, dtype=bool)
    if is_star.all() or not is_star.any():
        raise StarGalaxyError("training a star-galaxy classifier needs both stars and galaxies")
    classifier = fit_ensemble(
        StarGalaxyClassifier,
        features,
        is_star,
        bands,
        hidden=hidden,
        ensemble=ensemble,
        epochs=epochs,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        positive_weight=star_weight,
        seed=seed,
    )
    classifier.provenance["n_train_stars"] = classifier.provenance.pop("n_train_positive")
    return classifier


def fit_ensemble[C: EnsembleClassifier](
    cls: type[C],
    features: np.ndarray,
    labels: np.ndarray,
    bands: Sequence[str],
    *,
    hidden: Sequence[int] = (32, 32),
    ensemble: int = 3,
    epochs: int = 600,
    learning_rate: float = 0.01,
    weight_decay: float = 1e-3,
    positive_weight: float = 1.0,
    seed: int = 0,
    **kwargs: Any,
) -> C:
    """Train an `EnsembleClassifier` subclass ``cls`` on labelled feature rows (threshold 0.5).

    The shared fit of `fit_star_galaxy` and `fit_reliability`: features standardised by their training mean
    and deviation, ``ensemble`` networks from seeds ``seed, seed + 1...``; ``kwargs`` go to ``cls``.

    Raises
    ------
    ValueError
        (``cls.ERROR``) If the features do not match the bands or either class is absent.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_features = len(cls.names_for(bands))
    if features.ndim != 2 or features.shape[1] != n_features or len(features) != len(labels):
        raise cls.ERROR(
            f"expected [N, {n_features}] features and N labels, got {features.shape}, {labels.shape}"
        )
    if labels.all() or not labels.any():
        raise cls.ERROR(f"training a {cls.WHAT} needs examples of both outcomes")
    if ensemble < 1:
        raise cls.ERROR(f"ensemble must be at least 1, got {ensemble}")
    mean = np.nanmean(features, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    scale = np.nanstd(features, axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-6), scale, 1.0)
    x = (features - mean) / scale
    x = np.where(np.isfinite(x), x, 0.0)
    networks, losses = [], []
    for member in range(ensemble):
        network, loss = _train_network(
            x, labels, hidden, epochs, learning_rate, weight_decay, positive_weight, seed + member
        )
        networks.append(network)
        losses.append(round(loss, 5))
    return cls(
        bands=tuple(bands),
        mean=mean,
        scale=scale,
        networks=networks,
        provenance={
            "n_train": int(len(labels)),
            "n_train_positive": int(labels.sum()),
            "final_losses": losses,
        },
        **kwargs,
    )
