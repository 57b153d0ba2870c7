from __future__ import annotations

from pathlib import Path

from captioner.alttext import fill_missing_alt, gallery_page, image_tags
from tests.conftest import write_image

PAGE = """<!doctype html>
<html><body>
<p>Our <b>trip</b></p>
<img src="photos/beach.png">
<IMG SRC="photos/dog.png" class="wide"
     width="300" />
<img src="photos/beach.png" alt="kept as written">
<img src="photos/logo.png" alt="">
<img src="https://example.com/remote.jpg">
<img src="photos/missing.png">
<img src="data:image/png;base64,AAAA">
</body></html>
"""


def make_page(tmp_path: Path) -> Path:
    for name in ("beach", "dog", "logo"):
        write_image(tmp_path / "photos" / f"{name}.png")
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    return page


def test_only_missing_alt_attributes_of_local_images_are_filled(tmp_path: Path) -> None:
    page = make_page(tmp_path)
    asked = []

    def caption_images(paths):
        asked.extend(paths)
        return [f"caption of {p.stem} & co" for p in paths]

    new_page, notes = fill_missing_alt(page, caption_images)
    assert sorted(p.name for p in asked) == ["beach.png", "dog.png"]  # each file captioned once
    assert '<img src="photos/beach.png" alt="caption of beach &amp; co">' in new_page
    assert '<IMG SRC="photos/dog.png" class="wide"\n     width="300" alt="caption of dog &amp; co"/>' in new_page
    assert 'alt="kept as written"' in new_page and '<img src="photos/logo.png" alt="">' in new_page
    assert new_page.replace(' alt="caption of beach &amp; co"', "").replace(' alt="caption of dog &amp; co"', "") \
        .replace('width="300"/>', 'width="300" />') == PAGE  # nothing else changed
    assert page.read_text() == PAGE  # the original is untouched
    assert any("remote.jpg: not a local file" in n for n in notes)
    assert any("missing.png: not a local file" in n for n in notes)
    assert len(image_tags(new_page)) == 7


def test_gallery_page_uses_captions_as_alt_text(tmp_path: Path) -> None:
    image = write_image(tmp_path / "photos" / "a b.png")
    page = gallery_page([(image, 'a "red" square'), (tmp_path / "x.png", None)], tmp_path / "out" / "page.html")
    assert 'src="../photos/a b.png" alt="a &quot;red&quot; square"' in page
    assert "could not be captioned" in page and '<html lang="en">' in page
