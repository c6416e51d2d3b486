"""Scarlet model archives: upstream on-disk layout, round trips, legacy JSON, rendering."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from scipy import signal

from lsst.meas.extensions.deepdisc.core.footprints import spans_to_mask
from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage
from lsst.meas.extensions.deepdisc.core.scarlet_io import (
    FactorizedComponentData,
    HierarchicalBlendData,
    IsolatedSourceData,
    ModelRenderer,
    ScarletBlendData,
    ScarletFormatError,
    ScarletModelData,
    ScarletSourceData,
    decode_metadata,
    difference_kernel,
    encode_metadata,
    read_scarlet_models,
    render_source_model,
    scarlet_models_to_bytes,
    write_scarlet_models,
)
from lsst.meas.extensions.deepdisc.sim.presets import get_preset
from lsst.meas.extensions.deepdisc.sim.scarlet_archive import (
    deblended_from_model_data,
    model_data_from_deblended,
)

from sim_fixtures import MODEL_PSF_SIGMA, PSF_SIGMA, gaussian_image, gaussian_patch

RNG = np.random.default_rng(42)
BANDS = ("g", "r", "i")
PSF = RNG.random((3, 5, 5)).astype(np.float32)
MODEL_PSF = RNG.random((5, 5)).astype(np.float32)
MORPH = RNG.random((4, 6)).astype(np.float32)
SPECTRUM = np.array([1.5, 2.25, 3.125], dtype=np.float32)
SPANS = RNG.random((10, 12)) > 0.4
ISO_SPAN = RNG.random((3, 4)) > 0.5


def _upstream_archive() -> bytes:
    """An archive written with zipfile + json exactly as meas_extensions_scarlet would write it."""
    metadata = {
        "model_psf": [float(v) for v in MODEL_PSF.flatten()],
        "model_psf_shape": [5, 5],
        "model_psf_dtype": "float32",
        "psf": [float(v) for v in PSF.flatten()],
        "psf_shape": [3, 5, 5],
        "psf_dtype": "float32",
        "bands": list(BANDS),
        "array_keys": ["model_psf", "psf"],
    }
    component = {
        "origin": [12, 21],
        "shape": [4, 6],
        "peak": [14, 23],
        "spectrum": [float(v) for v in SPECTRUM],
        "morph": [float(v) for v in MORPH.flatten()],
        "component_type": "factorized",
        "version": "1.0.0",
    }
    source = {
        "source_type": "source",
        "components": [component],
        "version": "1.0.0",
        "metadata": {"peak_id": 7, "id": 1001},
    }
    blend = {
        "blend_type": "blend",
        "origin": [10, 20],
        "shape": [10, 12],
        "sources": {"1001": source},
        "version": "1.0.0",
    }
    parent = {
        "blend_type": "hierarchical",
        "children": {"1002": blend},
        "version": "1.0.0",
        "metadata": {
            "spans": [bool(v) for v in SPANS.flatten()],
            "spans_shape": [10, 12],
            "spans_dtype": "bool",
            "origin": [10, 20],
            "array_keys": ["spans"],
        },
    }
    isolated = {
        "origin": [40, 50],
        "shape": [3, 4],
        "peak": [41.0, 52.0],
        "span_array": [float(v) for v in ISO_SPAN.flatten()],
        "source_type": "isolated",
        "version": "1.0.0",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("1000", json.dumps(parent))
        archive.writestr("2000", json.dumps(isolated))
        archive.writestr("metadata", json.dumps(metadata))
        archive.writestr("version", json.dumps("1.0.1"))
    return buffer.getvalue()


def test_reads_hand_made_upstream_archive() -> None:
    data = read_scarlet_models(_upstream_archive())
    assert data.version == "1.0.1"
    assert data.bands == BANDS
    np.testing.assert_array_equal(data.psf, PSF)
    np.testing.assert_array_equal(data.model_psf, MODEL_PSF)
    assert data.psf.dtype == np.float32
    assert set(data.blends) == {1000} and set(data.isolated) == {2000}
    parent = data.blends[1000]
    assert isinstance(parent, HierarchicalBlendData)
    mask, origin = parent.footprint()
    np.testing.assert_array_equal(mask, SPANS)
    assert origin == (10, 20)
    child = parent.children[1002]
    assert isinstance(child, ScarletBlendData)
    assert (child.origin, child.shape) == ((10, 20), (10, 12))
    source = child.sources[1001]
    assert source.metadata == {"peak_id": 7, "id": 1001}
    (component,) = source.components
    assert isinstance(component, FactorizedComponentData)
    assert component.origin == (12, 21) and component.peak == (14, 23)
    np.testing.assert_array_equal(component.morph, MORPH)
    np.testing.assert_array_equal(component.spectrum, SPECTRUM)
    iso = data.isolated[2000]
    np.testing.assert_array_equal(iso.span_array != 0, ISO_SPAN)
    assert iso.origin == (40, 50) and iso.peak == (41, 52)
    assert [(p, s) for p, s, _ in data.iter_sources()] == [(1000, 1001)]


def _members(payload: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _same_json(a, b) -> bool:
    """Same structure and keys; numbers equal once cast to float32 (the precision of the format)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return np.float32(a) == np.float32(b)
    return a == b


