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

Every scaling works in float32, band by band and in place on one working copy of the cube (which becomes
the result): a patch costs its float32 cube and a ``[C, H, W]`` boolean mask, never a float64 copy.
Statistics are accumulated in float64 (means, standard deviations) or taken exactly (medians, by
partitioning a copy of one band), so the result agrees with a float64 computation to float32 rounding.
"""

from __future__ import annotations

__all__ = [
    "SCALINGS",
    "ScaledCube",
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

import inspect
import math
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

# Rows per block when a statistic needs float64 deviations: bounds the temporaries to a few MB.
_ROW_BLOCK = 256


def _prepare(image: np.ndarray, invalid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A float32 working copy with every invalid pixel at zero flux, and the invalid mask.

    Built band by band: besides the output (which the scaling then transforms in place) and the
    ``[C, H, W]`` boolean mask, nothing larger than one band is allocated, and nothing in float64.
    ``invalid`` may be ``[C, H, W]`` or ``[H, W]`` (the same for every band).
    """
    cube = np.asarray(image)
    if cube.ndim != 3:
        raise ValueError(f"scalings take a [C, H, W] cube, got shape {cube.shape}")
    given = None if invalid is None else np.broadcast_to(np.asarray(invalid, dtype=bool), cube.shape)
    data = np.empty(cube.shape, dtype=np.float32)
    bad = np.empty(cube.shape, dtype=bool)
    for b in range(cube.shape[0]):
        np.copyto(data[b], cube[b], casting="unsafe")
        np.isfinite(data[b], out=bad[b])
        np.logical_not(bad[b], out=bad[b])
        if given is not None:
            np.logical_or(bad[b], given[b], out=bad[b])
        np.copyto(data[b], 0.0, where=bad[b])
    return data, bad


