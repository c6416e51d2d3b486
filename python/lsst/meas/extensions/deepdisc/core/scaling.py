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
"""Contrast scalings: from calibrated fluxes to the numbers a network sees.

Every scaling is a named function registered in `SCALINGS` with keyword parameters, so that a model
package can record ``{"name": ..., "params": {...}}`` and inference reproduces exactly what training did.

Invalid pixels (non-finite values and, where a mask is given, the ``NO_DATA`` plane) are handled the same
way by every scaling: they are excluded from every statistic (means, standard deviations, MAD) and set to
zero flux - the sky level of a background-subtracted coadd - before scaling, so the network sees them as
empty sky and **no NaN or infinity ever reaches the network**.  Where the caller wants to know how much of
an image was invalid, `ScalingSpec.apply` returns that mask alongside the scaled cube.
"""

from __future__ import annotations

__all__ = [
    "SCALINGS",
    "ScalingRegistry",
    "ScalingSpec",
    "asinh_per_band",
    "linear",
    "lupton_asinh",
    "lupton_high_contrast",
    "register_scaling",
    "zscore",
    "zscore_per_band",
]

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .multiband import MultibandImage


class ScalingFunction(Protocol):
    """Signature of a registered scaling: ``[C, H, W]`` fluxes and invalid mask to ``[C, H, W]`` float32."""

    def __call__(self, image: np.ndarray, invalid: np.ndarray, **params: Any) -> np.ndarray: ...


