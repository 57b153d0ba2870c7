"""Alt text for web pages: a page of captioned images, and missing `alt` attributes filled into an existing page.

The existing page is rewritten only where an `<img>` lacks alt text; every other byte stays as it was, and the
result goes to a new file.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from captioner.errors import CaptionerError


@dataclass
class ImageTag:
    start: int  # character offsets of the whole tag in the page
    end: int
    text: str  # the tag as written
    src: str
    has_alt: bool  # an alt attribute with some text (alt="" marks a decorative image on purpose: left alone)


class _ImageTags(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.line_starts = [0]  # HTMLParser counts lines by "\n" only
        self.line_starts += [index + 1 for index, char in enumerate(page) if char == "\n"]
        self.tags: list[ImageTag] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._image(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._image(tag, attrs)

    def _image(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "img":
            return
        line, column = self.getpos()
        start = self.line_starts[line - 1] + column
        text = self.get_starttag_text() or ""
        values = dict(attrs)
        self.tags.append(ImageTag(start, start + len(text), text, values.get("src") or "", "alt" in values))


def image_tags(page: str) -> list[ImageTag]:
    parser = _ImageTags(page)
    parser.feed(page)
    parser.close()
    return parser.tags


def local_image(src: str, page_folder: Path) -> Path | None:
    """The file an `<img src>` names, when it names a local one (relative path or file: URL), whether or not
    it exists."""
    parsed = urlparse(src)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme or src.startswith("//") or not src:
        return None  # http(s), data: and protocol-relative URLs are not local files
    return page_folder / unquote(parsed.path)


def fill_missing_alt(page_path: Path, caption_images) -> tuple[str, list[str]]:
    """The page with alt text added to every `<img>` that has none and shows a local file; `caption_images`
    maps a list of paths to captions (None where an image could not be captioned). Returns the new page and
    notes on the images left without alt text."""
    try:
        page = page_path.read_bytes().decode("utf-8")  # not read_text(): its newline translation rewrites CRLF
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionerError(f"{page_path}: cannot read the page ({error})") from error
    tags = [tag for tag in image_tags(page) if not tag.has_alt]
    named = {tag.start: local_image(tag.src, page_path.parent) for tag in tags}
    targets = {start: path if path is not None and path.is_file() else None for start, path in named.items()}
    notes = [f"{tag.src or '(no src)'}: " + ("not a local file" if named[tag.start] is None
                                             else f"no such file {named[tag.start]}")
             for tag in tags if targets[tag.start] is None]
    paths = sorted({path for path in targets.values() if path is not None})
    captions = dict(zip(paths, caption_images(paths))) if paths else {}
    pieces, position = [], 0
    for tag in tags:
        path = targets[tag.start]
        caption = captions.get(path) if path else None
        if path is not None and caption is None:
            notes.append(f"{tag.src}: could not be captioned")
        if caption is None:
            continue
        closing = "/>" if tag.text.rstrip().endswith("/>") else ">"
        body = tag.text.rstrip()[: -len(closing)].rstrip()
        pieces += [page[position:tag.start], f'{body} alt="{html.escape(caption, quote=True)}"{closing}']
        position = tag.end
    pieces.append(page[position:])
    return "".join(pieces), notes


def gallery_page(items: list[tuple[Path, str | None]], page_path: Path, title: str = "Captions") -> str:
    """A page showing every image with its caption as alt text and as a visible caption."""
    figures = []
    for image, caption in items:
        source = os.path.relpath(image.resolve(), page_path.resolve().parent)
        alt = html.escape(caption or "", quote=True)
        text = html.escape(caption) if caption else "<em>could not be captioned</em>"
        url = html.escape(quote(Path(source).as_posix()), quote=True)
        figures.append(f'  <figure>\n    <img src="{url}" alt="{alt}" '
                       f'loading="lazy">\n    <figcaption>{text}<br><small>{html.escape(image.name)}</small>'
                       f"</figcaption>\n  </figure>")
    style = ("body{font-family:system-ui,sans-serif;margin:2rem;background:#fafafa;color:#222}"
             "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:1.5rem}"
             "figure{margin:0;background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;overflow:hidden}"
             "img{width:100%;height:12rem;object-fit:cover;display:block}"
             "figcaption{padding:.75rem;line-height:1.4}small{color:#666}")
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
            f"<style>{style}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n<main>\n"
            + "\n".join(figures) + "\n</main>\n</body>\n</html>\n")


def as_sentence(caption: str) -> str:
    """A caption as alt text reads: "a dog runs on the beach" -> "A dog runs on the beach."."""
    caption = caption.strip()
    return f"{caption[:1].upper()}{caption[1:]}." if caption else ""