def _finish(data: np.ndarray) -> np.ndarray:
    """Replace non-finite values by zero, in place (only reachable through extreme parameters)."""
    for plane in data:
        if not np.isfinite(plane).all():
            np.nan_to_num(plane, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return data


# Arrays from this size on have their order statistics bracketed from a sample (`_order_statistics`).
_BRACKET_MIN_SIZE = 1 << 20
_BRACKET_SAMPLE = 1 << 16


def _order_statistics(values: np.ndarray, ranks: list[int]) -> list[float]:
    """The ``ranks``-th smallest of a 1-d array of finite values; ``values`` may be reordered.

    A large array is not partitioned whole: a sorted sample of about 65,000 values gives bounds that hold
    the wanted ranks with near certainty (5 sqrt(sample size) sample ranks either side: 10 standard errors
    of the sample's median), the values below the lower bound are counted and those between the bounds (a
    few percent) selected from; three passes over the array instead of the selection's partitioning.  When
    the bounds miss (a sample that is not representative), the whole array is partitioned.  The values
    returned are exact either way.
    """
    size = values.size
    if size >= _BRACKET_MIN_SIZE:
        sample = np.sort(values[:: size // _BRACKET_SAMPLE])
        spread = 5.0 * np.sqrt(sample.size) + 2
        low = sample[max(0, int(min(ranks) / size * sample.size - spread))]
        high = sample[min(sample.size - 1, int(max(ranks) / size * sample.size + spread))]
        below = int(np.count_nonzero(values < low))
        between = values[(values >= low) & (values <= high)]
        if below <= min(ranks) and max(ranks) < below + between.size:
            between.partition([rank - below for rank in ranks])
            return [float(between[rank - below]) for rank in ranks]
    values.partition(ranks)
    return [float(values[rank]) for rank in ranks]


def _median_in_place(values: np.ndarray) -> float:
    """Median of a 1-d array of finite values, as `numpy.median` gives it; ``values`` may be reordered."""
    k = values.size // 2
    if values.size % 2:
        return _order_statistics(values, [k])[0]
    lower, upper = _order_statistics(values, [k - 1, k])
    return 0.5 * (lower + upper)


def _median_and_sigma(band: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 * median absolute deviation of the valid pixels of one band.

    ``(0, 1)`` without valid pixels; the sigma is 1 where the MAD is zero.  One float32 copy of the valid
    pixels is partitioned in place; the deviations are computed in float64 and rounded to float32 once.
    """
    good = band[~bad] if bad.any() else band.ravel().copy()
    if good.size == 0:
        return 0.0, 1.0
    center = _median_in_place(good)
    np.subtract(good, np.float64(center), out=good, casting="unsafe")
    np.abs(good, out=good)
    sigma = 1.4826 * _median_in_place(good)
    return center, sigma if sigma > 0 else 1.0


def _valid_stats(values: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the valid pixels (0, 1 if there are none or no spread).

    ``values`` and ``bad`` are ``[H, W]`` or ``[C, H, W]``; sums are accumulated in float64 over blocks of
    rows, so no float64 copy of the data is made.
    """
    rows = values.reshape(-1, values.shape[-1])
    bad_rows = bad.reshape(rows.shape)
    count = rows.size - int(np.count_nonzero(bad_rows))
    if count == 0:
        return 0.0, 1.0
    blocks = [slice(start, start + _ROW_BLOCK) for start in range(0, rows.shape[0], _ROW_BLOCK)]
    mean = sum(float(rows[b].sum(dtype=np.float64, where=~bad_rows[b])) for b in blocks) / count
    squares = 0.0
    for block in blocks:
        deviation = rows[block] - np.float64(mean)
        np.square(deviation, out=deviation)
        squares += float(deviation.sum(where=~bad_rows[block]))
    std = math.sqrt(squares / count)
    return mean, std if std > 0 else 1.0


def _standardise(plane: np.ndarray, center: float, scale: float, amplitude: float) -> None:
    """``plane = (plane - center) / scale * amplitude`` in place (the difference rounded once)."""
    np.subtract(plane, np.float64(center), out=plane, casting="unsafe")
    plane *= np.float32(amplitude / scale)


def _lupton_in_place(
    data: np.ndarray, bad: np.ndarray, stretch: float, Q: float, minimum: Any, flux_scale: float
) -> None:
    """The Lupton asinh scaling of a prepared cube, in place (see `lupton_asinh`)."""
    n_bands = data.shape[0]
    minimum_arr = np.broadcast_to(np.asarray(minimum, dtype=np.float64), (n_bands,))
    intensity = np.zeros(data.shape[1:], dtype=np.float32)
    for b in range(n_bands):
        plane = data[b]
        if minimum_arr[b] != 0.0:
            plane -= np.float32(minimum_arr[b])
        if flux_scale != 1.0:
            plane *= np.float32(flux_scale)
        np.copyto(plane, 0.0, where=bad[b])
        intensity += plane
    intensity /= np.float32(n_bands)
    # factor = asinh(Q I / stretch) / (Q I) where I > 0, else 0; intensity becomes Q I.
    positive = intensity > 0
    intensity *= np.float32(Q)
    factor = intensity / np.float32(stretch)
    np.arcsinh(factor, out=factor)
    np.divide(factor, intensity, out=factor, where=positive)
    factor *= positive  # 0 where I <= 0.
    del positive
    peak = intensity  # Reused: the running per-pixel maximum over bands.
    peak.fill(0.0)
    for plane in data:
        plane *= factor
        np.maximum(plane, 0.0, out=plane)
        np.maximum(peak, plane, out=peak)
    del factor
    # Colour-preserving saturation: divide by the peak where it exceeds 1 (dividing by 1 elsewhere).
    np.maximum(peak, 1.0, out=peak)
    for plane in data:
        plane /= peak
        np.minimum(plane, 1.0, out=plane)


BandMask = Callable[[int, slice], np.ndarray]
"""``bad_of(band, rows)``: the ``[len(rows), W]`` invalid mask of one band (non-finite or flagged)."""

_NO_STATISTICS: dict[str, Any] = {}


def _array_band_mask(cube: np.ndarray, invalid: np.ndarray | None) -> BandMask:
    """`BandMask` of a cube and an optional ``[C, H, W]`` or ``[H, W]`` invalid mask."""
    given = None if invalid is None else np.broadcast_to(np.asarray(invalid, dtype=bool), cube.shape)

    def bad_of(band: int, rows: slice = slice(None)) -> np.ndarray:
        bad = ~np.isfinite(cube[band, rows])
        if given is not None:
            bad |= given[band, rows]
        return bad

    return bad_of


def _row_blocks(height: int) -> list[slice]:
    return [slice(start, start + _ROW_BLOCK) for start in range(0, height, _ROW_BLOCK)]


def _prepare_rows(cube: np.ndarray, bad_of: BandMask, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """`_prepare` of a block of rows, its invalid mask from ``bad_of``."""
    window = cube[:, rows]
    return _prepare(window, np.stack([bad_of(b, rows) for b in range(cube.shape[0])]))


def _pooled_stats(cube: np.ndarray, bad_of: BandMask) -> tuple[float, float]:
    """Mean and standard deviation of the valid pixels of all bands together (0, 1 if undefined)."""
    count, total = 0, 0.0
    for b in range(cube.shape[0]):
        for rows in _row_blocks(cube.shape[1]):
            good = ~bad_of(b, rows)
            count += int(np.count_nonzero(good))
            total += float(cube[b, rows].sum(dtype=np.float64, where=good))
    if count == 0:
        return 0.0, 1.0
    mean = total / count
    squares = 0.0
    for b in range(cube.shape[0]):
        for rows in _row_blocks(cube.shape[1]):
            deviation = cube[b, rows] - np.float64(mean)
            np.square(deviation, out=deviation)
            squares += float(deviation.sum(where=~bad_of(b, rows)))
    std = math.sqrt(squares / count)
    return mean, std if std > 0 else 1.0


# --- the scalings: statistics over the whole image, then a transform of any window ----------------------


def _lupton_statistics(cube: np.ndarray, bad_of: BandMask, **params: Any) -> dict[str, Any]:
    return _NO_STATISTICS


def _lupton_transform(data: np.ndarray, bad: np.ndarray, stats: dict[str, Any], **params: Any) -> None:
    _lupton_in_place(data, bad, params["stretch"], params["Q"], params["minimum"], params["flux_scale"])


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
    return _scale("lupton", image, invalid, stretch=stretch, Q=Q, minimum=minimum, flux_scale=flux_scale)


def _high_contrast_statistics(cube: np.ndarray, bad_of: BandMask, **params: Any) -> dict[str, Any]:
    """The pivot: mean of the brightened Lupton cube over valid pixels and bands (by blocks of rows)."""
    count, total = 0, 0.0
    for rows in _row_blocks(cube.shape[1]):
        data, bad = _prepare_rows(cube, bad_of, rows)
        _lupton_transform(data, bad, _NO_STATISTICS, **params)
        _finish(data)
        data *= np.float32(params["brightness"])
        np.clip(data, 0.0, 1.0, out=data)
        count += bad.size - int(np.count_nonzero(bad))
        total += float(data.sum(dtype=np.float64, where=~bad))
    return {"pivot": total / count if count else 0.0}


def _high_contrast_transform(data: np.ndarray, bad: np.ndarray, stats: dict[str, Any], **params: Any) -> None:
    _lupton_transform(data, bad, stats, **params)
    _finish(data)
    pivot, contrast = stats["pivot"], params["contrast"]
    for b, plane in enumerate(data):
        plane *= np.float32(params["brightness"])
        np.clip(plane, 0.0, 1.0, out=plane)
        np.subtract(plane, np.float64(pivot), out=plane, casting="unsafe")
        plane *= np.float32(contrast)
        plane += np.float32(pivot)
        np.clip(plane, 0.0, 1.0, out=plane)
        np.copyto(plane, np.float32(min(max(pivot - contrast * pivot, 0.0), 1.0)), where=bad[b])


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
    params = dict(stretch=stretch, Q=Q, minimum=minimum, flux_scale=flux_scale)
    return _scale("lupton_high_contrast", image, invalid, **params, brightness=brightness, contrast=contrast)


def _zscore_statistics(cube: np.ndarray, bad_of: BandMask, **params: Any) -> dict[str, Any]:
    mean, std = _pooled_stats(cube, bad_of)
    return {"mean": mean, "std": std}


def _zscore_transform(data: np.ndarray, bad: np.ndarray, stats: dict[str, Any], **params: Any) -> None:
    for plane in data:
        _standardise(plane, stats["mean"], stats["std"], params["amplitude"])
        if params["quantize_int16"]:
            np.round(plane, out=plane)
            np.clip(plane, -32768, 32767, out=plane)


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
    return _scale("zscore", image, invalid, amplitude=amplitude, quantize_int16=quantize_int16)


def _zscore_per_band_statistics(cube: np.ndarray, bad_of: BandMask, **params: Any) -> dict[str, Any]:
    pick = _median_and_sigma if params["robust"] else _valid_stats
    centers, scales = zip(*(pick(cube[b], bad_of(b)) for b in range(cube.shape[0])), strict=True)
    return {"centers": centers, "scales": scales}


def _zscore_per_band_transform(
    data: np.ndarray, bad: np.ndarray, stats: dict[str, Any], **params: Any
) -> None:
    for b, plane in enumerate(data):
        _standardise(plane, stats["centers"][b], stats["scales"][b], params["amplitude"])


@register_scaling("zscore_per_band")
def zscore_per_band(
    image: np.ndarray,
    invalid: np.ndarray | None = None,
    *,
    amplitude: float = 1.0,
    robust: bool = False,
) -> np.ndarray:
    """Per-band z-score: each band minus its own mean (median if ``robust``), over its own std (MAD)."""
    return _scale("zscore_per_band", image, invalid, amplitude=amplitude, robust=robust)


def _asinh_statistics(cube: np.ndarray, bad_of: BandMask, **params: Any) -> dict[str, Any]:
    if params["softening"] is not None:
        soft = np.asarray(params["softening"], dtype=np.float64)
        if soft.shape != (cube.shape[0],):
            raise ValueError(
                f"softening needs one value per band ({cube.shape[0]}), got {params['softening']}"
            )
    else:
        sigma = params["softening_sigma"]
        soft = np.array([sigma * _median_and_sigma(cube[b], bad_of(b))[1] for b in range(cube.shape[0])])
    if np.any(soft <= 0):
        raise ValueError(f"softening must be positive, got {soft.tolist()}")
    return {"softening": soft}


def _asinh_transform(data: np.ndarray, bad: np.ndarray, stats: dict[str, Any], **params: Any) -> None:
    for plane, soft in zip(data, stats["softening"], strict=True):
        plane /= np.float32(soft)
        np.arcsinh(plane, out=plane)


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
    return _scale("asinh_per_band", image, invalid, softening_sigma=softening_sigma, softening=softening)


def _linear_transform(data: np.ndarray, bad: np.ndarray, stats: dict[str, Any], **params: Any) -> None:
    if params["scale"] != 1.0:
        data *= np.float32(params["scale"])


@register_scaling("linear")
def linear(image: np.ndarray, invalid: np.ndarray | None = None, *, scale: float = 1.0) -> np.ndarray:
    """Raw fluxes times ``scale`` (the network's pixel mean/std then normalise)."""
    return _scale("linear", image, invalid, scale=scale)


_PHASES: dict[str, tuple[Callable[..., dict[str, Any]], Callable[..., None]]] = {
    "lupton": (_lupton_statistics, _lupton_transform),
    "lupton_high_contrast": (_high_contrast_statistics, _high_contrast_transform),
    "zscore": (_zscore_statistics, _zscore_transform),
    "zscore_per_band": (_zscore_per_band_statistics, _zscore_per_band_transform),
    "asinh_per_band": (_asinh_statistics, _asinh_transform),
    "linear": (_lupton_statistics, _linear_transform),
}
"""Statistics and window transform of the built-in scalings (`ScaledCube` scales windows with them)."""


def _check_cube(image: np.ndarray) -> np.ndarray:
    cube = np.asarray(image)
    if cube.ndim != 3:
        raise ValueError(f"scalings take a [C, H, W] cube, got shape {cube.shape}")
    return cube


def _scale(name: str, image: np.ndarray, invalid: np.ndarray | None, **params: Any) -> np.ndarray:
    """A whole cube through a built-in scaling's two phases (statistics, then the transform in place)."""
    statistics, transform = _PHASES[name]
    cube = _check_cube(image)
    stats = statistics(cube, _array_band_mask(cube, invalid), **params)
    data, bad = _prepare(cube, invalid)
    transform(data, bad, stats, **params)
    return _finish(data)


class ScaledCube:
    """A scaled ``[C, H, W]`` cube computed window by window, never held whole.

    The scaling's statistics (medians, MADs, means) are taken over the whole image when the cube is made;
    indexing ``cube[:, y0:y1, x0:x1]`` then scales just that window, with the same float32 operations as
    the whole-cube scaling, so a window equals the same window of `ScalingSpec.apply` to float32 rounding.
    `numpy.asarray` gives the whole cube.  Tiled inference reads its tiles this way: the scaled patch
    never exists at once (a 4k x 4k 6-band patch saves 400 MB).

    Parameters
    ----------
    image : `MultibandImage`
        The image; its cubes are read, never modified, and must not change while the cube is used.
    spec : `ScalingSpec`
        The scaling; its ``invalid_planes`` and the non-finite pixels are invalid.
    """

    def __init__(self, image: MultibandImage, spec: ScalingSpec) -> None:
        if spec.name not in _PHASES:
            raise ValueError(f"scaling {spec.name!r} has no window form; use ScalingSpec.apply")
        self._image = image
        self._bits = image.plane_bits(spec.invalid_planes)
        self._statistics, self._transform = _PHASES[spec.name]
        self._params = spec.full_params()
        self.shape: tuple[int, int, int] = tuple(image.image.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self._stats = self._statistics(image.image, self._band_mask, **self._params)

    def _band_mask(self, band: int, rows: slice = slice(None), columns: slice = slice(None)) -> np.ndarray:
        bad = ~np.isfinite(self._image.image[band, rows, columns])
        if self._bits and self._image.mask is not None:
            bad |= (self._image.mask[band, rows, columns] & self._bits) != 0
        return bad

    def window(self, rows: slice, columns: slice) -> np.ndarray:
        """The scaled ``[C, h, w]`` window ``[:, rows, columns]`` (a new float32 array)."""
        pixels = self._image.image[:, rows, columns]
        bad = np.stack([self._band_mask(b, rows, columns) for b in range(self.shape[0])])
        data, bad = _prepare(pixels, bad)
        self._transform(data, bad, self._stats, **self._params)
        return _finish(data)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None):
            rows, columns = key[1], key[2]
            if isinstance(rows, slice) and isinstance(columns, slice) and rows.step in (None, 1):
                if columns.step in (None, 1):
                    return self.window(rows, columns)
        return np.asarray(self)[key]

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(np.asarray(self))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self.window(slice(None), slice(None))
        return whole if dtype is None else whole.astype(dtype)


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

    def full_params(self) -> dict[str, Any]:
        """The scaling function's keyword defaults updated with `params`.

        Raises
        ------
        TypeError
            If `params` names a parameter the scaling does not take.
        """
        signature = inspect.signature(SCALINGS.get(self.name))
        signature.bind(None, None, **self.params)  # Unknown parameters fail as a call would.
        defaults = {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if parameter.kind is parameter.KEYWORD_ONLY and parameter.default is not parameter.empty
        }
        return {**defaults, **self.params}

    def scaled_cube(self, image: MultibandImage) -> ScaledCube | np.ndarray:
        """The scaled image to read window by window (a `ScaledCube`: statistics now, pixels when read).

        Invalid pixels are those of `invalid_planes` and the non-finite ones, as in `apply`.  A scaling
        registered without a window form is applied to the whole image (an array is returned).
        """
        if self.name in _PHASES:
            return ScaledCube(image, self)
        return self.apply(image)[0]

    def apply(
        self, image: MultibandImage, invalid: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scale a `MultibandImage`.

        Parameters
        ----------
        image : `MultibandImage`
            The image; it is not modified.
        invalid : `numpy.ndarray`, optional
            ``[C, H, W]`` boolean mask of the invalid pixels when the caller has it already:
            ``image.invalid_pixels(self.invalid_planes)``, which is computed when not given.

        Returns
        -------
        scaled : `numpy.ndarray`
            ``float32`` ``[C, H, W]``, finite everywhere.
        invalid : `numpy.ndarray`
            ``[C, H, W]`` boolean mask of the pixels that were invalid.
        """
        if invalid is None:
            invalid = image.invalid_pixels(self.invalid_planes)
        elif np.shape(invalid) != image.image.shape:
            raise ValueError(f"invalid must be [C, H, W] = {image.image.shape}, got {np.shape(invalid)}")
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
