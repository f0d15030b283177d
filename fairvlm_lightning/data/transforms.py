"""The image transform: grayscale uint8 fundus images -> model input, as a Hugging Face processor.

Vectorised ``torch`` interpolation that follows the model's image processor (shortest-edge or
fixed-size resize, bicubic with antialiasing as PIL, centre crop), then the processor's rescale
and per-channel normalisation. Used by the data module's preprocessing and batch collation and by
the tiny model's warm start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ImageTransform"]

_RESAMPLE_MODES = {
    0: "nearest",
    2: "bilinear",
    3: "bicubic",
    1: "bicubic",
    4: "bilinear",
    5: "bicubic",
}


def _getattr_dict(obj: Any, name: str) -> dict[str, Any] | None:
    value = getattr(obj, name, None)
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if v is not None}
    if isinstance(value, int):
        return {"shortest_edge": value}
    # transformers >= 5 SizeDict: a dataclass with optional height/width/shortest_edge/...
    keys = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    return {k: getattr(value, k) for k in keys if getattr(value, k, None) is not None}


class ImageTransform:
    """Grayscale uint8 images -> model input, following a Hugging Face image processor.

    :meth:`resize` maps uint8 ``(N, H, W)`` images to uint8 ``(N, h, w)`` at the model's input
    size (resize then centre crop, rounding to uint8 as PIL does); :meth:`normalize` maps those to
    float ``(N, C, h, w)`` with the processor's rescale factor and per-channel mean/std (the gray
    channel is replicated to ``C = len(mean)`` channels).

    Args:
        size: resize target: ``{"shortest_edge": s}`` (aspect kept, as CLIP) or
            ``{"height": h, "width": w}``; ``None`` skips resizing.
        crop_size: ``{"height": h, "width": w}`` of the centre crop, or ``None``.
        resample: PIL resampling code (3 bicubic, 2 bilinear, 0 nearest).
        rescale_factor: multiplier applied before normalising (``None`` = no rescale).
        image_mean: per-channel mean (``None`` = no normalisation).
        image_std: per-channel std.

    Example:
        >>> t = ImageTransform(size={"shortest_edge": 4}, crop_size={"height": 4, "width": 4},
        ...                    image_mean=[0.5] * 3, image_std=[0.5] * 3)
        >>> x = t.resize(np.full((2, 8, 6), 255, dtype=np.uint8))
        >>> x.shape, x.dtype
        (torch.Size([2, 4, 4]), torch.uint8)
        >>> t.normalize(x).shape, t.normalize(x).max().item()
        (torch.Size([2, 3, 4, 4]), 1.0)
    """

    def __init__(
        self,
        *,
        size: Mapping[str, int] | None,
        crop_size: Mapping[str, int] | None = None,
        resample: int = 3,
        rescale_factor: float | None = 1 / 255,
        image_mean: Sequence[float] | None = (0.5, 0.5, 0.5),
        image_std: Sequence[float] | None = (0.5, 0.5, 0.5),
    ) -> None:
        if size is not None and not (
            set(size) == {"shortest_edge"} or set(size) == {"height", "width"}
        ):
            raise ValueError(
                "size must be {'shortest_edge': s} or {'height': h, 'width': w}, "
                f"got {dict(size)}"
            )
        if crop_size is not None and set(crop_size) != {"height", "width"}:
            raise ValueError(
                f"crop_size must be {{'height': h, 'width': w}}, got {dict(crop_size)}"
            )
        if int(resample) not in _RESAMPLE_MODES:
            raise ValueError(f"unsupported resample code {resample}")
        self.size = dict(size) if size is not None else None
        self.crop_size = dict(crop_size) if crop_size is not None else None
        self.resample = int(resample)
        self.rescale_factor = rescale_factor
        if (image_mean is None) != (image_std is None):
            raise ValueError("give both image_mean and image_std, or neither")
        if image_mean is not None and image_std is not None:
            mean = [float(v) for v in image_mean]
            std = [float(v) for v in image_std]
            if len(mean) != len(std) or not mean or min(std) <= 0:
                raise ValueError(
                    f"image_mean/image_std must match in length with std > 0: {mean}, {std}"
                )
            self.image_mean: list[float] | None = mean
            self.image_std: list[float] | None = std
        else:
            self.image_mean = self.image_std = None
        self._cached_affine: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_processor(cls, processor: Any, image_size: int | None = None) -> ImageTransform:
        """Read resize / crop / rescale / normalise settings from an HF image processor.

        Args:
            processor: e.g. ``AutoImageProcessor.from_pretrained(name)``.
            image_size: if given, resize the shortest edge to it and centre-crop a square of it,
                instead of the processor's size and crop.

        Returns:
            The matching transform.
        """
        do = lambda name, default=True: bool(getattr(processor, name, default))  # noqa: E731
        if image_size is not None:
            if int(image_size) <= 0:
                raise ValueError(f"image_size must be positive, got {image_size}")
            size: dict[str, Any] | None = {"shortest_edge": int(image_size)}
            crop: dict[str, Any] | None = {"height": int(image_size), "width": int(image_size)}
        else:
            size = _getattr_dict(processor, "size") if do("do_resize") else None
            crop = _getattr_dict(processor, "crop_size") if do("do_center_crop", False) else None
        mean = getattr(processor, "image_mean", None) if do("do_normalize") else None
        std = getattr(processor, "image_std", None) if do("do_normalize") else None
        if isinstance(mean, (int, float)):
            mean, std = [float(mean)] * 3, [float(std)] * 3  # type: ignore[arg-type]
        resample = getattr(processor, "resample", 3)
        return cls(
            size=size,
            crop_size=crop,
            resample=int(resample) if resample is not None else 3,
            rescale_factor=float(getattr(processor, "rescale_factor", 1 / 255))
            if do("do_rescale")
            else None,
            image_mean=mean,
            image_std=std,
        )

    def spec(self) -> dict[str, Any]:
        """JSON-able description (used in cache keys)."""
        return {
            "size": self.size,
            "crop_size": self.crop_size,
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "mean": self.image_mean,
            "std": self.image_std,
        }

    @property
    def channels(self) -> int:
        """Output channels: ``len(image_mean)``, or 3 when not normalising."""
        return len(self.image_mean) if self.image_mean is not None else 3

    def _target(self, h: int, w: int) -> tuple[int, int]:
        assert self.size is not None
        if "shortest_edge" in self.size:
            s = int(self.size["shortest_edge"])
            if h <= w:
                return s, int(s * w / h)
            return int(s * h / w), s
        return int(self.size["height"]), int(self.size["width"])

    def resize(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop uint8 ``(N, H, W)`` grayscale images to uint8 ``(N, h, w)``."""
        if not isinstance(images, torch.Tensor):
            arr = np.asarray(images)
            images = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        x = images
        if x.ndim != 3:
            raise ValueError(f"images must be (N, H, W) grayscale, got shape {tuple(x.shape)}")
        n, h, w = x.shape
        out = x.to(torch.uint8) if x.dtype != torch.uint8 else x
        if self.size is not None and n:
            th, tw = self._target(h, w)
            if (th, tw) != (h, w):
                mode = _RESAMPLE_MODES[self.resample]
                f = F.interpolate(
                    x.to(torch.float32).unsqueeze(1),
                    size=(th, tw),
                    mode=mode,
                    **({"antialias": True, "align_corners": False} if mode != "nearest" else {}),
                )
                out = f.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)
        if self.crop_size is not None:
            out = _center_crop(out, int(self.crop_size["height"]), int(self.crop_size["width"]))
        return out.contiguous()

    def normalize(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (or integer) ``(N, h, w)`` -> float32 ``(N, C, h, w)`` model input.

        Computed with numpy, single-threaded: in the training process this runs between steps,
        and small ops on torch's intra-op pool cost more in thread wake-ups than in arithmetic.
        """
        scale, shift = self._affine()
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        out = np.empty((x.shape[0], self.channels, *x.shape[1:]), dtype=np.float32)
        np.multiply(x[:, None].astype(np.float32), scale, out=out)
        out += shift
        return torch.from_numpy(out)

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``scale``, ``shift`` (1, C, 1, 1): output = x * scale + shift."""
        if self._cached_affine is None:
            c = self.channels
            r = self.rescale_factor if self.rescale_factor is not None else 1.0
            mean = np.asarray(self.image_mean or [0.0] * c, dtype=np.float64)
            std = np.asarray(self.image_std or [1.0] * c, dtype=np.float64)
            self._cached_affine = (
                (r / std).astype(np.float32).reshape(1, c, 1, 1),
                (-mean / std).astype(np.float32).reshape(1, c, 1, 1),
            )
        return self._cached_affine


def _center_crop(x: torch.Tensor, ch: int, cw: int) -> torch.Tensor:
    """Centre crop (N, H, W) as Hugging Face's ``center_crop`` (zero padding if too small)."""
    n, h, w = x.shape
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        n, h, w = x.shape
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[:, top : top + ch, left : left + cw]
