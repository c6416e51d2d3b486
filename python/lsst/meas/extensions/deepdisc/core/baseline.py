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

"""The classical baseline: sep (SExtractor) detection and deblending on a multi-band coadd.

`run_sep_baseline` is what a user would run instead of the network, and what the metrics compare the
network and the scarlet deblender against:

1. per band, a sep background (mesh ``bw x bh``, median filter ``fw x fh``) is fitted with invalid pixels
   masked and subtracted;
2. the detection image is the variance-weighted sum of the bands, ``sum_b f_b / sqrt(sum_b var_b)``: a
   signal-to-noise image with unit noise, so ``thresh`` is in units of sigma.  The variance plane is used
   when the image has one, otherwise sep's background RMS squared.  A pixel invalid in some bands (non
   finite, or in a masked plane such as ``NO_DATA``) uses only its valid bands; a pixel invalid in every band
   is masked for detection;
3. `sep.extract` detects (matched filter, ``minarea``) and deblends (``deblend_nthresh``, ``deblend_cont``)
   and returns a segmentation map; every object's footprint is its segmentation-map pixels, as spans in
   parent coordinates;
4. per band the flux is the sum of the background-subtracted pixels in the footprint (invalid pixels count
   as zero) with the error from the variance;
5. optionally, a crude star/galaxy guess: the half-light radius (measured on the detection-band sum with
   the other objects masked) divided by the PSF half-light radius ``FWHM / 2``; sources below
   ``star_size_ratio`` are stars (class 0), others galaxies (class 1).

The output table has the core columns of the package's detection catalogs: ``id, x, y`` (parent pixel
coordinates), ``ra, dec`` (degrees, with a WCS), the inclusive bounding box, ``footprint`` (flattened
``int32`` spans, an object column), ``footprint_area``, ``class_id`` (``-1`` when no PSF size was given) and
``score``, plus ``detection_snr``, ``half_light_radius``, per-band ``{band}_flux`` / ``{band}_flux_err``
and sep's ``flag``.  ``score`` is only a ranking for COCO AP: ``snr / (snr + 10)``, monotonic in the
detection S/N (no ties among bright sources), not a probability.
"""

from __future__ import annotations

__all__ = ["run_sep_baseline", "segmentation_to_spans"]

from collections.abc import Mapping, Sequence

import numpy as np
import sep
from astropy.table import Table

from .footprints import SPAN_DTYPE, flatten_spans
from .multiband import MultibandImage

# Gaussian PSF: the half-light radius is FWHM / 2 (sqrt(2 ln 2) sigma).
_PSF_HALF_LIGHT_PER_FWHM = 0.5


def segmentation_to_spans(
    segmap: np.ndarray, n_objects: int, xy0: tuple[int, int] = (0, 0)
) -> list[np.ndarray]:
    """Footprints (spans) of every label ``1..n_objects`` of a segmentation map, in one pass.

    Parameters
    ----------
    segmap : `numpy.ndarray`
        2-d integer map; ``0`` is background, ``k`` belongs to object ``k - 1``.
    n_objects : `int`
        Number of objects (labels above it are an error).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of ``segmap[0, 0]``.

    Returns
    -------
    spans : `list` [`numpy.ndarray`]
        ``n_objects`` arrays of ``(N, 3)`` ``int32`` spans sorted by row then column (empty when a label is
        absent).
    """
    segmap = np.asarray(segmap)
    if segmap.ndim != 2:
        raise ValueError(f"segmentation map must be 2-d, got shape {segmap.shape}")
    if segmap.size and int(segmap.max()) > n_objects:
        raise ValueError(f"segmentation map has label {int(segmap.max())} but only {n_objects} objects")
    height, width = segmap.shape
    padded = np.zeros((height, width + 2), dtype=np.int64)
    padded[:, 1:-1] = segmap
    # A boundary at column j of a row means the label changes between pixels j - 1 and j.
    rows, cols = np.nonzero(padded[:, 1:] != padded[:, :-1])
    same_row = rows[:-1] == rows[1:]
    run_row, run_start, run_end = rows[:-1][same_row], cols[:-1][same_row], cols[1:][same_row] - 1
    label = segmap[run_row, run_start] if run_row.size else np.zeros(0, dtype=np.int64)
    foreground = label > 0
    run_row, run_start, run_end, label = (
        run_row[foreground],
        run_start[foreground],
        run_end[foreground],
        label[foreground],
    )
    order = np.argsort(label, kind="stable")  # Keeps the row-major order inside each object.
    spans = np.empty((order.size, 3), dtype=SPAN_DTYPE)
    spans[:, 0] = run_row[order] + xy0[1]
    spans[:, 1] = run_start[order] + xy0[0]
    spans[:, 2] = run_end[order] + xy0[0]
    counts = np.bincount(label, minlength=n_objects + 1)[1:]
    return np.split(spans, np.cumsum(counts)[:-1]) if n_objects else []


