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

"""The morphology core: cutouts, classifiers, safe packages, training, metrics, label matching, tables."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from astropy.table import Table

from lsst.meas.extensions.deepdisc.core.footprints import flatten_spans, mask_to_spans
from lsst.meas.extensions.deepdisc.core.model_package import ModelPackageError
from lsst.meas.extensions.deepdisc.core.morphology import (
    ClassifierTrainingConfig,
    CutoutConfig,
    CutoutError,
    MorphologyPackage,
    accuracy_by_bin,
    build_classifier,
    catalog_cutouts,
    classify,
    confusion_matrix,
    evaluate_classification,
    make_cutouts,
    match_labels,
    morphology_table,
    neighbour_fraction,
    select_galaxies,
    top_k_accuracy,
    train_classifier,
)
from lsst.meas.extensions.deepdisc.core.multiband import DEFAULT_MASK_PLANES, MultibandImage


def _image(shape=(120, 100), xy0=(1000, 2000), noise=2.0, seed=0) -> MultibandImage:
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, noise, (3, *shape)).astype(np.float32)
    mask = np.zeros((3, *shape), dtype=np.int32)
    return MultibandImage(
        bands=("g", "r", "i"),
        image=image,
        variance=np.full((3, *shape), noise**2, np.float32),
        mask=mask,
        mask_planes=dict(DEFAULT_MASK_PLANES),
        xy0=xy0,
    )


def _disc_spans(cx: int, cy: int, radius: int, shape=(400, 400)) -> np.ndarray:
    y, x = np.indices(shape)
    return mask_to_spans(np.hypot(x - cx, y - cy) <= radius)


def test_cutout_planes_hdr_no_data_and_object_mask() -> None:
    image = _image()
    x0, y0 = image.xy0
    # A bright source at parent (1050, 2060), NO_DATA on the first 10 columns of the patch.
    image.image[:, 55:66, 45:56] += 1000.0
    image.mask[:, :, :10] |= 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    image.image[:, :, :10] = np.nan
    spans = mask_to_spans(np.pad(np.ones((11, 11), bool), 0), xy0=(x0 + 45, y0 + 55))
    config = CutoutConfig(size=32, mask_dilation=2, softening=3.0)
    cutouts, binning = make_cutouts(image, [spans], np.array([[x0 + 50.0, y0 + 60.0]]), config)
    assert cutouts.shape == (1, 5, 32, 32) and cutouts.dtype == np.float32
    assert binning.tolist() == [1]
    assert np.isfinite(cutouts).all()
    centre = cutouts[0, :3, 16, 16]
    # HDR: asinh of 1000 / (3 x 2): no clipping, far above the sky.
    np.testing.assert_allclose(centre, np.arcsinh(1000.0 / 6.0), rtol=0.05)
    # The cutout starts at patch column 34, clear of the NO_DATA columns; the 11 px square mask is dilated
    # by a disc of 2 px (its corners stay cut).
    assert cutouts[0, 3].sum() == 0.0
    assert cutouts[0, 4].sum() == pytest.approx((11 + 4) ** 2 - 4 * 3, abs=8)
    # Near the NO_DATA edge: the plane marks it and the bands are 0 there.
    cutouts, _ = make_cutouts(image, [spans], np.array([[x0 + 12.0, y0 + 60.0]]), config)
    no_data = cutouts[0, 3]
    assert no_data[:, :14].all() and not no_data[:, 14:].any()  # 4 columns outside, 10 NO_DATA
    assert (cutouts[0, :3][:, no_data.astype(bool)] == 0).all()


def test_big_footprints_are_binned_to_fit() -> None:
    image = _image(shape=(300, 300), xy0=(0, 0), noise=1.0)
    image.image[:, 100:200, 100:200] += 5.0
    big = _disc_spans(150, 150, 60)
    small = _disc_spans(150, 150, 8)
    config = CutoutConfig(size=32, max_binning=4)
    cutouts, binning = make_cutouts(image, [big, small], np.array([[150.0, 150.0], [150.0, 150.0]]), config)
    assert binning.tolist() == [4, 1]
    # Binned by 4, the noise of the binned plane stays ~1 (units of its own noise): the plateau of 5 sigma
    # per pixel becomes 20 sigma per binned pixel.
    np.testing.assert_allclose(np.sinh(cutouts[0, 0, 16, 16]) * 3.0, 20.0, rtol=0.15)
    assert cutouts[0, 4].sum() > 0.8 * np.pi * (60 / 4) ** 2


def test_cutout_errors() -> None:
    image = _image()
    with pytest.raises(CutoutError, match="empty footprint"):
        make_cutouts(image, [np.zeros((0, 3), np.int32)], np.zeros((1, 2)), CutoutConfig())
    with pytest.raises(CutoutError, match="2 footprints for 1 centres"):
        make_cutouts(image, [_disc_spans(1, 1, 1)] * 2, np.zeros((1, 2)), CutoutConfig())
    with pytest.raises(CutoutError, match="at least 8"):
        CutoutConfig(size=4)
    dead = _image()
    dead.variance[1] = 0.0
    dead.image[1] = 0.0
    with pytest.raises(CutoutError, match="band 'r'"):
        make_cutouts(
            dead,
            [_disc_spans(1050, 2050, 3, shape=(2200, 1200))],
            np.array([[1050.0, 2050.0]]),
            CutoutConfig(),
        )


@pytest.mark.parametrize("architecture", ["compact_cnn", "swin"])
def test_classifiers_build_from_data(architecture: str) -> None:
    model = build_classifier({"architecture": architecture, "in_channels": 5, "num_classes": 4}).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 5, 64, 64))
    assert out.shape == (2, 4)
    with pytest.raises(ValueError, match="unknown morphology architecture"):
        build_classifier({"architecture": "os.system", "in_channels": 5, "num_classes": 4})
    with pytest.raises(ValueError, match="unknown parameter"):
        build_classifier({"architecture": architecture, "in_channels": 5, "num_classes": 4, "evil": 1})


def _package(**kwargs) -> MorphologyPackage:
    classifier = {"architecture": "compact_cnn", "in_channels": 5, "num_classes": 3, "width": 8}
    model = build_classifier(classifier)
    fields = dict(
        name="morph-test",
        version="1",
        classifier=classifier,
        state_dict=model.state_dict(),
        bands=["g", "r", "i"],
        class_names=["E", "S", "Irr"],
        cutout=CutoutConfig(size=32),
        metrics={"validation_top1": 0.5},
    )
    fields.update(kwargs)
    return MorphologyPackage(**fields)


def test_package_round_trip_and_safety(tmp_path) -> None:
    package = _package()
    path = package.save(tmp_path / "morph.zip")
    loaded = MorphologyPackage.load(path)
    assert loaded == package and loaded.to_bytes() == package.to_bytes()
    assert loaded.cutout == CutoutConfig(size=32)
    assert loaded.channel_names == ["g", "r", "i", "no_data", "object_mask"]
    model = loaded.build_model()
    with torch.no_grad():
        assert model(torch.zeros(1, 5, 32, 32)).shape == (1, 3)
    assert "morph-test" in loaded.summary()
    # A member replaced by a pickle, or a package of the other kind, is refused.
    data = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package.to_bytes())) as src, zipfile.ZipFile(data, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        dst.writestr("payload.pkl", b"cos\nsystem\n")
    with pytest.raises(ModelPackageError, match="unexpected member"):
        MorphologyPackage.from_bytes(data.getvalue())
    from lsst.meas.extensions.deepdisc.core.model_package import ModelPackage

    with pytest.raises(ModelPackageError, match="deepdisc-morphology-package"):
        ModelPackage.from_bytes(package.to_bytes())
    with pytest.raises(ModelPackageError, match="5 planes|make 5"):
        _package(classifier={"architecture": "compact_cnn", "in_channels": 4, "num_classes": 3})
    with pytest.raises(ModelPackageError, match="3 class names"):
        _package(classifier={"architecture": "compact_cnn", "in_channels": 5, "num_classes": 2})
    wrong = _package(state_dict={"head.1.weight": torch.zeros(3, 3)})
    with pytest.raises(ModelPackageError, match="do not fit"):
        wrong.build_model()


def _toy_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes a CNN must tell apart from shape alone: compact blobs and rings."""
    rng = np.random.default_rng(seed)
    y, x = np.indices((24, 24)) - 11.5
    r = np.hypot(x, y)
    labels = rng.integers(0, 2, n)
    cutouts = rng.normal(0.0, 0.3, (n, 3, 24, 24)).astype(np.float32)
    blob = np.exp(-0.5 * (r / 2.5) ** 2)
    ring = np.exp(-0.5 * ((r - 7.0) / 1.2) ** 2)
    cutouts += np.where(labels[:, None, None, None] == 0, blob, ring).astype(np.float32)
    return cutouts, labels


