"""`release_free_memory`: freed heap pages go back to the system (glibc), a no-op elsewhere."""

from __future__ import annotations

import ctypes.util
import sys
import threading

import numpy as np
import pytest

from lsst.meas.extensions.deepdisc.core import memory
from lsst.meas.extensions.deepdisc.core.memory import release_free_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _glibc() -> bool:
    return sys.platform.startswith("linux") and memory._malloc_trim() is not None


@pytest.mark.skipif(not _glibc(), reason="needs Linux with glibc (malloc_trim)")
def test_freed_heap_memory_of_a_worker_thread_goes_back_to_the_system() -> None:
    # Many 64 KiB blocks (below glibc's mmap threshold: they live in the thread's arena), every other
    # one kept so that the arena cannot shrink from its top, as after a patch's tiles.
    kept: list[np.ndarray] = []

    def work() -> None:
        blocks = [np.ones(8192) for _ in range(6000)]  # ~390 MB
        kept.extend(blocks[::200])
        del blocks

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    before = _rss_bytes()
    assert release_free_memory() is True
    after = _rss_bytes()
    assert before - after > 200 * 2**20, (before, after)
    assert len(kept) == 30


def test_without_malloc_trim_nothing_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    memory._malloc_trim.cache_clear()
    try:
        assert release_free_memory() is False
    finally:
        memory._malloc_trim.cache_clear()
