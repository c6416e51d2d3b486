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
"""DeepDISC detection, deblending and star/galaxy classification for the Rubin Science Pipelines.

Layers (see ``doc/``):

``core``
    Pure numpy/torch/detectron2 code: multi-band images, scalings, the model factory, tiled inference,
    footprints, labels, metrics.  No Butler imports.
``butler``
    Adapters: storage classes, formatters, conversions from ``lsst.images`` / ``lsst.afw`` objects.
``tasks``
    Thin PipelineTasks, one module per task.
``sim``
    The simulated DRP repository used by the demo, the integration tests and the benchmarks.

Data files
----------
The product's ``pipelines/`` (``DeepDisc``, ``DeepDiscCompare``, ``DeepDiscTrain``), ``config/models``
(architecture recipes), ``config/tasks`` (task config overrides) and ``models/`` (the shipped detection
model and morphology classifier) travel with the package: a wheel carries them as package data under
``_data/``, and in a checkout ``_data/`` links to the root directories.  `pipeline_path`,
`model_config_dir`, `task_config_path`, `shipped_model_path` and `shipped_morphology_path` find them;
``$MEAS_EXTENSIONS_DEEPDISC_DIR`` (EUPS, the Makefile) wins where it is set.  Outside the stack,
``deepdisc-paths`` prints the paths and
``deepdisc-paths --shell`` the environment for the documented ``pipetask`` commands.
"""

from ._product import (
    model_config_dir,
    pipeline_names,
    pipeline_path,
    product_dir,
    shipped_model_path,
    shipped_morphology_path,
    task_config_path,
)
from .version import __version__

__all__ = [
    "__version__",
    "model_config_dir",
    "pipeline_names",
    "pipeline_path",
    "product_dir",
    "shipped_model_path",
    "shipped_morphology_path",
    "task_config_path",
]