@pytest.mark.parametrize("imbalance", ["none", "balanced_sampling", "loss_weights"])
def test_training_learns_a_separable_problem(imbalance: str) -> None:
    train_x, train_y = _toy_set(256, 1)
    val_x, val_y = _toy_set(128, 2)
    classifier = {"architecture": "compact_cnn", "in_channels": 3, "num_classes": 2, "width": 8}
    config = ClassifierTrainingConfig(epochs=4, batch_size=32, learning_rate=3e-3, imbalance=imbalance)
    model, history = train_classifier(classifier, train_x, train_y, config, validation=(val_x, val_y))
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4]
    probabilities = classify(model, val_x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert top_k_accuracy(probabilities, val_y, 1) >= 0.9
    assert max(entry["val_top1"] for entry in history) == pytest.approx(
        top_k_accuracy(probabilities, val_y, 1)
    )
    with pytest.raises(ValueError, match="labels must be in"):
        train_classifier(classifier, train_x, train_y + 5, config)
    with pytest.raises(ValueError, match="imbalance"):
        ClassifierTrainingConfig(imbalance="oversample")


def test_metrics() -> None:
    probabilities = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])
    labels = np.array([0, 2, 2, 0])
    assert top_k_accuracy(probabilities, labels, 1) == 0.25
    assert top_k_accuracy(probabilities, labels, 2) == 0.75
    assert top_k_accuracy(probabilities, labels, 3) == 1.0
    matrix = confusion_matrix(labels, probabilities.argmax(1), 3)
    assert matrix.tolist() == [[1, 0, 1], [0, 0, 0], [1, 1, 0]]
    # Errors: 0->2 (not a neighbour), 2->0 (not), 2->1 (neighbour).
    assert neighbour_fraction(matrix) == pytest.approx(1 / 3)
    bins = accuracy_by_bin(
        np.array([0.1, 0.2, 1.5, 1.6]), np.array([True, False, True, True]), np.array([0, 1, 2])
    )
    assert bins["n"].tolist() == [2, 2] and bins["accuracy"].tolist() == [0.5, 1.0]
    evaluation = evaluate_classification(probabilities, labels, ["a", "b", "c"], size=np.ones(4))
    assert evaluation.top2 == 0.75 and evaluation.per_class_recall["a"] == 0.5
    assert np.isnan(evaluation.per_class_recall["b"])
    assert evaluation.summary()["n"] == 4


