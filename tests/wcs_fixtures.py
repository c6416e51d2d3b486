"""The synthetic sky coordinates the tests share: a tangent-plane WCS with square pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from astropy.wcs import WCS

__all__ = ["tan_wcs"]


def tan_wcs(
    crval: Sequence[float] = (150.0, 2.0),
    crpix: Sequence[float] = (1.0, 1.0),
    scale_arcsec: float = 0.2,
) -> WCS:
    """A TAN WCS with square pixels of ``scale_arcsec``, RA increasing to the left as on the sky.

    Its tangent point ``crval`` (RA, Dec degrees) is at the FITS (1-based) pixel ``crpix``.
    """
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = list(crpix)
    wcs.wcs.cd = np.diag([-scale_arcsec, scale_arcsec]) / 3600.0
    wcs.wcs.set()
    return wcs