class ScalingRegistry:
    """Name -> scaling function, in the spirit of detectron2's ``Registry``."""

    def __init__(self) -> None:
        self._functions: dict[str, ScalingFunction] = {}

    def register(self, name: str) -> Callable[[ScalingFunction], ScalingFunction]:
        """Decorator registering a scaling function under ``name``."""

        def decorator(func: ScalingFunction) -> ScalingFunction:
            if name in self._functions:
                raise ValueError(f"a scaling named {name!r} is already registered")
            self._functions[name] = func
            return func

        return decorator

    def get(self, name: str) -> ScalingFunction:
        """Look up a scaling, with a message listing the known names if absent."""
        try:
            return self._functions[name]
        except KeyError:
            raise KeyError(f"unknown scaling {name!r}; known scalings: {sorted(self._functions)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._functions))


SCALINGS = ScalingRegistry()
register_scaling = SCALINGS.register


def _prepare(image: np.ndarray, invalid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Copy to float64, mark non-finite pixels invalid and zero every invalid pixel."""
    data = np.array(image, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"scalings take a [C, H, W] cube, got shape {data.shape}")
    bad = ~np.isfinite(data)
    if invalid is not None:
        bad |= np.broadcast_to(np.asarray(invalid, dtype=bool), data.shape)
    data[bad] = 0.0
    return data, bad


def _finish(scaled: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Cast to float32; invalid pixels already hold the scaled value of zero flux."""
    out = np.asarray(scaled, dtype=np.float32)
    if not np.all(np.isfinite(out)):  # Only reachable through extreme parameters; never let it through.
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _valid_stats(values: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the valid pixels (0, 1 if there are none or no spread)."""
    good = values[~bad]
    if good.size == 0:
        return 0.0, 1.0
    mean = float(good.mean())
    std = float(good.std())
    return mean, std if std > 0 else 1.0


def _robust_sigma(values: np.ndarray, bad: np.ndarray) -> float:
    """1.4826 * median absolute deviation of the valid pixels (1 if undefined)."""
    good = values[~bad]
    if good.size == 0:
        return 1.0
    sigma = 1.4826 * float(np.median(np.abs(good - np.median(good))))
    return sigma if sigma > 0 else 1.0


@register_scaling("lupton")
def lupton_asinh(
    image: np.ndarray,
    invalid: np.ndarray | None = None,
    *,
    stretch: float = 0.5,
    Q: float = 10.0,
    minimum: float | list[float] = 0.0,
    flux_scale: float = 1.0,
) -> np.ndarray:
    """Lupton et al. (2004) asinh scaling generalised to any number of bands.

    With ``I`` the mean over bands of ``(x_b - minimum_b) * flux_scale``, each band becomes
    ``x_b * asinh(Q * I / stretch) / (Q * I)``, then the cube is divided by its per-pixel maximum where
    that exceeds 1 (colour-preserving saturation) and clipped to ``[0, 1]``.  This keeps colours (band
    ratios) while compressing the dynamic range - the DeepDISC default is ``stretch=0.5, Q=10, minimum=0``
    on fluxes in the data's units times ``flux_scale``.
    """
    data, bad = _prepare(image, invalid)
    minimum_arr = np.broadcast_to(np.asarray(minimum, dtype=np.float64), (data.shape[0],))
    data = (data - minimum_arr[:, None, None]) * flux_scale
    data[bad] = 0.0
    intensity = data.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(intensity > 0, np.arcsinh(Q * intensity / stretch) / (Q * intensity), 0.0)
    scaled = np.clip(data * factor, 0.0, None)
    peak = scaled.max(axis=0)
    scaled = np.where(peak > 1.0, scaled / np.maximum(peak, 1e-30), scaled)
    return _finish(np.clip(scaled, 0.0, 1.0), bad)


@register_scaling("lupton_high_contrast")
def lupton_high_contrast(
    image: np.ndarray,
    invalid: np.ndarray | None = None,
    *,
    stretch: float = 0.5,
    Q: float = 10.0,
    minimum: float | list[float] = 0.0,
    flux_scale: float = 1.0,
    brightness: float = 2.0,
    contrast: float = 2.0,
) -> np.ndarray:
    """DeepDISC's "Lupton high-contrast": Lupton asinh, then brightness and contrast enhancement.

    ``b = clip(brightness * lupton, 0, 1)``; ``out = clip(mean(b) + contrast * (b - mean(b)), 0, 1)``
    with ``mean(b)`` over valid pixels and bands (the grey level that PIL's contrast enhancer pivots on).
    """
    base = lupton_asinh(image, invalid, stretch=stretch, Q=Q, minimum=minimum, flux_scale=flux_scale)
    _, bad = _prepare(image, invalid)
    bright = np.clip(base.astype(np.float64) * brightness, 0.0, 1.0)
    pivot, _ = _valid_stats(bright, bad)
    out = np.clip(pivot + contrast * (bright - pivot), 0.0, 1.0)
    out[bad] = np.clip(pivot + contrast * (0.0 - pivot), 0.0, 1.0)
    return _finish(out, bad)


@register_scaling("zscore")
def zscore(
    image: np.ndarray,
    invalid: np.ndarray | None = None,
    *,
    amplitude: float = 1000.0,
    quantize_int16: bool = False,
) -> np.ndarray:
    """DeepDISC's z-score: ``(x - mean(I)) / std(I) * amplitude`` with statistics over all bands.

    Invalid pixels take the value of zero flux.  With ``quantize_int16`` the result is rounded and clipped
    to the int16 range as DeepDISC's cast does (kept as float32 for the network).
    """
    data, bad = _prepare(image, invalid)
    mean, std = _valid_stats(data, bad)
    scaled = (data - mean) / std * amplitude
    if quantize_int16:
        scaled = np.clip(np.round(scaled), -32768, 32767)
    return _finish(scaled, bad)


@register_scaling("zscore_per_band")
def zscore_per_band(
    image: np.ndarray,
    invalid: np.ndarray | None = None,
    *,
    amplitude: float = 1.0,
    robust: bool = False,
) -> np.ndarray:
    """Per-band z-score: each band minus its own mean (median if ``robust``), over its own std (MAD)."""
    data, bad = _prepare(image, invalid)
    out = np.empty_like(data)
    for b in range(data.shape[0]):
        if robust:
            good = data[b][~bad[b]]
            center = float(np.median(good)) if good.size else 0.0
            scale = _robust_sigma(data[b], bad[b])
        else:
            center, scale = _valid_stats(data[b], bad[b])
        out[b] = (data[b] - center) / scale * amplitude
    return _finish(out, bad)


@register_scaling("asinh_per_band")
def asinh_per_band(
    image: np.ndarray,
    invalid: np.ndarray | None = None,
    *,
    softening_sigma: float = 1.0,
    softening: list[float] | None = None,
) -> np.ndarray:
    """``asinh(x_b / s_b)`` per band.

    ``s_b`` is given explicitly (``softening``, one value per band, in data units) or is
    ``softening_sigma`` times the band's robust noise (MAD of the valid pixels), so that the linear-to-log
    transition sits at the noise level of each band.
    """
    data, bad = _prepare(image, invalid)
    if softening is not None:
        soft = np.asarray(softening, dtype=np.float64)
        if soft.shape != (data.shape[0],):
            raise ValueError(f"softening needs one value per band ({data.shape[0]}), got {softening}")
    else:
        soft = np.array([softening_sigma * _robust_sigma(data[b], bad[b]) for b in range(data.shape[0])])
    if np.any(soft <= 0):
        raise ValueError(f"softening must be positive, got {soft.tolist()}")
    return _finish(np.arcsinh(data / soft[:, None, None]), bad)


@register_scaling("linear")
def linear(image: np.ndarray, invalid: np.ndarray | None = None, *, scale: float = 1.0) -> np.ndarray:
    """Raw fluxes times ``scale`` (the network's pixel mean/std then normalise)."""
    data, bad = _prepare(image, invalid)
    return _finish(data * scale, bad)


@dataclass(frozen=True)
class ScalingSpec:
    """A scaling by name with its parameters: the serialisable form stored in model packages.

    Parameters
    ----------
    name : `str`
        Registered name (see `SCALINGS`).
    params : `dict`
        Keyword parameters of the scaling function.
    invalid_planes : `tuple` [`str`, ...]
        Mask planes whose pixels count as invalid (in addition to non-finite values).
    """

    name: str = "lupton"
    params: dict[str, Any] = field(default_factory=dict)
    invalid_planes: tuple[str, ...] = ("NO_DATA",)

    def __post_init__(self) -> None:
        SCALINGS.get(self.name)  # Fail early, with the list of known names.

    def apply_array(self, image: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
        """Scale a bare ``[C, H, W]`` cube."""
        return SCALINGS.get(self.name)(image, invalid, **self.params)

    def apply(self, image: MultibandImage) -> tuple[np.ndarray, np.ndarray]:
        """Scale a `MultibandImage`.

        Returns
        -------
        scaled : `numpy.ndarray`
            ``float32`` ``[C, H, W]``, finite everywhere.
        invalid : `numpy.ndarray`
            ``[C, H, W]`` boolean mask of the pixels that were invalid.
        """
        invalid = image.invalid_pixels(self.invalid_planes)
        return self.apply_array(image.image, invalid), invalid

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for YAML/JSON."""
        return {"name": self.name, "params": dict(self.params), "invalid_planes": list(self.invalid_planes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalingSpec:
        """Inverse of `to_dict`; unknown keys are an error."""
        unknown = set(data) - {"name", "params", "invalid_planes"}
        if unknown:
            raise ValueError(f"unknown scaling spec keys {sorted(unknown)}")
        return cls(
            name=str(data.get("name", "lupton")),
            params=dict(data.get("params") or {}),
            invalid_planes=tuple(data.get("invalid_planes", ("NO_DATA",))),
        )
