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
"""CPU threads for torch that fit the machine.

Torch's OpenMP threads spin at barriers: when more of them run than there are free cores (two training
runs, or a training run beside ``pipetask -j 2``), a step becomes several times slower.  `torch_threads`
picks the count (an explicit request, else ``$OMP_NUM_THREADS``, else the cores this process may run on,
divided among ``share`` processes) and `configure_torch` applies it, together with flushing denormal numbers
to zero (they make the first steps of a training from random weights slow on x86).  Both are process-wide
CPU states: `torch_cpu_settings` applies them for a block of work and restores the thread count and normal
(IEEE) denormals afterwards, so that they never leak into unrelated code of the same process.
`map_in_threads` spreads independent numpy work (the catalog's per-band measurements) over the same cores.
"""

from __future__ import annotations

__all__ = [
    "available_cores",
    "configure_torch",
    "map_in_threads",
    "quantum_threads",
    "torch_cpu_settings",
    "torch_threads",
]

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .memory import release_free_memory


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # Not on Linux.
        return max(1, os.cpu_count() or 1)


def torch_threads(requested: int = 0, share: int = 1) -> tuple[int, str]:
    """The torch thread count and where it came from.

    Parameters
    ----------
    requested : `int`
        An explicit count (> 0 wins); 0 for automatic.
    share : `int`
        Processes sharing the cores (e.g. ``pipetask -j N``); the automatic count is ``cores // share``.

    Returns
    -------
    threads : `int`
        At least 1.
    reason : `str`
        ``"requested"``, ``"OMP_NUM_THREADS"`` or ``"N cores / M processes"``, for the log.
    """
    if requested < 0 or share < 1:
        raise ValueError(f"requested must be >= 0 and share >= 1, got {requested} and {share}")
    if requested > 0:
        return requested, "requested"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = available_cores()
    return max(1, cores // share), f"{cores} core(s) / {share} process(es)"


def quantum_threads(requested: int, num_cores: int) -> int:
    """The thread request of a PipelineTask quantum: ``requested`` if set, else pipetask's cores.

    ``pipetask run`` sets ``OMP_NUM_THREADS=1`` in every process it runs quanta in (also with ``-j 1``)
    and gives each quantum ``--cores-per-quantum`` cores (``butlerQC.resources.num_cores``): with
    ``-j N -n M`` on ``N * M`` cores every quantum uses its ``M`` cores.

    Returns
    -------
    threads : `int`
        ``requested`` when > 0, else ``num_cores`` (to pass to `torch_threads` as an explicit request).
    """
    if requested < 0 or num_cores < 1:
        raise ValueError(f"requested must be >= 0 and num_cores >= 1, got {requested} and {num_cores}")
    return requested if requested > 0 else num_cores


def configure_torch(requested: int = 0, share: int = 1, log: logging.Logger | None = None) -> int:
    """Set torch's intra-op thread count (`torch_threads`) and flush denormals; returns the count."""
    import torch  # Here, not at the top: `map_in_threads` serves torch-free modules (the catalog).

    threads, reason = torch_threads(requested, share)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    if log is not None:
        log.info("torch uses %d CPU thread(s) (%s), denormals flushed to zero", threads, reason)
    return threads


@contextlib.contextmanager
def torch_cpu_settings(
    requested: int = 0, share: int = 1, log: logging.Logger | None = None
) -> Iterator[int]:
    """`configure_torch` for the duration of a block; yields the thread count.

    On exit the previous thread count is restored and denormals are no longer flushed (the process
    default; flushing sets the processor's flush-to-zero mode for every library in the process).
    """
    import torch

    previous = torch.get_num_threads()
    threads = configure_torch(requested, share, log)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
        torch.set_flush_denormal(False)


def map_in_threads[Item, Result](
    function: Callable[[Item], Result], items: Iterable[Item], threads: int = 1
) -> list[Result]:
    """``[function(item) for item in items]``, the calls spread over up to ``threads`` threads.

    For work that releases the GIL (numpy's gathers, reductions and ufuncs on large arrays), such as the
    catalog's per-band measurements: each call must be independent of the others, writing only to memory
    of its own.  The results come back in the order of ``items``; the first exception raised by a call
    (in that order) is raised here, after the calls already started have finished.  Memory the calls
    freed goes back to the system when they are done (`.memory.release_free_memory`): glibc would keep it
    in the worker threads' own arenas, and the resident memory of the stages after would grow by it.

    Parameters
    ----------
    function : callable
        Called once per item.
    items : iterable
        The arguments.
    threads : `int`
        At most this many calls at a time; 1 (or a single item) runs them in the calling thread.

    Returns
    -------
    results : `list`
        One result per item, in order.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    items = list(items)
    workers = min(threads, len(items))
    if workers <= 1:
        return [function(item) for item in items]
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deepdisc-map") as executor:
            futures = [executor.submit(function, item) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()  # Those not started; the pool's exit waits for the running ones.
                raise
    finally:
        release_free_memory()
