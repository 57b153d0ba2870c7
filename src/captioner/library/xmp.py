"""XMP sidecars (`photo.jpg.xmp`, as digiKam, darktable and Lightroom read them) with each photo's caption as
dc:description and its tags as dc:subject, written with exiv2 (pyexiv2). The photos are never opened for
writing; an existing sidecar keeps every other field, its keywords and (unless asked) its description; each
sidecar is replaced atomically.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from captioner.alttext import as_sentence
from captioner.errors import CaptionerError

EMPTY_PACKET = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
                '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>\n'
                '<?xpacket end="w"?>\n')
# pyexiv2 writes every array as rdf:Seq; Dublin Core's dc:subject is an unordered rdf:Bag
_SUBJECT_SEQ = re.compile(r"(<dc:subject>\s*)<rdf:Seq>(.*?)</rdf:Seq>(\s*</dc:subject>)", re.DOTALL)


def _pyexiv2():
    try:
        import pyexiv2
    except ImportError as error:
        raise CaptionerError("XMP sidecars need exiv2's Python binding: pip install 'captioner[xmp]'") from error
    return pyexiv2


def sidecar_path(photo: Path) -> Path:
    return photo.with_name(photo.name + ".xmp")


def write_sidecar(photo: Path, caption: str, tags: list[str], replace_description: bool = False) -> Path:
    """Add the tags to dc:subject (keywords already there stay: a person may have typed them) and the caption as
    dc:description where there is none (or always, with `replace_description`), in the photo's sidecar, made
    if absent; returns its path."""
    pyexiv2 = _pyexiv2()
    target = sidecar_path(photo)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".xmp")
    os.close(handle)
    try:
        if target.exists():
            shutil.copyfile(target, temporary)
        else:
            Path(temporary).write_text(EMPTY_PACKET, encoding="utf-8")
        try:
            image = pyexiv2.Image(temporary)
        except Exception as error:  # noqa: BLE001 - exiv2 reports a damaged sidecar as a plain RuntimeError
            raise CaptionerError(f"{target} is not a readable XMP sidecar: {error}") from error
        try:
            fields = image.read_xmp()
            subjects = fields.get("Xmp.dc.subject") or []
            subjects = [subjects] if isinstance(subjects, str) else list(subjects)
            changes: dict[str, object] = {"Xmp.dc.subject": [*subjects, *(t for t in tags if t not in subjects)]}
            if replace_description or not fields.get("Xmp.dc.description"):
                changes["Xmp.dc.description"] = {'lang="x-default"': as_sentence(caption)}
            image.modify_xmp(changes)
            packet = image.read_raw_xmp()
            bag = _SUBJECT_SEQ.sub(r"\1<rdf:Bag>\2</rdf:Bag>\3", packet)
            if bag != packet:
                image.modify_raw_xmp(bag)
        finally:
            image.close()
        if target.exists():
            shutil.copymode(target, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target


def read_sidecar(path: Path) -> dict[str, object]:
    """The sidecar's XMP fields by exiv2 key (for tests and checks)."""
    image = _pyexiv2().Image(str(path))
    try:
        return image.read_xmp()
    finally:
        image.close()
