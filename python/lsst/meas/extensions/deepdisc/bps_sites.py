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

"""ctrl_bps_parsl site configurations for running a BPS workflow on one machine.

`LoopbackLocal` is ctrl_bps_parsl's ``Local`` site with every Parsl connection kept on 127.0.0.1.  The stock
``Local`` leaves the Parsl ``HighThroughputExecutor`` address unset, so its interchange listens on every
interface and its workers probe every address of the machine until one answers; on one machine the loopback
address is the one that always works, and nothing else needs to be reachable (sandboxes, laptops on
untrusted networks, CI).

Select it in a BPS submit YAML (only the ``bps`` process imports it; the jobs do not)::

    wmsServiceClass: lsst.ctrl.bps.parsl.ParslService
    computeSite: local
    site:
      local:
        class: lsst.meas.extensions.deepdisc.bps_sites.LoopbackLocal
        cores: 2

``site.<computeSite>.cores`` (required) is the number of jobs run at once.
"""

from __future__ import annotations

__all__ = ["LOOPBACK_ADDRESS", "LoopbackLocal"]

from parsl.executors import HighThroughputExecutor
from parsl.executors.base import ParslExecutor
from parsl.providers import LocalProvider

from lsst.ctrl.bps.parsl.configuration import get_bps_config_value
from lsst.ctrl.bps.parsl.sites import Local

LOOPBACK_ADDRESS = "127.0.0.1"


class LoopbackLocal(Local):
    """ctrl_bps_parsl ``Local`` site whose Parsl executor talks over 127.0.0.1 only.

    Parameters
    ----------
    *args, **kwargs
        Forwarded to ``lsst.ctrl.bps.parsl.sites.Local``.
    """

    def get_executors(self) -> list[ParslExecutor]:
        """One ``HighThroughputExecutor`` (label ``local``) with ``cores`` workers, bound to loopback.

        Returns
        -------
        executors : `list` [`parsl.executors.base.ParslExecutor`]
            The executor.

        Raises
        ------
        KeyError
            If ``site.<computeSite>.cores`` is missing from the BPS configuration.
        ValueError
            If ``cores`` is below 1.
        """
        cores = get_bps_config_value(self.site, "cores", int, required=True)
        if cores < 1:
            raise ValueError(f"site cores must be at least 1, got {cores}")
        return [
            HighThroughputExecutor(
                "local",
                provider=LocalProvider(),
                max_workers_per_node=cores,
                # Workers connect to this address only, and the interchange binds to it only.
                address=LOOPBACK_ADDRESS,
                loopback_address=LOOPBACK_ADDRESS,
            )
        ]

    def get_address(self) -> str:
        """The submit side's address as seen by the workers: loopback (used by Parsl monitoring)."""
        return LOOPBACK_ADDRESS
