"""`captioner caption` on the small model trained for the tests."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from captioner.cli.command import main


def shapes_images(checkpoint: Path, count: int) -> list[Path]:
    return sorted((checkpoint.parents[2] / "shapes").rglob("*.png"))[:count]


def test_formats_globs_and_unreadable_files(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in shapes_images(tiny_checkpoint, 3):
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    code = main(["caption", str(folder / "*.png"), "--model_path", str(tiny_checkpoint), "--format", "json",
                 "--num_captions", "2"])
    out, err = capsys.readouterr()
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 4 and sum("error" in row for row in rows) == 1
    assert all(len(row["captions"]) == 2 for row in rows if "error" not in row)
    assert "1 of 4 images could not be captioned" in err and "broken.png" in err
    assert main(["caption", str(folder), "--model_path", str(tiny_checkpoint), "--format", "csv",
                 "--strategy", "greedy", "--output", str(tmp_path / "captions.csv")]) == 0
    table = list(csv.DictReader(io.StringIO((tmp_path / "captions.csv").read_text())))
    assert [row["rank"] for row in table].count("1") == 3
    capsys.readouterr()
    assert main(["caption", *map(str, shapes_images(tiny_checkpoint, 2)), "--model_path", str(tiny_checkpoint),
                 "--html", str(tmp_path / "page.html")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("\t" in line for line in lines)
    assert (tmp_path / "page.html").read_text().count("<img ") == 2


def test_alt_text_into_writes_a_new_page(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    image = shapes_images(tiny_checkpoint, 1)[0]
    (tmp_path / "pic.png").write_bytes(image.read_bytes())
    page = tmp_path / "index.html"
    page.write_text('<html><body><img src="pic.png"><img src="http://x/y.jpg"></body></html>')
    assert main(["caption", "--model_path", str(tiny_checkpoint), "--alt-text-into", str(page)]) == 0
    new_page = (tmp_path / "index.alt.html").read_text()
    assert '<img src="pic.png" alt="' in new_page and "y.jpg" in capsys.readouterr().err
    assert page.read_text().count("alt=") == 0


def test_every_image_unreadable_is_a_failure(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main(["caption", str(tmp_path / "nothing.jpg"), "--model_path", str(tiny_checkpoint)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_recommended_captions_as_the_explicit_flags_do(tiny_checkpoint: Path, capsys) -> None:
    images = [str(path) for path in shapes_images(tiny_checkpoint, 4)]
    command = ["caption", *images, "--model_path", str(tiny_checkpoint), "--format", "json", "--num_captions", "2"]
    assert main([*command, "--recommended"]) == 0
    recommended = json.loads(capsys.readouterr().out)
    assert main([*command, "--beam_size", "2", "--length_penalty", "1", "--no_repeat_ngram", "2"]) == 0
    assert recommended == json.loads(capsys.readouterr().out)
    assert main([*command, "--recommended", "--strategy", "greedy", "--num_captions", "1"]) == 0  # explicit wins
    assert all(len(row["captions"]) == 1 for row in json.loads(capsys.readouterr().out))


def test_nothing_to_caption_or_nowhere_to_write_fails_before_the_model_loads(tmp_path: Path, capsys) -> None:
    """The model path does not exist: each error must come first, before any captioning whose result is lost."""
    (tmp_path / "empty").mkdir()
    image = tmp_path / "a.png"
    image.write_bytes(b"not read")
    (tmp_path / "a_file").write_text("")
    missing_model = str(tmp_path / "no_model.pt")
    assert main(["caption", str(tmp_path / "empty"), "--model_path", missing_model]) == 2
    assert "no images (.bmp, .gif" in capsys.readouterr().err
    for option in ("--output", "--html"):
        assert main(["caption", str(image), "--model_path", missing_model, option, str(tmp_path / "a_file" / "x")]) == 2
        assert f"{tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    assert main(["caption", str(image), "--model_path", missing_model, "--output", str(tmp_path)]) == 2
    assert "is a folder; name the file to write" in capsys.readouterr().err


def test_a_run_folder_given_as_the_model_says_which_file_to_name(tiny_checkpoint: Path, capsys) -> None:
    image = shapes_images(tiny_checkpoint, 1)[0]
    assert main(["caption", str(image), "--model_path", str(tiny_checkpoint.parent)]) == 2
    assert "is a folder, not a checkpoint file; it holds best.pt" in capsys.readouterr().err


def test_alt_text_into_takes_both_spellings_and_no_other_images(tmp_path: Path, capsys) -> None:
    page = tmp_path / "page.html"
    page.write_text("<img src='a.png'>")
    assert main(["caption", "b.png", "--model_path", str(tmp_path / "m.pt"), "--alt_text_into", str(page)]) == 2
    assert "--alt-text-into captions the images its page shows; leave out the images named (b.png)" in \
        capsys.readouterr().err
