"""The optional afw SourceCatalog/HeavyFootprint output: a clear error without afw, real output with it."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.deepdisc.butler.afw_catalog import (
    AFW_MISSING_MESSAGE,
    afw_available,
    make_source_catalog,
)
from lsst.meas.extensions.deepdisc.core.catalog import build_catalog
from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans
from lsst.meas.extensions.deepdisc.core.ids import IdPacker
from lsst.meas.extensions.deepdisc.core.inference import Detections
from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage


def _catalog() -> tuple[Table, MultibandImage]:
    image = MultibandImage(
        bands=("g", "r"), image=np.ones((2, 20, 30)), variance=np.ones((2, 20, 30)), xy0=(100, 50)
    )
    masks = [np.zeros((20, 30), bool), np.zeros((20, 30), bool)]
    masks[0][2:6, 3:9] = True
    masks[1][10:15, 20:25] = True
    detections = Detections(
        boxes=np.array([[103, 52, 109, 56], [120, 60, 125, 65]], float),
        scores=np.array([0.9, 0.7], np.float32),
        class_ids=np.array([1, 0], np.int32),
        class_probs=np.array([[0.1, 0.9], [0.7, 0.3]], np.float32),
        footprints=[mask_to_spans(m, xy0=image.xy0) for m in masks],
        tile_index=np.zeros(2, np.int32),
        merged_duplicate=np.zeros(2, bool),
    )
    catalog = build_catalog(
        detections,
        image,
        class_names=("star", "galaxy"),
        tract=1,
        patch=2,
        model_name="m",
        model_version="1",
        id_packer=IdPacker(n_tracts_bits=16, n_patches_bits=12),
    )
    return catalog, image


@pytest.mark.skipif(afw_available(), reason="lsst.afw is installed: the error path does not apply")
def test_clear_error_without_afw() -> None:
    catalog, image = _catalog()
    with pytest.raises(ImportError, match="lsst.afw is not installed") as info:
        make_source_catalog(catalog, image)
    assert str(info.value) == AFW_MISSING_MESSAGE
    assert "doWriteSourceCatalog=False" in AFW_MISSING_MESSAGE


@pytest.mark.skipif(not afw_available(), reason="lsst.afw is not installed (Rubin stack only)")
def test_source_catalog_with_heavy_footprints() -> None:
    catalog, image = _catalog()
    sources = make_source_catalog(catalog, image, heavy_band="r")
    assert len(sources) == 2
    for record, row in zip(sources, catalog):
        assert record.getId() == row["id"]
        footprint = record.getFootprint()
        assert footprint.isHeavy()
        assert footprint.getArea() == row["footprint_area"]
        assert record.get("deepdisc_score") == pytest.approx(row["score"])
