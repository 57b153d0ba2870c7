from __future__ import annotations

from pathlib import Path

from captioner.alttext import fill_missing_alt, gallery_page, image_tags, local_image
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
    assert any(f"missing.png: no such file {tmp_path / 'photos' / 'missing.png'}" in n for n in notes)
    assert len(image_tags(new_page)) == 7


def test_gallery_page_uses_captions_as_alt_text(tmp_path: Path) -> None:
    image = write_image(tmp_path / "photos" / "a b.png")
    page = gallery_page([(image, 'a "red" square'), (tmp_path / "x.png", None)], tmp_path / "out" / "page.html")
    assert 'src="../photos/a%20b.png" alt="a &quot;red&quot; square"' in page
    assert "could not be captioned" in page and '<html lang="en">' in page


def test_gallery_sources_are_urls_so_names_with_hash_question_mark_or_percent_still_show(tmp_path: Path) -> None:
    names = ["photo#1.png", "what?.png", "100%25.png"]
    page = gallery_page([(write_image(tmp_path / name), "x") for name in names], tmp_path / "page.html")
    for name, url in zip(names, ["photo%231.png", "what%3F.png", "100%2525.png"]):
        assert f'src="{url}"' in page
        assert local_image(url, tmp_path) == tmp_path / name  # the page's own reading of it finds the file


def test_a_page_with_windows_line_ends_keeps_them(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    page = tmp_path / "page.html"
    page.write_bytes(b"<html>\r\n<body>\r\n<img src=\"a.png\">\r\n</body>\r\n</html>\r\n")
    new_page, _ = fill_missing_alt(page, lambda paths: ["a square" for _ in paths])
    assert new_page.encode() == page.read_bytes().replace(b'"a.png">', b'"a.png" alt="a square">')
