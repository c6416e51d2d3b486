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

"""Opening and creating Butler repositories that carry this package's storage classes and formatters."""

from __future__ import annotations

__all__ = ["open_writeable_butler", "package_seed_config"]

import logging

from lsst.daf.butler import Butler, Config
from lsst.resources import ResourcePath, ResourcePathExpression

from .config_path import BUTLER_CONFIG_DIR

_log = logging.getLogger(__name__)


def package_seed_config() -> Config:
    """Repository seed config embedding this package's storage classes and formatters.

    A repository created here then works without ``DAF_BUTLER_CONFIG_PATH`` (the ``butler`` CLI, pipetask).
    """
    seed = Config()
    seed["storageClasses"] = Config(str(BUTLER_CONFIG_DIR / "storageClasses.yaml"))["storageClasses"]
    datastore = Config(str(BUTLER_CONFIG_DIR / "datastores" / "fileDatastore.yaml"))
    seed[".datastore.formatters"] = datastore["datastore", "formatters"]
    return seed


def open_writeable_butler(
    root_or_butler: Butler | ResourcePathExpression, create: bool | None
) -> tuple[Butler, str]:
    """A writeable Butler, creating a SQLite/local-file repository where there is none and that is allowed.

    Parameters
    ----------
    root_or_butler : `lsst.daf.butler.Butler` or `lsst.resources.ResourcePathExpression`
        A writeable Butler, a repository label of the site's index, a Butler config file or a directory.
    create : `bool` or `None`
        `True`: the repository must not exist yet; `False`: it must exist; `None`: create it if missing.

    Returns
    -------
    butler, root : `lsst.daf.butler.Butler`, `str`
        The Butler and the repository's root (or label).
    """
    if isinstance(root_or_butler, Butler):
        if not root_or_butler.isWriteable():
            raise ValueError("the Butler given must be writeable")
        roots = [str(r) for r in root_or_butler.get_datastore_roots().values() if r is not None]
        return root_or_butler, roots[0] if roots else ""
    if isinstance(root_or_butler, str) and root_or_butler in Butler.get_known_repos():
        # A label of the site's repository index (e.g. a PostgreSQL-backed repository).
        if create is True:
            raise FileExistsError(f"{root_or_butler!r} names an existing repository")
        return Butler.from_config(root_or_butler, writeable=True), root_or_butler
    uri = ResourcePath(root_or_butler)
    if uri.getExtension() in (".yaml", ".json"):
        # An explicit Butler configuration file: the repository must exist.
        if not uri.exists():
            raise FileNotFoundError(f"no Butler configuration at {uri}")
        if create is True:
            raise FileExistsError(f"a Butler repository already exists at {uri}")
        return Butler.from_config(uri, writeable=True), str(uri)
    uri = ResourcePath(root_or_butler, forceDirectory=True)
    if uri.join("butler.yaml").exists():
        if create is True:
            raise FileExistsError(f"a Butler repository already exists at {uri}")
    elif create is False:
        raise FileNotFoundError(f"no Butler repository at {uri} (pass create=True to make one)")
    else:
        _log.info("creating a Butler repository (SQLite registry, file datastore) at %s", uri)
        Butler.makeRepo(uri, config=package_seed_config())
    root = uri.ospath.rstrip("/") if uri.isLocal else str(uri)
    return Butler.from_config(root, writeable=True), root
