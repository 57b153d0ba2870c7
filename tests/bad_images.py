"""The bad-image corpus, made by the tests: every kind of file a real photo folder may hold."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def write_good_variants(folder: Path) -> dict[str, Path]:
    """Files that must be read and converted to RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["grayscale"] = folder / "gray.jpg"
    _photo().convert("L").save(files["grayscale"])
    files["palette_gif"] = folder / "palette.gif"
    _photo().convert("P").save(files["palette_gif"])
    files["alpha_png"] = folder / "alpha.png"
    rgba = _photo().convert("RGBA")
    rgba.putalpha(0)
    rgba.save(files["alpha_png"])
    files["cmyk_jpeg"] = folder / "cmyk.jpg"
    _photo().convert("CMYK").save(files["cmyk_jpeg"])
    files["png16"] = folder / "sixteen.png"
    Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)).save(files["png16"])
    files["exif_rotated"] = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _photo((40, 30)).save(files["exif_rotated"], exif=exif)
    files["one_pixel"] = folder / "tiny.png"
    Image.new("RGB", (1, 1), (10, 200, 10)).save(files["one_pixel"])
    return files


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Files that must be refused with their name and the reason."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["zero_bytes"] = folder / "empty.jpg"
    files["zero_bytes"].write_bytes(b"")
    buffer = io.BytesIO()
    _photo((200, 150)).save(buffer, "JPEG")
    files["truncated"] = folder / "truncated.jpg"
    files["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    files["text_as_jpg"] = folder / "notes.jpg"
    files["text_as_jpg"].write_text("this is not an image\n")
    files["bomb"] = folder / "bomb.png"
    files["bomb"].write_bytes(_bomb_png(20000, 20000))
    return files


def _bomb_png(width: int, height: int) -> bytes:
    """A small file that claims to be a 20000x20000 image (1-bit, compresses to almost nothing)."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()
