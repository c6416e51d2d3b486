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

"""AB magnitudes and nJy: the package's one definition."""

import numpy as np

from lsst.meas.extensions.deepdisc.core.photometry import AB_ZEROPOINT_NJY, mag_to_njy, njy_to_mag


def test_magnitudes_and_fluxes_round_trip_and_bad_fluxes_give_nan() -> None:
    assert mag_to_njy(AB_ZEROPOINT_NJY) == 1.0
    assert np.isclose(mag_to_njy(23.9), 1000.0)  # 1 microJansky is AB 23.9.
    mags = np.array([16.0, 22.5, 27.0])
    np.testing.assert_allclose(njy_to_mag(mag_to_njy(mags)), mags)
    bad = njy_to_mag(np.array([0.0, -5.0, np.nan, np.inf]))
    assert np.isnan(bad).all()
