"""Open any image a user may have as plain 8-bit RGB, or say clearly why it cannot be used.

Handles grayscale, palette, alpha (composited on white), CMYK, 16-bit, EXIF rotation; refuses truncated or
non-image files and absurd dimensions (decompression bombs) before decoding them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import CaptionerError

MAX_PIXELS = 64_000_000  # 8000 x 8000; a bigger "photo" is almost surely a decompression bomb
MAX_SIDE = 30_000


class BadImageError(CaptionerError):
    """An image file that cannot be used; the message names it and says why. `kind` is one of "missing",
    "not_image" (not an image format PIL reads), "too_large" (absurd dimensions, a possible decompression
    bomb) or "undecodable" (truncated or damaged), for callers that answer differently (the web server)."""

    def __init__(self, message: str, kind: str = "undecodable") -> None:
        super().__init__(message)
        self.kind = kind


ImageSource = str | Path | bytes | BinaryIO | Image.Image


def open_rgb(source: ImageSource, name: str | None = None, draft_size: int | None = None) -> Image.Image:
    """Decode `source` (path, bytes, file object or PIL image) into an upright RGB image.

    With `draft_size`, a large JPEG is decoded at a reduced scale no smaller than that (much faster for
    photos that will be shrunk to the encoder's input anyway).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "image")
    if isinstance(source, (str, Path)) and Path(source).exists() and not Path(source).is_file():
        # a folder, a FIFO (opening one waits forever for a writer) or a device
        raise BadImageError(f"{label}: not a regular file", "not_image")
    try:
        if isinstance(source, Image.Image):  # decoded lazily by PIL: a truncated file fails here, not at open
            check_dimensions(source.size, label)
            source.load()
            return to_rgb(ImageOps.exif_transpose(source))
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        # No warnings.catch_warnings() to turn PIL's DecompressionBombWarning into an error: it is not thread
        # safe (the captioner reads images in threads) and check_dimensions refuses such images first anyway.
        with Image.open(handle) as image:
            check_dimensions(image.size, label)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
    except BadImageError:
        raise
    except FileNotFoundError as error:
        raise BadImageError(f"{label}: no such file", "missing") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"{label}: dimensions too large to be a photo ({error})", "too_large") from error
    except UnidentifiedImageError as error:
        size = Path(source).stat().st_size if isinstance(source, (str, Path)) and Path(source).exists() else None
        what = "an empty file" if size == 0 else "not an image PIL can read"
        raise BadImageError(f"{label}: {what}", "not_image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"{label}: cannot be decoded ({error})") from error


def check_dimensions(size: tuple[int, int], label: str) -> None:
    width, height = size
    if width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise BadImageError(f"{label}: absurd dimensions {width}x{height} (limit {MAX_PIXELS:,} pixels); "
                            "refusing it as a possible decompression bomb", "too_large")


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image
