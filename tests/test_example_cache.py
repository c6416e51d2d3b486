"""The training-example file cache: exact round trips, atomic files, rebuilds of unreadable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsst.meas.extensions.deepdisc.core.example_cache import (
    ExampleCache,
    cache_key,
    load_examples,
    save_examples,
)
from lsst.meas.extensions.deepdisc.core.training_data import InstanceLabel, TrainingExample


def _example(seed: int, size: int, with_valid: bool = True, n_labels: int = 3) -> TrainingExample:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(2, size, size)).astype(np.float32)
    labels = [
        InstanceLabel(
            np.array([[y, 1, 3], [y + 1, 2, 4]], dtype=np.int32),
            class_id=index % 2,
            source_id=1000 + index,
            magnitude=20.5 + index,
            blendedness=0.1 * index if index else float("nan"),
        )
        for index, y in enumerate(range(0, min(n_labels * 2, size - 1), 2))
    ]
    valid = rng.random((size, size)) > 0.3 if with_valid else None
    return TrainingExample(
        image, labels, f"ex{seed}", ("g", "r"), valid=valid, metadata={"xy0": [seed, 2], "tile": [0, 0, 5, 5]}
    )


def _assert_same(a: TrainingExample, b: TrainingExample) -> None:
    assert a.example_id == b.example_id and a.bands == b.bands and a.metadata == b.metadata
    assert np.array_equal(a.image, b.image) and a.image.dtype == b.image.dtype
    assert (a.valid is None) == (b.valid is None)
    if a.valid is not None:
        assert np.array_equal(a.valid, b.valid)
    assert len(a.instances) == len(b.instances)
    for x, y in zip(a.instances, b.instances):
        assert np.array_equal(x.spans, y.spans)
        assert (x.class_id, x.source_id, x.magnitude) == (y.class_id, y.source_id, y.magnitude)
        assert x.blendedness == y.blendedness or (np.isnan(x.blendedness) and np.isnan(y.blendedness))


@pytest.mark.parametrize("sizes", [(6, 6, 6), (6, 8, 7)])
def test_round_trip_is_exact(tmp_path: Path, sizes: tuple[int, ...]) -> None:
    examples = [_example(seed, size, with_valid=seed != 1) for seed, size in enumerate(sizes)]
    examples.append(_example(9, sizes[0], n_labels=0))  # A tile without labels.
    loaded = load_examples(save_examples(tmp_path / "a.npz", examples))
    assert len(loaded) == len(examples)
    for a, b in zip(examples, loaded):
        _assert_same(a, b)
    # Every example owns its pixels: none keeps the whole stacked array of its file alive.
    for a, b in zip(loaded, loaded[1:]):
        assert not np.shares_memory(a.image, b.image)
        assert a.image.base is None or a.image.base.nbytes <= a.image.nbytes
    assert load_examples(save_examples(tmp_path / "empty.npz", [])) == []
    assert not list(tmp_path.glob(".*tmp")), "no temporary file is left behind"


def test_cache_builds_once_then_reads_and_rebuilds_a_broken_file(tmp_path: Path) -> None:
    cache = ExampleCache(tmp_path / "cache")
    calls = []

    def build() -> list[TrainingExample]:
        calls.append(1)
        return [_example(3, 6)]

    key = cache_key({"refs": {"labels": "abc"}, "settings": {"tileSize": 512}})
    first = cache.get_or_build(key, build)
    second = cache.get_or_build(key, build)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    _assert_same(first[0], second[0])
    cache.path(key).write_bytes(b"not an npz file")
    third = cache.get_or_build(key, build)
    assert len(calls) == 2
    _assert_same(first[0], third[0])
    assert load_examples(cache.path(key))[0].example_id == "ex3"


def test_cache_key_depends_on_content_not_order() -> None:
    a = cache_key({"refs": {"g": "1", "r": "2"}, "settings": {"tileSize": 512}})
    assert a == cache_key({"settings": {"tileSize": 512}, "refs": {"r": "2", "g": "1"}})
    assert a != cache_key({"refs": {"g": "1", "r": "3"}, "settings": {"tileSize": 512}})
    assert a != cache_key({"refs": {"g": "1", "r": "2"}, "settings": {"tileSize": 256}})