def test_label_matching_is_one_to_one_and_nearest_first() -> None:
    arcsec = 1 / 3600
    det_ra = np.array([10.0, 10.0 + 2 * arcsec, 10.0 + 10 * arcsec])
    det_dec = np.zeros(3) + 1.0
    # Two labels near detection 0 (0.2" and 0.4"); one near detection 1; none near detection 2.
    lab_ra = np.array([10.0 + 0.4 * arcsec, 10.0 + 0.2 * arcsec, 10.0 + 2.1 * arcsec, 11.0])
    lab_dec = np.ones(4)
    match = match_labels(det_ra, det_dec, lab_ra, lab_dec, radius_arcsec=0.6)
    assert match.detection.tolist() == [0, 1]
    assert match.label.tolist() == [1, 2]
    np.testing.assert_allclose(
        match.distance, [0.2 * np.cos(np.radians(1.0)), 0.1 * np.cos(np.radians(1.0))], rtol=1e-3
    )
    assert len(match_labels(det_ra, det_dec, lab_ra[:0], lab_dec[:0], 1.0).detection) == 0
    # A survey-wide catalog reaching the other side of the sky: those labels are left out, not an error, and
    # the indices still point into the full label arrays.
    far = match_labels(det_ra, det_dec, np.r_[190.0, lab_ra], np.r_[-1.0, lab_dec], radius_arcsec=0.6)
    assert far.detection.tolist() == [0, 1] and far.label.tolist() == [2, 3]
    assert len(match_labels(det_ra, det_dec, np.array([190.0]), np.array([-1.0]), 0.6).detection) == 0


