"""Source id packing: round trips, uniqueness across patches, overflow errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsst.meas.extensions.deepdisc.core.ids import IdOverflowError, IdPacker


@given(
    tract_bits=st.integers(0, 20),
    patch_bits=st.integers(0, 12),
    release_bits=st.integers(0, 4),
    data=st.data(),
)
@settings(max_examples=200, deadline=None)
def test_pack_unpack_round_trip(
    tract_bits: int, patch_bits: int, release_bits: int, data: st.DataObject
) -> None:
    release = data.draw(st.integers(0, (1 << release_bits) - 1))
    packer = IdPacker(tract_bits, patch_bits, n_releases_bits=release_bits, release_id=release)
    tract = data.draw(st.integers(0, (1 << tract_bits) - 1))
    patch = data.draw(st.integers(0, (1 << patch_bits) - 1))
    counter = data.draw(st.integers(0, packer.max_counter))
    source_id = packer.pack(tract, patch, counter)
    assert isinstance(source_id, int)
    assert 0 <= source_id < 2**63
    assert packer.unpack(source_id) == (tract, patch, counter)
    # The documented layout: data ID in the high bits, counter in the low bits.
    assert source_id >> packer.counter_bits == packer.catalog_id(tract, patch)
    assert source_id & packer.max_counter == counter


def test_array_pack_matches_scalar_pack_and_unpacks() -> None:
    packer = IdPacker(n_tracts_bits=15, n_patches_bits=7)
    counters = np.arange(1, 1001)
    ids = packer.pack(18000, 99, counters)
    assert ids.dtype == np.int64
    assert ids.tolist() == [packer.pack(18000, 99, int(c)) for c in counters]
    tract, patch, counter = packer.unpack(ids)
    assert np.all(tract == 18000) and np.all(patch == 99)
    np.testing.assert_array_equal(counter, counters)


def test_ids_are_unique_across_patches_and_tracts() -> None:
    packer = IdPacker.from_skymap(tract_max=20000, patch_nx_max=10, patch_ny_max=10)
    counters = np.arange(1, 5001)
    ids = np.concatenate(
        [packer.pack(tract, patch, counters) for tract in (0, 1, 19999) for patch in (0, 1, 57, 99)]
    )
    assert np.unique(ids).size == ids.size
    assert ids.min() > 0


def test_from_skymap_sizes_fields_from_counts() -> None:
    packer = IdPacker.from_skymap(
        tract_max=18938, patch_nx_max=10, patch_ny_max=10, n_releases=3, release_id=2
    )
    assert (packer.n_tracts_bits, packer.n_patches_bits, packer.n_releases_bits) == (15, 7, 2)
    assert packer.counter_bits == 63 - 15 - 7 - 2
    # Exactly enough: the largest values fit, one more does not.
    assert packer.unpack(packer.pack(18937, 99, 5)) == (18937, 99, 5)
    single = IdPacker.from_skymap(tract_max=1, patch_nx_max=1, patch_ny_max=1)
    assert single.n_tracts_bits == 0 and single.counter_bits == 63
    assert single.pack(0, 0, 12) == 12


@pytest.mark.parametrize(
    ("tract", "patch", "counter", "field"),
    [(1 << 15, 0, 1, "tract"), (0, 128, 1, "patch"), (0, 0, 1 << 41, "counter"), (-1, 0, 1, "tract")],
)
def test_overflow_raises_naming_the_field(tract: int, patch: int, counter: int, field: str) -> None:
    packer = IdPacker(n_tracts_bits=15, n_patches_bits=7)
    assert packer.counter_bits == 41
    with pytest.raises(IdOverflowError, match=field):
        packer.pack(tract, patch, counter)


def test_array_counter_overflow_raises() -> None:
    packer = IdPacker(n_tracts_bits=30, n_patches_bits=30)
    with pytest.raises(IdOverflowError, match="counter"):
        packer.pack(1, 1, np.array([1, 2, 8]))
    with pytest.raises(TypeError, match="integers"):
        packer.pack(1, 1, np.array([1.5]))


def test_invalid_layouts_and_foreign_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="counter"):
        IdPacker(n_tracts_bits=40, n_patches_bits=23)
    with pytest.raises(ValueError, match="total_bits"):
        IdPacker(n_tracts_bits=10, n_patches_bits=10, total_bits=64)
    with pytest.raises(IdOverflowError, match="release_id"):
        IdPacker(n_tracts_bits=10, n_patches_bits=10, n_releases_bits=1, release_id=2)
    release_one = IdPacker(10, 10, n_releases_bits=1, release_id=1)
    release_zero = IdPacker(10, 10, n_releases_bits=1, release_id=0)
    with pytest.raises(ValueError, match="release"):
        release_zero.unpack(release_one.pack(3, 4, 5))
    with pytest.raises(ValueError, match="negative"):
        release_zero.unpack(-5)
    narrow = IdPacker(4, 4, total_bits=16)
    with pytest.raises(ValueError, match="wider"):
        narrow.unpack(1 << 20)
    assert narrow.to_dict()["counter_bits"] == 8
