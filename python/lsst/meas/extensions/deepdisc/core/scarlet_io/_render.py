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

"""Rendering sources in model or observed PSF space (`difference_kernel`, `ModelRenderer`)."""

from __future__ import annotations

__all__ = ["ModelRenderer", "difference_kernel", "render_source_model"]

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import signal

from ._data import (
    CubeComponentData,
    FactorizedComponentData,
    IsolatedSourceData,
    ScarletSourceData,
    _int_pair,
)
from ._psf import _centered_pad, _check_kernel, _stack_psfs

if TYPE_CHECKING:
    from ..multiband import MultibandImage


def difference_kernel(model_psf: np.ndarray, psf: np.ndarray, regularization: float = 1e-10) -> np.ndarray:
    """The kernel that convolves the model PSF into the observed PSF.

    Computed by Fourier division, as scarlet does, with Tikhonov regularisation so that frequencies where
    the model PSF has (almost) no power are damped rather than amplified:
    ``K = P * conj(M) / (|M|^2 + regularization * max|M|^2)``, with ``P`` and ``M`` the Fourier transforms
    of the observed and model PSFs zero-padded to a common size twice the larger of the two.  The kernel
    is cropped to the observed PSF's size and rescaled so that its sum is ``sum(psf) / sum(model_psf)``
    (flux conservation).  PSFs equal to float32 precision give exactly a delta function.

    The regularisation only matters where the model PSF's transform has fallen below ~1e-5 of its peak,
    frequencies that a narrower model PSF keeps and a wider observed PSF has already removed; it bounds the
    gain of the division at ``1 / (2 sqrt(regularization))`` (5e4 by default), which keeps float32 rounding
    of the PSF images from being amplified into visible ringing.

    Parameters
    ----------
    model_psf : `numpy.ndarray`
        Model-space PSF, 2-d with odd sides.
    psf : `numpy.ndarray`
        Observed PSF of one band, 2-d with odd sides.
    regularization : `float`
        Relative Tikhonov weight.

    Returns
    -------
    kernel : `numpy.ndarray`
        ``float64`` kernel with the observed PSF's shape.
    """
    model_psf = _check_kernel(model_psf, "model PSF")
    psf = _check_kernel(psf, "observed PSF")
    height = max(model_psf.shape[0], psf.shape[0])
    width = max(model_psf.shape[1], psf.shape[1])
    padded_model = _centered_pad(model_psf, (height, width))
    padded_psf = _centered_pad(psf, (height, width))
    flux_ratio = psf.sum() / model_psf.sum()
    normalized_model = padded_model / model_psf.sum()
    normalized_psf = padded_psf / psf.sum()
    # Equal to float32 precision (the archive stores float32): the identity, exactly.
    if np.allclose(normalized_model, normalized_psf, rtol=0.0, atol=1e-6 * normalized_psf.max()):
        delta = np.zeros(psf.shape)
        delta[psf.shape[0] // 2, psf.shape[1] // 2] = flux_ratio
        return delta
    # Pad to twice the size so that the circular convolution implied by the FFT does not wrap.
    fft_shape = (2 * height + 1, 2 * width + 1)
    model_hat = np.fft.rfft2(np.fft.ifftshift(_centered_pad(padded_model, fft_shape)))
    psf_hat = np.fft.rfft2(np.fft.ifftshift(_centered_pad(padded_psf, fft_shape)))
    power = np.abs(model_hat) ** 2
    kernel_hat = psf_hat * np.conj(model_hat) / (power + regularization * power.max())
    kernel = np.fft.fftshift(np.fft.irfft2(kernel_hat, s=fft_shape))
    cy, cx = fft_shape[0] // 2, fft_shape[1] // 2
    hy, hx = psf.shape[0] // 2, psf.shape[1] // 2
    kernel = kernel[cy - hy : cy + hy + 1, cx - hx : cx + hx + 1]
    return kernel * (flux_ratio / kernel.sum())


class ModelRenderer:
    """Render scarlet source models, in model space or convolved to the observed PSF of each band.

    The difference kernels are computed once per band (see `difference_kernel`), so one renderer should
    be reused for all sources of an archive.

    Parameters
    ----------
    bands : sequence of `str`
        Band order of the spectra.
    psf : `numpy.ndarray` or mapping
        Observed PSFs, ``[C, h, w]`` in band order or a ``band -> 2-d image`` mapping.
    model_psf : `numpy.ndarray`
        The 2-d model PSF.
    regularization : `float`
        Passed to `difference_kernel`.
    """

    def __init__(
        self,
        bands: Sequence[str],
        psf: np.ndarray | Mapping[str, np.ndarray],
        model_psf: np.ndarray,
        regularization: float = 1e-10,
    ) -> None:
        self.bands = tuple(bands)
        if not self.bands:
            raise ValueError("at least one band is needed to render a model")
        self.psf = _stack_psfs(psf, self.bands)
        self.model_psf = _check_kernel(np.asarray(model_psf).squeeze(), "model PSF")
        self.kernels = [difference_kernel(self.model_psf, plane, regularization) for plane in self.psf]
        self._kernel_cube = np.stack(self.kernels)

    def render(
        self, source: ScarletSourceData | IsolatedSourceData | Any, observed: bool = True
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Render one source.

        Parameters
        ----------
        source : `ScarletSourceData`, `IsolatedSourceData` or any object with ``spectrum`` and ``morph``
            A scarlet source (sum of its components), a source given as ``spectrum`` x ``morph`` (e.g. the
            simulation's deblender output), or an isolated source whose metadata carries ``spectrum`` and
            ``morph`` (as the simulated repositories write them; upstream isolated sources have no model,
            use `render_isolated`).
        observed : `bool`
            Convolve each band with its difference kernel (the model as the telescope sees it); the box
            grows by half the kernel size on each side.  If `False`, return the model-space image.

        Returns
        -------
        model : `numpy.ndarray`
            ``float32`` ``[C, h, w]``.  The observed model is an FFT convolution: pixels outside the
            source's support hold round-off of ~1e-7 of the peak, so footprints must use a positive
            threshold (e.g. a fraction of the noise), not ``model != 0``.
        origin : `tuple` [`int`, `int`]
            ``(y0, x0)`` of ``model[:, 0, 0]`` in parent pixel coordinates.
        """
        model, origin = _model_space(source)
        if model.shape[0] != len(self.bands):
            raise ValueError(
                f"source model has {model.shape[0]} bands but the renderer has {len(self.bands)} {self.bands}"
            )
        if not observed:
            return model.astype(np.float32, copy=False), origin
        hy, hx = self.psf.shape[1] // 2, self.psf.shape[2] // 2
        # One FFT convolution for all bands (band i with kernel i); the kernels share the PSF cube's shape,
        # so every band lands on the same box, grown by the kernel half-size.
        out = signal.fftconvolve(model.astype(np.float64), self._kernel_cube, mode="full", axes=(1, 2))
        return out.astype(np.float32), (origin[0] - hy, origin[1] - hx)

    @staticmethod
    def render_isolated(
        source: IsolatedSourceData, image: MultibandImage
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Upstream's model of an isolated source: the observed image inside its footprint.

        Parameters
        ----------
        source : `IsolatedSourceData`
            The isolated source.
        image : `MultibandImage`
            The coadd it was detected on (``xy0`` honoured); the footprint is clipped to it.

        Returns
        -------
        model, origin
            ``[C, h, w]`` float32 cube and its ``(y0, x0)``.
        """
        y0, x0 = source.origin
        height, width = source.span_array.shape
        local_y, local_x = y0 - image.xy0[1], x0 - image.xy0[0]
        out = np.zeros((len(image.bands), height, width), dtype=np.float32)
        ys = slice(max(local_y, 0), min(local_y + height, image.height))
        xs = slice(max(local_x, 0), min(local_x + width, image.width))
        if ys.start < ys.stop and xs.start < xs.stop:
            out_ys = slice(ys.start - local_y, ys.stop - local_y)
            out_xs = slice(xs.start - local_x, xs.stop - local_x)
            out[:, out_ys, out_xs] = image.image[:, ys, xs]
        out *= np.asarray(source.span_array, dtype=bool)[None]
        return out, (y0, x0)


def _model_space(source: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """Model-space ``[C, h, w]`` image and ``(y0, x0)`` of any supported source representation."""
    if isinstance(source, ScarletSourceData):
        return source.model()
    if isinstance(source, (FactorizedComponentData, CubeComponentData)):
        return source.model().astype(np.float32, copy=False), tuple(source.origin)  # type: ignore[return-value]
    if isinstance(source, IsolatedSourceData):
        metadata = source.metadata or {}
        if "spectrum" not in metadata or "morph" not in metadata:
            raise ValueError(
                "this isolated source carries no model (upstream stores only its footprint); "
                "use ModelRenderer.render_isolated(source, image) to take it from the image"
            )
        origin = _int_pair(metadata.get("morph_origin", source.origin), "isolated source morph_origin")
        spectrum = np.asarray(metadata["spectrum"], dtype=np.float32)
        return spectrum[:, None, None] * np.asarray(metadata["morph"], dtype=np.float32)[None], origin
    if hasattr(source, "spectrum") and hasattr(source, "morph") and hasattr(source, "origin"):
        spectrum = np.asarray(source.spectrum, dtype=np.float32).reshape(-1)
        morph = np.asarray(source.morph, dtype=np.float32)
        if morph.ndim != 2:
            raise ValueError(f"morph must be 2-d, got shape {morph.shape}")
        return spectrum[:, None, None] * morph[None], _int_pair(source.origin, "source origin")
    raise TypeError(f"cannot render a {type(source).__name__}")


def render_source_model(
    source: ScarletSourceData | IsolatedSourceData | Any,
    bands: Sequence[str],
    psf: np.ndarray | Mapping[str, np.ndarray],
    model_psf: np.ndarray,
    observed: bool = True,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Render one source model; see `ModelRenderer.render` (build a renderer to render many sources).

    Returns
    -------
    model : `numpy.ndarray`
        ``float32`` ``[C, h, w]``; with ``observed`` every band is convolved with the difference kernel from
        the model PSF to that band's PSF and the box grows by half the PSF size on each side.
    origin : `tuple` [`int`, `int`]
        ``(y0, x0)`` of the returned box in parent pixel coordinates.
    """
    return ModelRenderer(bands, psf, model_psf).render(source, observed=observed)