def _catalog() -> Table:
    catalog = Table()
    catalog["id"] = np.array([11, 12, 13, 14], dtype=np.int64)
    catalog["class_name"] = ["galaxy", "star", "galaxy", "galaxy"]
    catalog["is_artifact"] = [False, False, False, False]
    catalog["footprint_area"] = np.array([200, 200, 200, 5], dtype=np.int32)
    catalog["i_footprintFlux"] = [10 ** (-0.4 * (21 - 31.4)), 1e6, 10 ** (-0.4 * (24 - 31.4)), 1e6]
    catalog["centroid_x"] = [1040.0, 1050.0, 1060.0, 1070.0]
    catalog["centroid_y"] = [2060.0] * 4
    catalog["footprint"] = [
        flatten_spans(_disc_spans(int(x), 2060, 5, shape=(2200, 1200))) for x in catalog["centroid_x"]
    ]
    return catalog


def test_selection_cutouts_and_table_from_a_catalog() -> None:
    catalog = _catalog()
    selected = select_galaxies(catalog, ["galaxy"], "i", max_magnitude=23.0, min_area=20)
    assert selected.tolist() == [True, False, False, False]
    assert select_galaxies(catalog, ["galaxy"], "i", None).tolist() == [True, False, True, True]
    with pytest.raises(CutoutError, match="z_footprintFlux"):
        select_galaxies(catalog, ["galaxy"], "z", 23.0)
    with pytest.raises(CutoutError, match="lacks column"):
        select_galaxies(catalog[["id"]], ["galaxy"], "i", None)
    cutouts, binning = catalog_cutouts(_image(), catalog[selected], CutoutConfig(size=16))
    assert cutouts.shape == (1, 5, 16, 16) and binning.tolist() == [2]  # 11 px + 2 x 3 px dilation, x 1.25
    probabilities = np.array([[0.1, 0.7, 0.2]])
    table = morphology_table(catalog["id"][selected], probabilities, ["E", "S", "Irr"], binning)
    assert table["id"].tolist() == [11]
    assert table["morph_class"].tolist() == ["S"] and table["morph_second_class"].tolist() == ["Irr"]
    assert table["morph_prob"][0] == pytest.approx(0.7)
    assert table["morph_prob_E"][0] == pytest.approx(0.1)
    empty = morphology_table(np.zeros(0, np.int64), np.zeros((0, 3)), ["E", "S", "Irr"], np.zeros(0))
    assert len(empty) == 0 and "morph_prob_Irr" in empty.colnames


