"""`captioner library xmp`: sidecars with the caption and tags, read back with exiv2; an existing sidecar keeps
its other fields; the photos are never changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.cli.command import main
from captioner.library.xmp import read_sidecar, sidecar_path, write_sidecar
from tests.library.helpers import collection, run_index

pytest.importorskip("pyexiv2")

RATED = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
         'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
         'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="4">'
         '<dc:subject><rdf:Bag><rdf:li>old</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF>'
         '</x:xmpmeta>\n<?xpacket end="w"?>\n')


def test_sidecars_carry_caption_and_tags_and_keep_other_fields(tiny_checkpoint: Path, tmp_path: Path,
                                                               capsys) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=3)
    run_index(tiny_checkpoint, photos)
    originals = {path: path.read_bytes() for path in photos.rglob("*.png")}
    rated = sorted(originals)[0]
    sidecar_path(rated).write_text(RATED, encoding="utf-8")
    assert main(["library", "xmp", "--library", str(photos / ".captioner"), "--min_probability", "0"]) == 0
    assert "3 written" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in photos.rglob("*.png")} == originals  # photos untouched
    for photo in originals:
        fields = read_sidecar(sidecar_path(photo))
        description = fields["Xmp.dc.description"]['lang="x-default"']
        assert description.endswith(".") and description[0].isupper()
        assert len(set(fields["Xmp.dc.subject"]) - {"old"}) == 10
    kept = read_sidecar(sidecar_path(rated))
    assert kept["Xmp.xmp.Rating"] == "4" and kept["Xmp.dc.subject"][0] == "old"  # a keyword typed by hand stays
    assert "<rdf:Bag>" in sidecar_path(rated).read_text(encoding="utf-8")  # dc:subject stays a bag
    before = {photo: read_sidecar(sidecar_path(photo)) for photo in originals}
    assert main(["library", "xmp", "--library", str(photos / ".captioner"), "--min_probability", "0"]) == 0
    assert {photo: read_sidecar(sidecar_path(photo)) for photo in originals} == before  # again: nothing doubled
    sidecar = sidecar_path(rated)
    write_sidecar(rated, "a hand written caption", [])
    assert read_sidecar(sidecar)["Xmp.dc.description"] == before[rated]["Xmp.dc.description"]  # kept
    write_sidecar(rated, "a new caption", [], replace_description=True)
    assert read_sidecar(sidecar)["Xmp.dc.description"]['lang="x-default"'] == "A new caption."
    assert not list(photos.rglob(".*.xmp"))  # no temporary file left behind


def test_a_damaged_sidecar_is_one_clear_message_and_stays(tmp_path: Path) -> None:
    from captioner.errors import CaptionerError
    from tests.conftest import write_image

    photo = write_image(tmp_path / "photo.jpg")
    sidecar_path(photo).write_bytes(b"\0garbage")
    with pytest.raises(CaptionerError, match="photo.jpg.xmp"):
        write_sidecar(photo, "a dog", ["dog"])
    assert sidecar_path(photo).read_bytes() == b"\0garbage"
