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
"""The contrast scalings as they were computed before they went float32: on a float64 copy of the cube.

`reference_scaling` is what ``core.scaling`` computed up to commit ``7cc524d`` (whole-cube float64 arrays,
then a cast to float32).  The benchmarks run the detection task once with it, and with one forward call
at a time on contiguous weights (the inference of that commit), to check that the fast path finds the same
sources on the same patch.
"""

from __future__ import annotations

__all__ = ["reference_scaling"]

from typing import Any

import numpy as np


def _stats(values: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    good = values[~bad]
    if good.size == 0:
        return 0.0, 1.0
    std = float(good.std())
    return float(good.mean()), std if std > 0 else 1.0


def _robust(values: np.ndarray, bad: np.ndarray) -> tuple[float, float]:
    good = values[~bad]
    if good.size == 0:
        return 0.0, 1.0
    center = float(np.median(good))
    sigma = 1.4826 * float(np.median(np.abs(good - center)))
    return center, sigma if sigma > 0 else 1.0


def _lupton(
    data: np.ndarray, bad: np.ndarray, stretch: float, Q: float, minimum: Any, flux_scale: float
) -> np.ndarray:
    minimum_arr = np.broadcast_to(np.asarray(minimum, dtype=np.float64), (data.shape[0],))
    data = (data - minimum_arr[:, None, None]) * flux_scale
    data[bad] = 0.0
    intensity = data.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(intensity > 0, np.arcsinh(Q * intensity / stretch) / (Q * intensity), 0.0)
    scaled = np.clip(data * factor, 0.0, None)
    peak = scaled.max(axis=0)
    scaled = np.where(peak > 1.0, scaled / np.maximum(peak, 1e-30), scaled)
    return np.clip(scaled, 0.0, 1.0)


def reference_scaling(
    name: str, image: np.ndarray, invalid: np.ndarray | None = None, **params: Any
) -> np.ndarray:
    """Scale ``[C, H, W]`` fluxes with the registered scaling ``name``, in float64, as before.

    Parameters
    ----------
    name : `str`
        A scaling of ``core.scaling.SCALINGS``.
    image : `numpy.ndarray`
        ``[C, H, W]`` fluxes.
    invalid : `numpy.ndarray`, optional
        ``[C, H, W]`` (or ``[H, W]``) boolean mask of pixels without data.
    **params
        The scaling's parameters.

    Returns
    -------
    scaled : `numpy.ndarray`
        ``float32 [C, H, W]``, invalid pixels at the scaled value of zero flux.
    """
    data = np.array(image, dtype=np.float64)
    bad = ~np.isfinite(data)
    if invalid is not None:
        bad |= np.broadcast_to(np.asarray(invalid, dtype=bool), data.shape)
    data[bad] = 0.0
    lupton_keys = ("stretch", "Q", "minimum", "flux_scale")
    lupton_params = {"stretch": 0.5, "Q": 10.0, "minimum": 0.0, "flux_scale": 1.0}
    lupton_params.update({key: value for key, value in params.items() if key in lupton_keys})
    if name == "lupton":
        out = _lupton(data, bad, **lupton_params)
    elif name == "lupton_high_contrast":
        brightness, contrast = params.get("brightness", 2.0), params.get("contrast", 2.0)
        base = _lupton(data, bad, **lupton_params).astype(np.float32).astype(np.float64)
        bright = np.clip(base * brightness, 0.0, 1.0)
        pivot, _ = _stats(bright, bad)
        out = np.clip(pivot + contrast * (bright - pivot), 0.0, 1.0)
        out[bad] = np.clip(pivot + contrast * (0.0 - pivot), 0.0, 1.0)
    elif name == "zscore":
        mean, std = _stats(data, bad)
        out = (data - mean) / std * params.get("amplitude", 1000.0)
        if params.get("quantize_int16", False):
            out = np.clip(np.round(out), -32768, 32767)
    elif name == "zscore_per_band":
        pick = _robust if params.get("robust", False) else _stats
        out = np.empty_like(data)
        for b in range(data.shape[0]):
            center, scale = pick(data[b], bad[b])
            out[b] = (data[b] - center) / scale * params.get("amplitude", 1.0)
    elif name == "asinh_per_band":
        if params.get("softening") is not None:
            soft = np.asarray(params["softening"], dtype=np.float64)
        else:
            sigma = params.get("softening_sigma", 1.0)
            soft = np.array([sigma * _robust(data[b], bad[b])[1] for b in range(data.shape[0])])
        out = np.arcsinh(data / soft[:, None, None])
    elif name == "linear":
        out = data * params.get("scale", 1.0)
    else:
        raise KeyError(f"no reference implementation of scaling {name!r}")
    out = np.asarray(out, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out
