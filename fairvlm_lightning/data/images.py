"""One rule that turns any stored image into the uint8 grayscale array the data modules cache.

The rule (:func:`to_grey_uint8`), applied to every image a loader reads (FairVLMed ``.npz`` files,
Hugging Face ``datasets`` images):

* **integer** dtypes (``uint8``, ``int64``, ``uint16``, ...): kept as they are when every value
  is within 0–255; any value outside it is an error;
* **float** dtypes: all values must be finite and ``>= 0``; a maximum ``<= 1`` means the 0–1
  convention, scaled by 255 and rounded; a maximum ``<= 255`` means the 0–255 convention, rounded;
  anything larger is an error. (A float image in 0–255 whose brightest pixel is ``<= 1`` — a
  black frame — is read as 0–1; no real fundus or X-ray image is that dark.)
* **shape**: ``(H, W)``, ``(H, W, 1)`` (the channel dropped) or ``(H, W, 3)`` RGB, made grey with
  the ITU-R 601-2 luma weights in PIL's integer arithmetic (``L = (19595 R + 38470 G + 7471 B +
  32768) >> 16`` on the uint8 channels, exactly ``PIL.Image.convert("L")``);
* **PIL images** (what ``datasets.Image`` decodes to): modes ``L``, ``RGB``, ``RGBA``/``LA``/``P``
  (converted by PIL to ``RGB`` or ``L`` first, alpha dropped), ``I``/``I;16`` and ``F`` (then the
  integer or float rule on their values).

Anything else (booleans, complex or string arrays, other shapes, values out of range, NaN) raises
an error that names the file (or row) and the range found.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_grey_uint8"]

# PIL's ITU-R 601-2 luma in 16-bit fixed point (Imaging/Convert.c): exact PIL convert("L").
_LUMA = (19595, 38470, 7471)


def _pil_to_array(image: Any) -> np.ndarray:
    mode = image.mode
    if mode in ("RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
        image = image.convert("RGB")
    elif mode in ("LA", "La", "1"):
        image = image.convert("L")
    return np.asarray(image)


def to_grey_uint8(image: Any, where: str = "image") -> np.ndarray:
    """Convert one image to a uint8 ``(H, W)`` grayscale array by the module's rule.

    Args:
        image: a numpy array (any integer or float dtype, ``(H, W)``, ``(H, W, 1)`` or
            ``(H, W, 3)``), or a PIL image.
        where: what to name in an error, e.g. ``"data_00001.npz: field 'slo_fundus'"``.

    Returns:
        A C-contiguous uint8 array of shape ``(H, W)``.

    Raises:
        TypeError: a dtype that is neither integer nor float (bool, complex, str, object).
        ValueError: an unsupported shape, or values outside the rule's ranges (the range found
            is named).

    Example:
        >>> to_grey_uint8(np.array([[0.0, 0.5], [1.0, 0.2]])).tolist()
        [[0, 128], [255, 51]]
        >>> to_grey_uint8(np.array([[[255, 0, 0]]], np.uint8)).tolist()
        [[76]]
    """
    if not isinstance(image, np.ndarray):
        if hasattr(image, "mode") and hasattr(image, "size"):
            image = _pil_to_array(image)
        else:
            image = np.asarray(image)
    arr = image
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{where}: an image must have an integer or float dtype, got dtype {arr.dtype}"
        )
    if arr.ndim == 3 and arr.shape[2] in (1, 3):
        pass
    elif arr.ndim != 2:
        raise ValueError(
            f"{where}: an image must be (H, W), (H, W, 1) or (H, W, 3), got shape {arr.shape}"
        )
    if 0 in arr.shape:
        raise ValueError(f"{where}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{where}: integer image values must be within 0-255, found range [{lo}, {hi}] "
                f"(dtype {arr.dtype}); rescale it to 8 bits first"
            )
        out = arr.astype(np.uint8)
    else:
        # min/max are NaN when any value is (one pass each; no separate isfinite pass)
        flo, fhi = float(arr.min()), float(arr.max())
        if np.isnan(flo) or np.isnan(fhi):
            raise ValueError(f"{where}: float image holds NaN values")
        if flo < 0 or fhi > 255:
            raise ValueError(
                f"{where}: float image values must be within 0-1 or 0-255, found range "
                f"[{flo:g}, {fhi:g}] (dtype {arr.dtype})"
            )
        scaled = arr * np.asarray(255.0, arr.dtype) if fhi <= 1.0 else arr.copy()
        out = np.rint(scaled, out=scaled).astype(np.uint8)
    if out.ndim == 3:
        if out.shape[2] == 1:
            out = out[:, :, 0]
        else:
            rgb = out.astype(np.uint32)
            luma = rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]
            out = ((luma + 0x8000) >> 16).astype(np.uint8)
    return np.ascontiguousarray(out)
