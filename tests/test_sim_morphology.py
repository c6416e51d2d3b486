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

"""Simulated galaxy morphology: Hubble types with truth, profiles that follow the type, presets unchanged."""

from __future__ import annotations

import dataclasses

import galsim
import numpy as np
import pytest

from lsst.meas.extensions.deepdisc.sim.catalog import draw_cell_sources
from lsst.meas.extensions.deepdisc.sim.morphology import MORPHOLOGY_CLASSES, morphology_profile
from lsst.meas.extensions.deepdisc.sim.presets import get_preset

_GSPARAMS = galsim.GSParams(folding_threshold=5e-3, maxk_threshold=1e-3)


@pytest.fixture(scope="module")
def morph_cell():
    return draw_cell_sources(get_preset("morphology"), 0, 0, 0, 7001)


def test_every_galaxy_has_a_type_and_stars_none(morph_cell) -> None:
    galaxy = ~np.asarray(morph_cell["is_star"])
    types = np.asarray(morph_cell["morph_type"]).astype(str)
    assert set(types[galaxy]) == set(MORPHOLOGY_CLASSES)
    assert set(types[~galaxy]) == {""}
    assert np.all(np.asarray(morph_cell["morph_index"])[~galaxy] == -1)
    index = np.asarray(morph_cell["morph_index"])[galaxy]
    assert [MORPHOLOGY_CLASSES[k] for k in index] == list(types[galaxy])


def test_type_structure_and_colour_follow_the_hubble_sequence(morph_cell) -> None:
    galaxy = morph_cell[~np.asarray(morph_cell["is_star"])]
    bulge = {t: np.median(galaxy["bulge_fraction"][galaxy["morph_type"] == t]) for t in MORPHOLOGY_CLASSES}
    knots = {t: np.median(galaxy["knot_fraction"][galaxy["morph_type"] == t]) for t in MORPHOLOGY_CLASSES}
    colour = {
        t: np.median((galaxy["mag_g"] - galaxy["mag_i"])[galaxy["morph_type"] == t])
        for t in MORPHOLOGY_CLASSES
    }
    order = list(MORPHOLOGY_CLASSES)
    assert [bulge[t] for t in order] == sorted((bulge[t] for t in order), reverse=True)
    assert [knots[t] for t in order] == sorted(knots[t] for t in order)
    assert [colour[t] for t in order] == sorted((colour[t] for t in order), reverse=True)
    assert knots["E"] == knots["S0"] == 0.0
    assert np.all(galaxy["morph_asymmetry"][galaxy["morph_type"] == "Im"] >= 0.2)


def test_extra_bright_galaxies_and_unique_ids(morph_cell) -> None:
    preset = get_preset("morphology")
    galaxy = ~np.asarray(morph_cell["is_star"])
    bright = galaxy & (np.asarray(morph_cell["mag_i"]) < 22.0)
    # The smooth counts alone give ~80 galaxies with i < 22 in a 1024 px cell.
    assert bright.sum() >= preset.bright_galaxies_per_patch
    assert len(set(np.asarray(morph_cell["id"]).tolist())) == len(morph_cell)


def test_presets_without_morphology_draw_what_they_drew() -> None:
    small = get_preset("small")
    assert not small.morphology
    cell = draw_cell_sources(small, 0, 1, 0, 2024)
    assert "morph_type" not in cell.colnames
    # The same preset with morphology keeps positions and i magnitudes of the objects it shares.
    with_types = draw_cell_sources(dataclasses.replace(small, morphology=True), 0, 1, 0, 2024)
    assert len(with_types) == len(cell)
    np.testing.assert_array_equal(with_types["x"], cell["x"])
    np.testing.assert_array_equal(with_types["mag_i"], cell["mag_i"])
    with pytest.raises(ValueError, match="needs morphology"):
        dataclasses.replace(small, bright_galaxies_per_patch=5)


def _concentration(image: np.ndarray) -> float:
    """Flux within 2 px of the centre over the flux within 8 px."""
    y, x = np.indices(image.shape)
    r = np.hypot(x - image.shape[1] // 2, y - image.shape[0] // 2)
    return float(image[r <= 2].sum() / image[r <= 8].sum())


def _asymmetry(image: np.ndarray) -> float:
    return float(np.abs(image - image[::-1, ::-1]).sum() / (2 * np.abs(image).sum()))


def test_profiles_differ_by_type_as_intended(morph_cell) -> None:
    row = morph_cell[~np.asarray(morph_cell["is_star"])][0]
    images = {}
    for name, (bt, kf, asym, sigma) in {
        "E": (0.95, 0.0, 0.0, 0.0),
        "Sc": (0.1, 0.25, 0.0, 0.05),
        "Im": (0.0, 0.6, 0.4, 0.15),
    }.items():
        fields = {
            "size": 1.0,
            "e1": 0.0,
            "e2": 0.0,
            "bulge_fraction": bt,
            "knot_fraction": kf,
            "n_knots": 10,
            "morph_asymmetry": asym,
            "asymmetry_angle": 0.3,
            "knot_sigma": sigma,
            "knot_seed": 11,
        }
        for key, value in fields.items():
            row[key] = value
        profile = morphology_profile(row, _GSPARAMS)
        images[name] = profile.drawImage(nx=81, ny=81, scale=0.2).array
        assert images[name].sum() == pytest.approx(1.0, abs=0.02)
    assert _concentration(images["E"]) > _concentration(images["Sc"])
    assert _asymmetry(images["Im"]) > 2 * _asymmetry(images["E"])
    assert _asymmetry(images["Sc"]) > _asymmetry(images["E"])