def _native(array: np.ndarray) -> np.ndarray:
    """C-contiguous, native byte order float32 (what sep accepts)."""
    return np.ascontiguousarray(array, dtype=np.float32)


def run_sep_baseline(
    image: MultibandImage,
    thresh: float = 1.5,
    minarea: int = 5,
    deblend_nthresh: int = 32,
    deblend_cont: float = 0.005,
    *,
    bands: Sequence[str] | None = None,
    invalid_planes: Sequence[str] = ("NO_DATA",),
    background_box: int = 64,
    background_filter: int = 3,
    filter_kernel: np.ndarray | None = sep.default_kernel,
    clean: bool = True,
    psf_fwhm_pixels: float | Mapping[str, float] | None = None,
    star_size_ratio: float = 1.25,
) -> Table:
    """Detect, deblend and measure sources with sep on a multi-band image.

    Parameters
    ----------
    image : `~.multiband.MultibandImage`
        The coadd (fluxes per pixel; variance optional).
    thresh : `float`
        Detection threshold in sigma of the detection image.
    minarea : `int`
        Minimum number of pixels of a detection.
    deblend_nthresh, deblend_cont : `int`, `float`
        sep deblending levels and minimum contrast (``deblend_cont=1`` disables deblending).
    bands : `~collections.abc.Sequence` [`str`], optional
        Bands summed into the detection image (default all); fluxes are measured in every band.
    invalid_planes : `~collections.abc.Sequence` [`str`]
        Mask planes marking pixels without data; they and non-finite pixels are excluded everywhere.
    background_box, background_filter : `int`
        Background mesh size and median filter size (pixels, meshes).
    filter_kernel : `numpy.ndarray` or `None`
        Detection filter (sep's default 3x3 kernel; `None` for none).
    clean : `bool`
        sep's cleaning of spurious detections near bright objects.
    psf_fwhm_pixels : `float` or `~collections.abc.Mapping` [`str`, `float`], optional
        PSF FWHM in pixels (one value, or per band: the largest over the detection bands is used).  Without
        it no star/galaxy guess is made (``class_id = -1``).
    star_size_ratio : `float`
        Largest half-light radius, in units of the PSF's, of a source called a star.

    Returns
    -------
    catalog : `astropy.table.Table`
        One row per detection (see the module documentation); ``meta`` records the parameters.

    Raises
    ------
    MissingBandError
        If a detection band is not in the image.

    Notes
    -----
    sep's process-wide pixel stack is raised to the image size when it is smaller, so that large patches
    do not fail with a pixel-buffer overflow.
    """
    if thresh <= 0 or minarea < 1:
        raise ValueError(f"thresh must be > 0 and minarea >= 1, got {thresh} and {minarea}")
    detection_bands = list(image.bands if bands is None else bands)
    image.select_bands(detection_bands)  # Raises MissingBandError naming any absent band.
    invalid = image.invalid_pixels(invalid_planes)  # [C, H, W]
    height, width = image.shape
    if sep.get_extract_pixstack() < height * width:
        sep.set_extract_pixstack(height * width)

    fluxes, variances = [], []
    for index in range(len(image.bands)):
        bad = invalid[index]
        if image.variance is not None:
            bad = bad | ~np.isfinite(image.variance[index]) | (image.variance[index] <= 0)
        data = _native(np.where(bad, 0.0, image.image[index]))
        if bad.all():
            fluxes.append(np.zeros_like(data))
            variances.append(np.zeros_like(data))
            continue
        background = sep.Background(
            data, mask=bad, bw=background_box, bh=background_box, fw=background_filter, fh=background_filter
        )
        flux = np.where(bad, 0.0, data - background.back()).astype(np.float32)
        if image.variance is not None:
            variance = np.where(bad, 0.0, image.variance[index]).astype(np.float32)
        else:
            variance = np.where(bad, 0.0, background.rms() ** 2).astype(np.float32)
        fluxes.append(flux)
        variances.append(variance)

    selected = [image.bands.index(band) for band in detection_bands]
    signal = np.sum([fluxes[i] for i in selected], axis=0)
    noise_variance = np.sum([variances[i] for i in selected], axis=0)
    no_data = noise_variance <= 0
    snr_image = _native(np.where(no_data, 0.0, signal / np.sqrt(np.where(no_data, 1.0, noise_variance))))

    objects, segmap = sep.extract(
        snr_image,
        thresh,
        mask=no_data,
        minarea=minarea,
        filter_kernel=filter_kernel,
        deblend_nthresh=deblend_nthresh,
        deblend_cont=deblend_cont,
        clean=clean,
        segmentation_map=True,
    )
    n_objects = len(objects)
    x0, y0 = image.xy0
    spans = segmentation_to_spans(segmap, n_objects, image.xy0)
    labels = segmap.ravel()

    def per_object_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(labels, weights=values.ravel().astype(np.float64), minlength=n_objects + 1)[1:]

    area = np.bincount(labels, minlength=n_objects + 1)[1:]
    snr = per_object_sum(signal) / np.sqrt(np.maximum(per_object_sum(noise_variance), 1e-300))

    # Bounding boxes from the footprints; sep's own box for an object left without pixels.
    bbox = np.column_stack([objects["xmin"], objects["ymin"], objects["xmax"], objects["ymax"]]).astype(
        np.int64
    )
    bbox += np.array([x0, y0, x0, y0])
    for k, footprint in enumerate(spans):
        if footprint.shape[0]:
            bbox[k] = (
                footprint[:, 1].min(),
                footprint[:, 0].min(),
                footprint[:, 2].max(),
                footprint[:, 0].max(),
            )

    # Half-light radius on the detection-band sum, other objects masked.
    half_light = np.full(n_objects, np.nan)
    if n_objects:
        rmax = np.maximum(2.0 * np.sqrt(np.maximum(area, 1) / np.pi), 5.0)
        if psf_fwhm_pixels is not None:
            rmax = np.maximum(rmax, 3.0 * _psf_fwhm(psf_fwhm_pixels, detection_bands))
        radius, _ = sep.flux_radius(
            _native(signal),
            objects["x"],
            objects["y"],
            rmax,
            0.5,
            mask=no_data,
            segmap=segmap.astype(np.int32),
            seg_id=np.arange(1, n_objects + 1, dtype=np.int32),
            subpix=5,
        )
        half_light = np.asarray(radius, dtype=np.float64)
    class_id = np.full(n_objects, -1, dtype=np.int64)
    if psf_fwhm_pixels is not None and n_objects:
        psf_half_light = _PSF_HALF_LIGHT_PER_FWHM * _psf_fwhm(psf_fwhm_pixels, detection_bands)
        class_id = np.where(half_light <= star_size_ratio * psf_half_light, 0, 1).astype(np.int64)

    table = Table()
    table["id"] = np.arange(1, n_objects + 1, dtype=np.int64)
    table["x"] = objects["x"].astype(np.float64) + x0
    table["y"] = objects["y"].astype(np.float64) + y0
    if image.wcs is not None:
        ra, dec = image.pixel_to_sky(table["x"], table["y"]) if n_objects else (np.zeros(0), np.zeros(0))
        table["ra"] = ra
        table["dec"] = dec
        table["ra"].unit = table["dec"].unit = "deg"
    for k, name in enumerate(("bbox_x_min", "bbox_y_min", "bbox_x_max", "bbox_y_max")):
        table[name] = bbox[:, k].astype(np.int32)
    footprint_column = np.empty(n_objects, dtype=object)
    for k, footprint in enumerate(spans):
        footprint_column[k] = flatten_spans(footprint)
    table["footprint"] = footprint_column
    table["footprint_area"] = area.astype(np.int64)
    table["class_id"] = class_id
    table["score"] = np.clip(snr, 0, None) / (np.clip(snr, 0, None) + 10.0)
    table["detection_snr"] = snr
    table["half_light_radius"] = half_light
    for index, band in enumerate(image.bands):
        table[f"{band}_flux"] = per_object_sum(fluxes[index])
        table[f"{band}_flux_err"] = np.sqrt(per_object_sum(variances[index]))
    table["flag"] = objects["flag"].astype(np.int32)

    table["x"].description = "Isophotal barycentre, parent pixel coordinates"
    table["footprint"].description = "Segmentation-map footprint: flattened int32 spans (y, x_begin, x_end)"
    table["class_id"].description = "0 star, 1 galaxy (size versus PSF), -1 unknown"
    table["score"].description = "Ranking score snr / (snr + 10), not a probability"
    table["detection_snr"].description = "Footprint S/N on the variance-weighted detection image"
    table["half_light_radius"].description = "Half-light radius in pixels on the detection-band sum"
    table.meta.update(
        {
            "algorithm": "sep",
            "sep_version": sep.__version__,
            "thresh": float(thresh),
            "minarea": int(minarea),
            "deblend_nthresh": int(deblend_nthresh),
            "deblend_cont": float(deblend_cont),
            "detection_bands": detection_bands,
        }
    )
    return table


def _psf_fwhm(psf_fwhm_pixels: float | Mapping[str, float], bands: Sequence[str]) -> float:
    if isinstance(psf_fwhm_pixels, Mapping):
        missing = [band for band in bands if band not in psf_fwhm_pixels]
        if missing:
            raise ValueError(f"psf_fwhm_pixels has no value for band(s) {missing}")
        value = max(float(psf_fwhm_pixels[band]) for band in bands)
    else:
        value = float(psf_fwhm_pixels)
    if not value > 0:
        raise ValueError(f"PSF FWHM must be positive, got {psf_fwhm_pixels}")
    return value
