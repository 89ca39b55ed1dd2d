"""Page images for :class:`~retrieval.encode.colpali.ColPaliEncoder`: checked, opened and made RGB.

Pillow is passed in by the caller (``require("PIL.Image", ...)``), so importing this module
imports nothing optional.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.encode._checks import describe_item
from retrieval.errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

    from PIL.Image import Image as PILImage

__all__ = ["MAX_IMAGE_SIDE_RANGE", "as_image_list", "check_max_image_side", "fit_within", "to_rgb"]

#: Allowed values of ``max_image_side`` (pixels), inclusive.
MAX_IMAGE_SIDE_RANGE = (16, 20_000)

_EXPECTED = "a sequence of page images (PIL.Image.Image objects or image file paths)"


def as_image_list(images: Sequence[Any], pil_image: ModuleType, *, what: str = "encode_documents") -> list[PILImage]:
    """Check ``images`` and return them as RGB PIL images (files are opened, read and closed).

    Parameters
    ----------
    images : sequence of PIL.Image.Image, str or os.PathLike
        At least one image or image file path.
    pil_image : module
        The imported ``PIL.Image`` module.
    what : str
        The method being called, named in the messages.

    Raises
    ------
    ConfigError
        For an empty sequence, a single image or path, an item that is neither an image
        nor a readable image file (the message names the item and the path), or an empty image.
    """
    if isinstance(images, (str, bytes, os.PathLike, pil_image.Image)):
        raise ConfigError(
            f"{what} expects {_EXPECTED}; got a single {type(images).__name__}. Wrap it in a list: {what}([image])."
        )
    try:
        items = list(images)
    except TypeError:
        raise ConfigError(f"{what} expects {_EXPECTED}; got {type(images).__name__}, which is not iterable.") from None
    if not items:
        raise ConfigError(f"{what} expects {_EXPECTED}; got an empty sequence. Pass at least one image.")
    out: list[PILImage] = []
    for i, item in enumerate(items):
        if isinstance(item, pil_image.Image):
            img = item
        elif isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            try:
                with pil_image.open(path) as opened:
                    opened.load()
                    img = to_rgb(opened, pil_image)
                    if img is opened:  # closing the file would free the pixels of an RGB image
                        img = opened.copy()
            except FileNotFoundError:
                raise ConfigError(f"{what}: image file {path!r} (item {i}) does not exist.") from None
            except (OSError, ValueError, pil_image.DecompressionBombError) as exc:
                raise ConfigError(
                    f"{what}: could not read item {i}, {path!r}, as an image ({type(exc).__name__}: {exc}). "
                    "Pass a PNG / JPEG / ... file or a PIL.Image.Image."
                ) from exc
        else:
            hint = " Convert an array with PIL.Image.fromarray(x)." if isinstance(item, np.ndarray) else ""
            raise ConfigError(f"{what} expects {_EXPECTED}; item {i} is {describe_item(item)}.{hint}")
        if img.width < 1 or img.height < 1:
            raise ConfigError(f"{what}: item {i} is an empty image of size {img.width} x {img.height}.")
        out.append(to_rgb(img, pil_image))
    return out


def to_rgb(img: PILImage, pil_image: ModuleType) -> PILImage:
    """``img`` in RGB mode; transparent areas become white (as transformers' ``convert_to_rgb``)."""
    if img.mode == "RGB":
        return img
    rgba = img.convert("RGBA")
    background = pil_image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return pil_image.alpha_composite(background, rgba).convert("RGB")  # type: ignore[no-any-return]


def check_max_image_side(value: object) -> int | None:
    """``value`` if it is None or an int in :data:`MAX_IMAGE_SIDE_RANGE`, else ConfigError."""
    low, high = MAX_IMAGE_SIDE_RANGE
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"max_image_side must be None (no limit) or an integer number of pixels from {low} to {high}; "
            f"got {value!r}. It caps the longer side of a page image before the model's processor sees it."
        )
    return value


def fit_within(img: PILImage, max_side: int | None, pil_image: ModuleType) -> PILImage:
    """``img`` scaled down (aspect ratio kept, never enlarged) so that its longer side is at most ``max_side``.

    A new image is returned when it is resized, so the caller's image is never changed.
    """
    if max_side is None or max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    size = (min(max_side, max(1, round(img.width * scale))), min(max_side, max(1, round(img.height * scale))))
    return img.resize(size, pil_image.Resampling.BICUBIC, reducing_gap=3.0)
