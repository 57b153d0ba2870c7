from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.images import BadImageError, open_rgb
from tests.bad_images import write_bad_files, write_good_variants


def test_every_mode_becomes_rgb(tmp_path: Path) -> None:
    files = write_good_variants(tmp_path)
    for kind, path in files.items():
        image = open_rgb(path)
        assert image.mode == "RGB", kind
    assert open_rgb(files["exif_rotated"]).size == (30, 40)  # turned upright
    assert np.asarray(open_rgb(files["alpha_png"])).min() == 255  # transparent -> white, not black
    assert np.asarray(open_rgb(files["png16"])).min() == 255  # 16-bit white stays white


@pytest.mark.parametrize("kind, message", [("zero_bytes", "empty file"), ("truncated", "cannot be decoded"),
                                           ("text_as_jpg", "not an image"), ("bomb", "dimensions")])
def test_bad_files_are_refused_by_name(tmp_path: Path, kind: str, message: str) -> None:
    path = write_bad_files(tmp_path)[kind]
    with pytest.raises(BadImageError, match=message) as error:
        open_rgb(path)
    assert path.name in str(error.value)


def test_pil_images_and_bytes_are_accepted(tmp_path: Path) -> None:
    assert open_rgb(Image.new("L", (5, 5))).mode == "RGB"
    path = write_good_variants(tmp_path)["grayscale"]
    assert open_rgb(path.read_bytes(), name="upload").size == (40, 30)
    with pytest.raises(BadImageError, match="missing.jpg: no such file"):
        open_rgb(tmp_path / "missing.jpg")


def test_a_fifo_a_truncated_pil_image_and_an_empty_one_are_refused_not_hung_or_raised(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.png")  # opening it to read would wait forever for a writer
    with pytest.raises(BadImageError, match="fifo.png: not a regular file"):
        open_rgb(tmp_path / "fifo.png")
    lazy = Image.open(write_bad_files(tmp_path)["truncated"])  # PIL decodes it only when asked
    with pytest.raises(BadImageError, match="cannot be decoded"):
        open_rgb(lazy, name="upload")
    with pytest.raises(BadImageError, match="absurd dimensions 0x0"):
        open_rgb(Image.new("RGB", (0, 0)))


def test_reading_in_threads_leaves_the_warning_filters_alone(tmp_path: Path) -> None:
    """The captioner reads a batch's images in threads; warnings.catch_warnings() is not thread safe and
    used to leave an 'error' filter for DecompressionBombWarning behind for the whole process."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    before = list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda _: open_rgb(path), range(200)))
    assert all(image.size == (40, 30) for image in images)
    assert warnings.filters == before