def test_morphology_task_run_errors_and_empty_selection() -> None:
    from lsst.meas.extensions.deepdisc.core.multiband import MissingBandError
    from lsst.meas.extensions.deepdisc.tasks.morphology import (
        DeepDiscMorphologyConfig,
        DeepDiscMorphologyTask,
    )

    config = DeepDiscMorphologyConfig()
    config.numThreads = 1
    task = DeepDiscMorphologyTask(config=config)
    catalog = _catalog()
    galaxies = catalog[task.select(catalog)]
    assert galaxies["id"].tolist() == [11]
    package = _package(bands=["g", "r", "z"])
    with pytest.raises(MissingBandError, match=r"needs band\(s\) \['z'\]"):
        task.run(galaxies, _image(), package)
    result = task.run(galaxies, _image(), _package())
    assert result.morphology["id"].tolist() == [11]
    assert result.morphology["morph_class"][0] in ("E", "S", "Irr")
    empty = task.run(galaxies[:0], None, _package())
    assert len(empty.morphology) == 0 and "morph_prob_E" in empty.morphology.colnames


def test_absent_bands_are_zero_planes_and_band_dropout() -> None:
    from lsst.meas.extensions.deepdisc.core.morphology import drop_bands

    image = _image()
    x0, y0 = image.xy0
    image.image[:, 55:66, 45:56] += 500.0
    spans = mask_to_spans(np.ones((11, 11), bool), xy0=(x0 + 45, y0 + 55))
    centre = np.array([[x0 + 50.0, y0 + 60.0]])
    config = CutoutConfig(size=32)
    full, _ = make_cutouts(image, [spans], centre, config)
    subset, _ = make_cutouts(image.select_bands(["g", "i"]), [spans], centre, config, bands=["g", "r", "i"])
    assert subset.shape == full.shape
    np.testing.assert_allclose(subset[0, [0, 2]], full[0, [0, 2]], rtol=1e-4, atol=1e-3)
    assert not subset[0, 1].any()
    np.testing.assert_array_equal(subset[0, 3:], full[0, 3:])
    with pytest.raises(CutoutError, match="not classifier bands"):
        make_cutouts(image, [spans], centre, config, bands=["g", "r"])
    batch = torch.ones(64, 5, 4, 4)
    dropped = drop_bands(batch, 3, 1.0, torch.Generator().manual_seed(0))
    kept = dropped[:, :3].flatten(1).any(dim=1)
    assert kept.all()  # never all bands
    assert (dropped[:, :3].sum(dim=(2, 3)) == 0).any(dim=1).float().mean() > 0.5
    assert torch.equal(dropped[:, 3:], batch[:, 3:])
    assert torch.equal(drop_bands(batch, 3, 0.0, torch.Generator()), batch)


def test_package_min_bands() -> None:
    from lsst.meas.extensions.deepdisc.core.multiband import MissingBandError

    strict = _package()
    assert strict.usable_bands(["g", "r", "i", "z"]) == ["g", "r", "i"]
    with pytest.raises(MissingBandError, match=r"needs band\(s\) \['r'\] \(all of its bands"):
        strict.usable_bands(["g", "i"])
    flexible = _package(min_bands=2)
    assert MorphologyPackage.from_bytes(flexible.to_bytes()).min_bands == 2
    assert flexible.usable_bands(["i", "g"]) == ["g", "i"]
    with pytest.raises(MissingBandError, match="at least 2 of its bands"):
        flexible.usable_bands(["i"])
    with pytest.raises(ModelPackageError, match="min_bands"):
        _package(min_bands=4)
    assert "min_bands" not in strict.metadata_dict()


def test_cli_loads_either_kind_of_package_by_its_manifest(tmp_path) -> None:
    from lsst.meas.extensions.deepdisc.cli.model import load_any_package
    from lsst.meas.extensions.deepdisc.core.model_package import declared_format

    path = _package().save(tmp_path / "morph.zip")
    with path.open("rb") as stream:
        assert declared_format(stream, str(path)) == "deepdisc-morphology-package"
    assert isinstance(load_any_package(path), MorphologyPackage)
    with pytest.raises(FileNotFoundError, match="no model package file"):
        load_any_package(tmp_path / "missing.zip")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ModelPackageError, match="not a readable zip archive"):
        load_any_package(tmp_path / "junk.zip")
