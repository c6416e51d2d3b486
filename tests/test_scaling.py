"""Contrast scalings: registry, parameters, NaN / NO_DATA handling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage
from lsst.meas.extensions.deepdisc.core.scaling import (
    SCALINGS,
    ScaledCube,
    ScalingSpec,
    lupton_asinh,
    zscore,
)

ALL_SCALINGS = list(SCALINGS)


def _cube(n_bands: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cube = rng.normal(0.0, 1.0, (n_bands, size, size)).astype(np.float32)
    cube[:, 10:14, 10:14] += np.linspace(50, 200, n_bands)[:, None, None]  # a coloured source
    return cube


def test_registry_lists_the_documented_scalings() -> None:
    assert {"lupton", "lupton_high_contrast", "zscore", "zscore_per_band", "asinh_per_band", "linear"} <= set(
        ALL_SCALINGS
    )
    with pytest.raises(KeyError, match="unknown scaling 'nope'.*known scalings"):
        SCALINGS.get("nope")
    with pytest.raises(KeyError):
        ScalingSpec(name="nope")


@pytest.mark.parametrize("name", ALL_SCALINGS)
@pytest.mark.parametrize("n_bands", [1, 3, 6])
def test_nan_and_nodata_never_reach_the_network(name: str, n_bands: int) -> None:
    cube = _cube(n_bands)
    invalid = np.zeros(cube.shape, bool)
    cube[:, 0, :] = np.nan
    cube[0, 1, 1] = np.inf
    invalid[:, 5:8, 5:8] = True
    cube[:, 5:8, 5:8] = 1e30  # garbage under NO_DATA must not influence anything
    out = SCALINGS.get(name)(cube, invalid)
    assert out.dtype == np.float32 and out.shape == cube.shape
    assert np.all(np.isfinite(out))
    # Invalid pixels look like zero flux: same value as scaling a clean cube with zeros there.
    clean = _cube(n_bands)
    clean[:, 0, :] = 0.0
    clean[0, 1, 1] = 0.0
    clean[:, 5:8, 5:8] = 0.0
    mask_only = np.zeros(cube.shape, bool)
    mask_only[:, 0, :] = True
    mask_only[0, 1, 1] = True
    mask_only[:, 5:8, 5:8] = True
    np.testing.assert_allclose(out, SCALINGS.get(name)(clean, mask_only), rtol=1e-5, atol=1e-6)


def test_lupton_preserves_colour_and_is_bounded() -> None:
    cube = np.zeros((3, 4, 4), np.float32)
    cube[:, 1, 1] = [1.0, 2.0, 4.0]
    cube[:, 2, 2] = [100.0, 200.0, 400.0]  # saturates: colour kept by dividing by the max
    out = lupton_asinh(cube, None, stretch=0.5, Q=10)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[:, 1, 1] / out[2, 1, 1], [0.25, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 2, 2], [0.25, 0.5, 1.0], rtol=1e-6)
    # Formula check for an unsaturated pixel: x_b * asinh(Q I / stretch) / (Q I).
    intensity = cube[:, 1, 1].mean()
    expected = cube[:, 1, 1] * np.arcsinh(10 * intensity / 0.5) / (10 * intensity)
    if expected.max() <= 1:
        np.testing.assert_allclose(out[:, 1, 1], expected, rtol=1e-6)


def test_zscore_uses_valid_pixels_only_and_quantises() -> None:
    cube = _cube(3)
    invalid = np.zeros(cube.shape, bool)
    invalid[:, :4] = True
    out = zscore(cube, invalid, amplitude=1.0)
    valid = ~invalid
    assert out[valid].mean() == pytest.approx(0.0, abs=1e-5)
    assert out[valid].std() == pytest.approx(1.0, rel=1e-4)
    q = zscore(cube, None, amplitude=1000.0, quantize_int16=True)
    assert np.all(q == np.round(q)) and q.max() <= 32767 and q.min() >= -32768


def test_spec_round_trip_and_multiband_apply() -> None:
    spec = ScalingSpec(name="asinh_per_band", params={"softening_sigma": 2.0})
    assert ScalingSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown scaling spec keys"):
        ScalingSpec.from_dict({"name": "linear", "bogus": 1})
    cube = _cube(3)
    mask = np.zeros(cube.shape, np.int32)
    mask[1, 3, 3] = 1 << 8  # NO_DATA in one band
    image = MultibandImage(bands=("g", "r", "i"), image=cube, mask=mask)
    scaled, invalid = spec.apply(image)
    assert invalid[1, 3, 3] and invalid.sum() == 1
    assert scaled[1, 3, 3] == 0.0  # asinh(0)
    with pytest.raises(ValueError, match="one value per band"):
        ScalingSpec(name="asinh_per_band", params={"softening": [1.0, 2.0]}).apply_array(cube)


# --- The float32, in-place scalings against a straightforward float64 implementation -------------------


def _reference(name: str, image: np.ndarray, invalid: np.ndarray | None, **params: Any) -> np.ndarray:
    """The scalings as formulas on a float64 copy (what the package computed before it went float32)."""
    data = np.array(image, dtype=np.float64)
    bad = ~np.isfinite(data)
    if invalid is not None:
        bad |= np.broadcast_to(invalid, data.shape)
    data[bad] = 0.0

    def stats(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        good = values[~mask]
        return (0.0, 1.0) if good.size == 0 else (good.mean(), good.std() or 1.0)

    def median_sigma(values: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        good = values[~mask]
        if good.size == 0:
            return 0.0, 1.0
        center = np.median(good)
        return center, 1.4826 * np.median(np.abs(good - center)) or 1.0

    def lupton(stretch=0.5, Q=10.0, minimum=0.0, flux_scale=1.0) -> np.ndarray:
        shifted = (data - np.broadcast_to(minimum, (data.shape[0],))[:, None, None]) * flux_scale
        shifted[bad] = 0.0
        intensity = shifted.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(intensity > 0, np.arcsinh(Q * intensity / stretch) / (Q * intensity), 0.0)
        scaled = np.clip(shifted * factor, 0.0, None)
        peak = scaled.max(axis=0)
        return np.clip(np.where(peak > 1.0, scaled / np.maximum(peak, 1e-30), scaled), 0.0, 1.0)

    if name == "lupton":
        return lupton(**params)
    if name == "lupton_high_contrast":
        brightness, contrast = params.pop("brightness", 2.0), params.pop("contrast", 2.0)
        bright = np.clip(lupton(**params) * brightness, 0.0, 1.0)
        pivot, _ = stats(bright, bad)
        out = np.clip(pivot + contrast * (bright - pivot), 0.0, 1.0)
        out[bad] = np.clip(pivot - contrast * pivot, 0.0, 1.0)
        return out
    if name == "zscore":
        mean, std = stats(data, bad)
        out = (data - mean) / std * params.get("amplitude", 1000.0)
        return np.clip(np.round(out), -32768, 32767) if params.get("quantize_int16") else out
    if name == "zscore_per_band":
        pick = median_sigma if params.get("robust") else stats
        return np.stack(
            [(d - pick(d, m)[0]) / pick(d, m)[1] * params.get("amplitude", 1.0) for d, m in zip(data, bad)]
        )
    if name == "asinh_per_band":
        soft = params.get("softening") or [
            params.get("softening_sigma", 1.0) * median_sigma(d, m)[1] for d, m in zip(data, bad)
        ]
        return np.arcsinh(data / np.asarray(soft)[:, None, None])
    if name == "linear":
        return data * params.get("scale", 1.0)
    raise AssertionError(f"no reference for {name}")


def _sky(n_bands: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A coadd-like cube: band-dependent noise and offsets, bright sources, NaN and NO_DATA pixels."""
    rng = np.random.default_rng(seed)
    cube = rng.normal(0.0, 1.0, (n_bands, height, width)) * rng.uniform(0.5, 3.0, (n_bands, 1, 1))
    cube += rng.uniform(-0.5, 0.5, (n_bands, 1, 1))
    y, x = np.mgrid[:height, :width]
    for cy, cx, flux, size in zip(
        rng.uniform(0, height, 40),
        rng.uniform(0, width, 40),
        10 ** rng.uniform(0, 5, 40),
        rng.uniform(1, 4, 40),
    ):
        profile = flux * np.exp(-0.5 * ((y - cy) ** 2 + (x - cx) ** 2) / size**2)
        cube += profile * rng.uniform(0.2, 1.5, (n_bands, 1, 1))
    cube = cube.astype(np.float32)
    invalid = np.zeros(cube.shape, dtype=bool)
    invalid[:, : height // 10] = True  # a NO_DATA strip in every band
    invalid[-1, :, -3:] = True  # and some columns in one band only
    cube[invalid] = 1e30  # garbage under NO_DATA
    cube[0, height // 2, :5] = np.nan
    return cube, invalid


REFERENCE_CASES = [
    ("lupton", {}),
    ("lupton", {"stretch": 2.0, "Q": 3.0, "minimum": 0.5, "flux_scale": 0.1}),
    ("lupton_high_contrast", {}),
    ("zscore", {"amplitude": 1000.0}),
    ("zscore", {"amplitude": 1.0}),
    ("zscore_per_band", {}),
    ("zscore_per_band", {"robust": True, "amplitude": 10.0}),
    ("asinh_per_band", {}),
    ("asinh_per_band", {"softening_sigma": 3.0}),
    ("linear", {"scale": 0.01}),
]


@pytest.mark.parametrize(("name", "params"), REFERENCE_CASES)
@pytest.mark.parametrize(("n_bands", "height", "width"), [(1, 64, 63), (3, 80, 80), (6, 97, 120)])
def test_float32_scalings_agree_with_a_float64_reference(
    name: str, params: dict[str, Any], n_bands: int, height: int, width: int
) -> None:
    cube, invalid = _sky(n_bands, height, width, seed=n_bands * height)
    if name == "asinh_per_band" and "softening" in params:
        params = {**params, "softening": params["softening"][:n_bands]}
    out = SCALINGS.get(name)(cube, invalid, **params)
    expected = _reference(name, cube, invalid, **dict(params))
    assert out.dtype == np.float32 and out.shape == cube.shape and np.all(np.isfinite(out))
    # Float32 rounding only: a few units of float32 precision relative to each value (or to the
    # value range, for values that are differences of large numbers).
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6 * scale)


def test_int16_quantised_zscore_differs_from_the_reference_by_rounding_ties_only() -> None:
    cube, invalid = _sky(3, 90, 90, seed=3)
    out = zscore(cube, invalid, amplitude=1000.0, quantize_int16=True)
    expected = _reference("zscore", cube, invalid, amplitude=1000.0, quantize_int16=True)
    differ = out != expected
    assert np.abs(out - expected).max() <= 1.0 and differ.mean() < 1e-3


def test_scaling_a_cube_costs_no_float64_copy() -> None:
    import tracemalloc

    cube, invalid = _sky(6, 512, 512, seed=1)
    float32_bytes = cube.nbytes
    for name in ("lupton", "asinh_per_band", "zscore", "lupton_high_contrast"):
        tracemalloc.start()
        try:
            SCALINGS.get(name)(cube, invalid)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The float32 result (1), its mask (0.25) and per-band or per-row temporaries; a float64 copy is 2.
        assert peak < 1.8 * float32_bytes, f"{name}: peak {peak / float32_bytes:.2f} x the float32 cube"


def _sky_image(n_bands: int = 4, height: int = 150, width: int = 170) -> MultibandImage:
    cube, invalid = _sky(n_bands, height, width, seed=7)
    mask = np.where(invalid, np.int32(1 << 8), np.int32(0))  # NO_DATA where the cube holds garbage
    mask[0, 5, 5] |= 1 << 3  # and a plane the scaling does not treat as invalid
    return MultibandImage(bands=tuple("grizy"[:n_bands]), image=cube, mask=mask)


@pytest.mark.parametrize(("name", "params"), REFERENCE_CASES)
def test_scaled_cube_windows_are_the_windows_of_the_whole_scaled_cube(
    name: str, params: dict[str, Any]
) -> None:
    image = _sky_image()
    spec = ScalingSpec(name=name, params=params)
    whole, _ = spec.apply(image)
    lazy = spec.scaled_cube(image)
    assert isinstance(lazy, ScaledCube) and lazy.shape == whole.shape and lazy.dtype == np.float32
    # Overlapping windows of several shapes, edges included: the same statistics, the same pixels.
    for rows, columns in [
        (slice(0, 64), slice(0, 64)),
        (slice(40, 150), slice(101, 170)),
        (slice(7, 8), slice(None)),
    ]:
        window = lazy[:, rows, columns]
        assert window.dtype == np.float32 and np.all(np.isfinite(window))
        np.testing.assert_allclose(window, whole[:, rows, columns], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(lazy), whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lazy[1], whole[1], rtol=1e-6, atol=1e-6)  # Other keys: via the whole cube.


def test_scaled_cube_checks_parameters_and_falls_back_for_scalings_without_a_window_form() -> None:
    image = _sky_image()
    with pytest.raises(TypeError):
        ScalingSpec(name="lupton", params={"strech": 0.5}).scaled_cube(image)
    spec = ScalingSpec(name="lupton", params={"Q": 3.0})
    assert spec.full_params() == {"stretch": 0.5, "Q": 3.0, "minimum": 0.0, "flux_scale": 1.0}
    SCALINGS.register("test_only_doubling")(lambda cube, invalid=None: 2.0 * np.nan_to_num(cube))
    try:
        scaled = ScalingSpec(name="test_only_doubling", invalid_planes=()).scaled_cube(image)
        assert isinstance(scaled, np.ndarray) and scaled.shape == image.image.shape
    finally:
        SCALINGS._functions.pop("test_only_doubling")


@pytest.mark.parametrize("size", [4001, 4000])
def test_medians_bracketed_from_a_sample_are_the_selected_medians(monkeypatch, size: int) -> None:
    """Sample-bracketed order statistics equal a full partition's, and fall back when the sample misses."""
    from lsst.meas.extensions.deepdisc.core import scaling

    monkeypatch.setattr(scaling, "_BRACKET_MIN_SIZE", 1000)
    monkeypatch.setattr(scaling, "_BRACKET_SAMPLE", 64)
    rng = np.random.default_rng(size)
    cases = {
        "normal": rng.normal(size=size),
        "ties": np.round(rng.normal(size=size) * 3) / 3,
        "constant": np.full(size, 2.5),
        "skewed": rng.lognormal(sigma=3.0, size=size),
        "sorted": np.sort(rng.normal(size=size)),
    }
    # Every 62nd value (the strided sample's) far above the rest: the bounds miss, the array is partitioned.
    misleading = rng.normal(size=size)
    misleading[:: size // 64] = 1e6
    cases["misleading sample"] = misleading
    for name, values in cases.items():
        values = values.astype(np.float32)
        ordered = np.sort(values)
        k = size // 2
        expected = float(ordered[k]) if size % 2 else 0.5 * (float(ordered[k - 1]) + float(ordered[k]))
        assert scaling._median_in_place(values.copy()) == expected, name