def test_writer_reproduces_upstream_members_exactly() -> None:
    upstream = _upstream_archive()
    data = read_scarlet_models(upstream)
    exact = _members(scarlet_models_to_bytes(data, compress=False, compact=False))
    assert exact == _members(upstream)
    compact = _members(scarlet_models_to_bytes(data))
    assert list(compact) == list(exact)
    for name, text in exact.items():
        assert _same_json(json.loads(text), json.loads(compact[name])), name
    assert sum(map(len, compact.values())) < 0.8 * sum(map(len, exact.values()))


def test_round_trip_is_exact_and_bytes_are_reproducible(tmp_path) -> None:
    data = read_scarlet_models(_upstream_archive())
    path = tmp_path / "models.scarlet"
    write_scarlet_models(data, path)
    again = read_scarlet_models(path)
    assert again == data
    assert scarlet_models_to_bytes(again) == path.read_bytes()
    with open(path, "rb") as stream:
        assert read_scarlet_models(stream) == data
    plain = scarlet_models_to_bytes(data, compress=False, compact=False)
    assert len(path.read_bytes()) < len(plain)
    assert read_scarlet_models(plain) == data
    # A changed value makes the models differ.
    again.blends[1000].children[1002].sources[1001].components[0].morph[0, 0] += 1.0
    assert again != data


def test_partial_read_and_missing_ids() -> None:
    archive = _upstream_archive()
    only_isolated = read_scarlet_models(archive, blend_ids=[2000])
    assert set(only_isolated.isolated) == {2000} and not only_isolated.blends
    assert only_isolated.bands == BANDS
    with pytest.raises(KeyError, match="999"):
        read_scarlet_models(archive, blend_ids=[999])


def test_reads_pre_2025_single_json_layout() -> None:
    zipped = read_scarlet_models(_upstream_archive())
    document = json.dumps(zipped.as_dict()).encode()
    assert read_scarlet_models(document) == zipped
    # Pre-schema files: model PSF at the top level, no version, blends without blend_type.
    legacy = {
        "psf": [float(v) for v in MODEL_PSF.flatten()],
        "psfShape": [5, 5],
        "blends": {"5": {"origin": [0, 0], "shape": [4, 6], "sources": {"6": {"factorized": []}}}},
    }
    old = read_scarlet_models(json.dumps(legacy).encode())
    np.testing.assert_array_equal(old.model_psf, MODEL_PSF)
    assert old.version == "0.0.0"
    assert isinstance(old.blends[5], ScarletBlendData) and old.blends[5].sources[6].components == []


