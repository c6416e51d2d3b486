"""Contrast scalings: registry, parameters, NaN / NO_DATA handling."""

from __future__ import annotations

import numpy as np
import pytest

from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage
from lsst.meas.extensions.deepdisc.core.scaling import SCALINGS, ScalingSpec, lupton_asinh, zscore

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