def test_malformed_input_is_reported() -> None:
    with pytest.raises(ScarletFormatError, match="neither a zip"):
        read_scarlet_models(b"GARBAGE")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("1", json.dumps({"blend_type": "mystery", "children": {}}))
    with pytest.raises(ScarletFormatError, match="mystery"):
        read_scarlet_models(buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("1", "{not json")
    with pytest.raises(ScarletFormatError, match="not valid JSON"):
        read_scarlet_models(buffer.getvalue())
    bad_shape = {"origin": [0, 0], "shape": [3, 3], "peak": [1, 1], "spectrum": [1.0], "morph": [1.0, 2.0]}
    with pytest.raises(ScarletFormatError, match="inconsistent with shape"):
        FactorizedComponentData.from_dict(bad_shape)


def test_metadata_encoding_round_trip() -> None:
    metadata = {
        "flags": np.array([[True, False]]),
        "counts": np.arange(6, dtype=np.int64).reshape(2, 3),
        "values": np.linspace(0, 1, 4, dtype=np.float32),
        "origin": (3, 4),
        "name": "x",
    }
    encoded = encode_metadata(metadata)
    assert encoded["array_keys"] == ["flags", "counts", "values"]
    assert encoded["counts_dtype"] == "int64" and encoded["counts_shape"] == [2, 3]
    decoded = decode_metadata(json.loads(json.dumps(encoded)))
    for key in ("flags", "counts", "values"):
        np.testing.assert_array_equal(decoded[key], metadata[key])
        assert decoded[key].dtype == metadata[key].dtype
    assert decoded["origin"] == [3, 4] and decoded["name"] == "x"
    legacy = decode_metadata({"psf": [1.0, 2.0], "psfShape": [1, 2], "array_keys": ["psf"]})
    assert legacy["psf"].shape == (1, 2) and legacy["psf"].dtype == np.float32


def _gaussian_psf(sigma: float, size: int = 21) -> np.ndarray:
    kernel = gaussian_image((size, size), size // 2, size // 2, sigma)
    return kernel / kernel.sum()


def test_identical_psfs_render_spectrum_times_morph() -> None:
    psf = _gaussian_psf(1.2, 9)
    source = ScarletSourceData(
        components=[FactorizedComponentData(origin=(5, 7), peak=(6, 9), spectrum=SPECTRUM, morph=MORPH)]
    )
    expected = SPECTRUM[:, None, None] * MORPH[None]
    model, origin = render_source_model(source, BANDS, np.stack([psf] * 3), psf, observed=False)
    np.testing.assert_array_equal(model, expected)
    assert origin == (5, 7)
    observed, obs_origin = render_source_model(source, BANDS, {b: psf for b in BANDS}, psf, observed=True)
    assert obs_origin == (5 - 4, 7 - 4)
    np.testing.assert_allclose(observed[:, 4:-4, 4:-4], expected, rtol=1e-6, atol=1e-7)
    border = observed.copy()
    border[:, 4:-4, 4:-4] = 0
    assert np.abs(border).max() < 1e-6


def test_difference_kernel_maps_model_psf_to_observed_psf() -> None:
    model_psf = _gaussian_psf(0.8)
    observed = _gaussian_psf(1.7)
    kernel = difference_kernel(model_psf, observed)
    assert kernel.shape == observed.shape
    assert kernel.sum() == pytest.approx(1.0)
    reconstructed = signal.convolve(model_psf, kernel, mode="same")
    assert np.abs(reconstructed - observed).max() < 2e-3 * observed.max()
    with pytest.raises(ValueError, match="odd sides"):
        difference_kernel(np.ones((4, 4)), observed)


def test_observed_rendering_matches_analytic_convolution() -> None:
    sigma_model, sigma_psf, sigma_source = 0.8, 1.6, 1.5
    sigma_morph = np.hypot(sigma_source, sigma_model)
    morph = gaussian_image((31, 31), 15, 15, sigma_morph)
    morph /= morph.max()
    spectrum = np.array([100.0, 200.0], dtype=np.float32)
    renderer = ModelRenderer(["a", "b"], [_gaussian_psf(sigma_psf)] * 2, _gaussian_psf(sigma_model))
    source = ScarletSourceData(
        components=[FactorizedComponentData(origin=(0, 0), peak=(15, 15), spectrum=spectrum, morph=morph)]
    )
    model, origin = renderer.render(source)
    assert origin == (-10, -10)
    sigma_observed = np.hypot(sigma_source, sigma_psf)
    total = morph.sum()
    expected = gaussian_image(model.shape[1:], 25, 25, sigma_observed) * total
    for band in range(2):
        np.testing.assert_allclose(model[band], spectrum[band] * expected, atol=2e-3 * spectrum[band])
        assert model[band].sum() == pytest.approx(spectrum[band] * total, rel=1e-3)
    with pytest.raises(ValueError, match="bands"):
        ModelRenderer(["a"], [_gaussian_psf(1.0)], _gaussian_psf(0.8)).render(source)


@pytest.fixture(scope="module")
def gaussian_sim():
    return gaussian_patch(get_preset("tiny"), 0, 0, 0, seed=3)


def test_deblended_round_trip_through_the_archive(gaussian_sim) -> None:
    sim = gaussian_sim
    data = model_data_from_deblended(sim.blends, sim.image.bands, sim.psf_images, sim.model_psf)
    assert data.bands == sim.image.bands
    n_isolated = sum(1 for b in sim.blends if len(b.children) == 1 and b.children[0].is_isolated)
    assert len(data.isolated) == n_isolated and len(data.blends) == len(sim.blends) - n_isolated
    again = read_scarlet_models(scarlet_models_to_bytes(data))
    assert again == data
    back = {b.parent_id: b for b in deblended_from_model_data(again)}
    assert set(back) == {b.parent_id for b in sim.blends}
    for blend in sim.blends:
        other = back[blend.parent_id]
        assert other.origin == blend.origin and tuple(other.shape) == tuple(blend.shape)
        np.testing.assert_array_equal(other.spans, blend.spans)
        children = {c.source_id: c for c in other.children}
        for child in blend.children:
            copy = children[child.source_id]
            np.testing.assert_array_equal(copy.morph, child.morph)
            np.testing.assert_array_equal(copy.spectrum, child.spectrum)
            assert copy.origin == tuple(child.origin) and copy.is_isolated == child.is_isolated
            assert copy.peak == (round(child.peak[0]), round(child.peak[1]))


def test_rendered_models_reproduce_the_noise_free_sources(gaussian_sim) -> None:
    sim = gaussian_sim
    data = model_data_from_deblended(sim.blends, sim.image.bands, sim.psf_images, sim.model_psf)
    renderer = data.renderer()
    truth_by_peak = {(round(float(r["x"])), round(float(r["y"]))): r for r in sim.truth}
    sources = [s for _, _, s in data.iter_sources()] + list(data.isolated.values())
    assert len(sources) == len(sim.truth)
    for source in sources:
        model, (y0, x0) = renderer.render(source)
        peak_y, peak_x = source.peak if isinstance(source, IsolatedSourceData) else source.components[0].peak
        row = truth_by_peak[(peak_x, peak_y)]
        for b, band in enumerate(sim.image.bands):
            sigma = np.hypot(float(row["size"]) / 0.2, PSF_SIGMA[band])
            expected = float(row[f"flux_{band}"]) * gaussian_image(
                model.shape[1:], float(row["x"]) - x0, float(row["y"]) - y0, sigma
            )
            assert np.abs(model[b] - expected).max() < 5e-3 * expected.max()
    assert MODEL_PSF_SIGMA < min(PSF_SIGMA.values())


def test_isolated_sources_need_the_image_or_a_stored_model(gaussian_sim) -> None:
    sim = gaussian_sim
    bare = model_data_from_deblended(
        sim.blends, sim.image.bands, sim.psf_images, sim.model_psf, keep_isolated_models=False
    )
    source_id, isolated = next(iter(bare.isolated.items()))
    assert isolated.metadata is None
    with pytest.raises(ValueError, match="render_isolated"):
        bare.renderer().render(isolated)
    model, (y0, x0) = ModelRenderer.render_isolated(isolated, sim.image)
    height, width = isolated.span_array.shape
    local = sim.image.image[
        :, y0 - sim.image.xy0[1] : y0 - sim.image.xy0[1] + height, x0 - sim.image.xy0[0] :
    ]
    np.testing.assert_array_equal(model, local[:, :, :width] * (isolated.span_array != 0))
    restored = {b.parent_id: b for b in deblended_from_model_data(bare)}
    child = next(c for b in restored.values() for c in b.children if c.source_id == source_id)
    assert child.is_isolated and np.all(np.isnan(child.spectrum))
    mask = spans_to_mask(restored[child.parent_id].spans, (height, width), (x0, y0))
    np.testing.assert_array_equal(mask, isolated.span_array != 0)


def test_conversion_rejects_inconsistent_input(gaussian_sim) -> None:
    sim = gaussian_sim
    with pytest.raises(ValueError, match="spectrum values"):
        model_data_from_deblended(sim.blends, ("g", "r"), sim.psf_images, sim.model_psf)
    with pytest.raises(ValueError, match="no PSF"):
        model_data_from_deblended(sim.blends, sim.image.bands, {"g": sim.psf_images["g"]}, sim.model_psf)


def test_model_data_accessors_and_equality() -> None:
    empty = ScarletModelData()
    with pytest.raises(ScarletFormatError, match="bands"):
        _ = empty.bands
    data = ScarletModelData.make(BANDS, PSF, MODEL_PSF, note="sim")
    assert data.metadata["note"] == "sim" and len(data) == 0
    assert data == read_scarlet_models(scarlet_models_to_bytes(data))
    image = MultibandImage(bands=BANDS, image=np.zeros((3, 4, 4)))
    assert image.bands == data.bands
