"""`captioner index`: every photo described once, then only what changed; moves, copies and removals noticed;
a run cut off at any batch goes on where it stopped."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.api import Captioner
from captioner.cli.command import main
from captioner.library.database import LibraryDatabase
from captioner.library.feature_file import FeatureFile
from captioner.library.indexer import (decode_settings, embedding_path, feature_path, feature_shape_key, index, library_location,
                                       model_identity)
from tests.library.helpers import collection, rows, run_index


def test_every_photo_is_described_as_caption_describes_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos")
    report = run_index(tiny_checkpoint, photos)
    library = photos / ".captioner"
    found = rows(library)
    assert report.added == 10 and len(found) == 10 and report.unreadable == 0
    assert sorted(found)[0] == "a/photo01.png"
    captioner = Captioner.load(tiny_checkpoint, "cpu")
    # the recommended decoding (beam 2 for this model), one caption per beam
    (expected,) = captioner.caption(photos / "a/photo01.png", **captioner.recommended_decoding, num_captions=2)
    size, digest, width, height, captions, tags, text = found["a/photo01.png"]
    assert [c[1] for c in captions] == [c.text for c in expected.captions] and len(captions) == 2
    assert (width, height) == expected.size and len(tags) == 10
    assert text[0].startswith(expected.text) and expected.tags[0][0] in text[1]
    model = model_identity(tiny_checkpoint)
    with LibraryDatabase.open(library) as database:
        assert database.feature_rows(model) == 10
        shape = tuple(map(int, database.meta()[feature_shape_key(model)].split("x")))
    stored = FeatureFile(feature_path(library, model), shape)
    assert stored.rows == 10
    _, read = captioner.describe_batch([("first", photos / "a/photo01.png")], decode_settings(captioner, 3))
    assert torch.equal(stored.read([0]), read.half())  # what the decoder read (the first path in order)


def test_a_model_that_flip_averages_embeds_each_photo_with_its_mirror_image(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Captioner, "recommended_decoding",
                        property(lambda self: {"beam_size": 2, "flip_average": True}))
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=4)
    captioner = Captioner.load(tiny_checkpoint, "cpu")
    run_index(tiny_checkpoint, photos, captioner=captioner)
    library, model = photos / ".captioner", model_identity(tiny_checkpoint)
    embedding = captioner.model.embedding
    _, views = captioner.describe_batch([("first", photos / "a/photo01.png")], decode_settings(captioner, 3),
                                        both_views=True)
    assert views.shape[1] == 2 and not torch.equal(views[:, 0], views[:, 1])
    shape = tuple(views.shape[2:])
    assert torch.equal(FeatureFile(feature_path(library, model), shape).read([0]), views[:, 0].half())
    stored = FeatureFile(embedding_path(library, model), (embedding.config.dim,)).read([0]).float()
    with torch.no_grad():
        both, plain = embedding.embed_views(views), embedding.embed_images(views[:, 0])
    assert stored == pytest.approx(both, abs=2e-3) and not torch.allclose(both, plain, atol=2e-3)


def test_a_second_run_describes_only_what_changed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos")
    run_index(tiny_checkpoint, photos)
    before = rows(photos / ".captioner")
    again = run_index(tiny_checkpoint, photos)
    assert (again.added, again.recaptioned, again.work.unchanged) == (0, 0, 10)
    assert rows(photos / ".captioner") == before

    os.utime(photos / "a/photo01.png", ns=(1, 10**18))  # touched: same content, new mtime
    with Image.open(photos / "b/c/photo00.png") as image:  # changed content, like no other photo's
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "b/c/photo00.png")
    (photos / "moved").mkdir()
    os.rename(photos / "a/photo05.png", photos / "moved/renamed.png")
    shutil.copyfile(photos / "a/photo07.png", photos / "a/copy.png")
    os.remove(photos / "b/c/photo02.png")
    report = run_index(tiny_checkpoint, photos)
    work = report.work
    assert (report.added, report.recaptioned) == (0, 1)  # only the changed file went through the model
    assert [p.path for _, p in work.touched] == ["a/photo01.png"]
    assert [(old.path, new.path) for old, new in work.moved] == [("a/photo05.png", "moved/renamed.png")]
    assert [(twin.path, copy.path) for twin, copy in work.copied] == [("a/photo07.png", "a/copy.png")]
    assert [image.path for image in work.removed] == ["b/c/photo02.png"]
    after = rows(photos / ".captioner")
    assert set(after) == set(before) - {"a/photo05.png", "b/c/photo02.png"} | {"moved/renamed.png", "a/copy.png"}
    assert after["moved/renamed.png"] == before["a/photo05.png"]
    assert after["a/copy.png"][4:] == before["a/photo07.png"][4:]
    assert after["b/c/photo00.png"][1] != before["b/c/photo00.png"][1] and after["b/c/photo00.png"][4]

    shutil.copyfile(photos / "a/photo09.png", photos / "b/c/photo02.png")  # a removed path comes back
    assert run_index(tiny_checkpoint, photos).work.copied


def test_a_run_cut_off_between_batches_goes_on_where_it_stopped(tiny_checkpoint: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    whole = collection(tiny_checkpoint, tmp_path / "whole")
    run_index(tiny_checkpoint, whole)
    photos = collection(tiny_checkpoint, tmp_path / "photos")
    from captioner.library import indexer

    real, calls = indexer.store_batch, []

    def dies_in_the_third_batch(database, features, batch, *args):
        calls.append(len(batch))
        if len(calls) == 3:
            features.append(args[1][:1])  # features written, then killed before the transaction
            raise KeyboardInterrupt
        return real(database, features, batch, *args)

    monkeypatch.setattr(indexer, "store_batch", dies_in_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_index(tiny_checkpoint, photos)
    assert len(rows(photos / ".captioner")) == 8  # two whole batches of 4
    monkeypatch.setattr(indexer, "store_batch", real)
    report = run_index(tiny_checkpoint, photos)
    assert report.added == 2 and rows(photos / ".captioner") == rows(whole / ".captioner")
    model = model_identity(tiny_checkpoint)
    with LibraryDatabase.open(photos / ".captioner") as database:
        assert database.feature_rows(model) == 10
    for path in (feature_path(Path(), model), embedding_path(Path(), model)):  # the orphan rows were cut off
        assert (photos / ".captioner" / path).stat().st_size == (whole / ".captioner" / path).stat().st_size > 0


def test_another_model_describes_the_library_again_and_says_so(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=4)
    run_index(tiny_checkpoint, photos)
    other = tmp_path / "other.pt"
    shutil.copyfile(tiny_checkpoint, other)
    with other.open("ab") as file:  # the same weights, but another file: another identity
        file.write(b"\0")
    folder, root = library_location([photos], None)
    said = []
    report = index([photos], Captioner.load(tiny_checkpoint, "cpu"), model_identity(other), folder, root,
                   batch_size=4, progress_bar=False, say=said.append)
    assert report.model_changed and report.recaptioned == 4
    assert any("another model" in line for line in said)


def test_unreadable_photos_are_recorded_and_the_rest_indexed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=3)
    (photos / "a/broken.jpg").write_bytes(b"not an image")
    report = run_index(tiny_checkpoint, photos)
    assert report.unreadable == 1 and report.added == 4
    connection = sqlite3.connect(photos / ".captioner/library.sqlite")
    error = connection.execute("SELECT error FROM images WHERE path = 'a/broken.jpg'").fetchone()[0]
    assert "broken.jpg" in error or "image" in error


def test_a_symlink_loop_is_reported_once_and_the_photos_indexed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=3)
    os.symlink(photos, photos / "a" / "loop")
    said = []
    folder, root = library_location([photos], None)
    report = index([photos], Captioner.load(tiny_checkpoint, "cpu"), model_identity(tiny_checkpoint), folder, root,
                   progress_bar=False, say=said.append)
    assert report.added == 3 and len(said) == 1 and "loop" in said[0]


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, "sqlite"])
def test_a_foreign_or_corrupt_database_is_one_clear_message(tiny_checkpoint: Path, tmp_path: Path, capsys,
                                                             content) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=2)
    (photos / ".captioner").mkdir()
    database = photos / ".captioner" / "library.sqlite"
    if content == "sqlite":
        connection = sqlite3.connect(database)
        connection.execute("CREATE TABLE notes (text TEXT)")
        connection.commit()
        connection.close()
    else:
        database.write_bytes(content)
    before = database.read_bytes()
    status = main(["index", str(photos), "--model_path", str(tiny_checkpoint)])
    error = capsys.readouterr().err
    if content == b"":  # an empty file is what SQLite makes of a new database: it becomes the library
        assert status == 0
        return
    assert status == 2 and "library.sqlite" in error and "not a" in error and error.count("\n") == 1
    assert database.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_library_folder_without_write_permission_is_one_clear_message(tiny_checkpoint: Path, tmp_path: Path,
                                                                          capsys) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=2)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["index", str(photos), "--model_path", str(tiny_checkpoint), "--library",
                     str(locked / "lib")]) == 2
    finally:
        locked.chmod(0o700)
    assert "lib" in capsys.readouterr().err


def test_the_command_prints_what_it_did(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=3)
    assert main(["index", str(photos), "--model_path", str(tiny_checkpoint)]) == 0
    assert "3 new" in capsys.readouterr().out
    assert main(["index", "--library", str(photos / ".captioner"), "--model_path", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "0 new" in out and "3 unchanged" in out


def test_a_library_that_cannot_be_made_is_one_clear_message(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=2)
    (tmp_path / "file").write_text("not a folder")
    assert main(["index", str(photos), "--model_path", str(tiny_checkpoint), "--library",
                 str(tmp_path / "file" / "lib")]) == 2
    error = capsys.readouterr().err
    assert "file/lib" in error and error.count("\n") == 1


@pytest.mark.slow
def test_two_processes_under_torchrun_index_what_one_does(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    one = collection(tiny_checkpoint, tmp_path / "one", count=9)
    two = collection(tiny_checkpoint, tmp_path / "two", count=9)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "captioner", "index", str(one), "--model_path",
                             str(tiny_checkpoint), "--batch_size", "2", "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "captioner", "index", str(two), "--model_path", str(tiny_checkpoint),
                               "--batch_size", "1", "--device", "cpu"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr
    assert "in 2 processes" in launched.stdout and "9 new" in launched.stdout
    first, second = rows(one / ".captioner"), rows(two / ".captioner")
    assert set(first) == set(second)
    for path, (size, digest, width, height, captions, tags, text) in first.items():
        other = second[path]
        assert (size, digest, width, height, text) == (other[0], other[1], other[2], other[3], other[6])
        assert [c[1] for c in captions] == [c[1] for c in other[4]]
        assert [c[2] for c in captions] == pytest.approx([c[2] for c in other[4]], abs=0.05)


def test_indexing_one_folder_of_a_library_leaves_the_others_alone(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=6)
    run_index(tiny_checkpoint, photos)
    (photos / "a" / "new.png").write_bytes((tiny_checkpoint.parents[2] / "shapes" / "Images" /
                                            "shapes_00070.png").read_bytes())
    folder, root = library_location([photos], None)
    report = index([photos / "a"], Captioner.load(tiny_checkpoint, "cpu"), model_identity(tiny_checkpoint), folder,
                   root, progress_bar=False, say=lambda line: None)
    assert report.added == 1 and not report.work.removed and len(rows(folder)) == 7


def test_photos_renumbered_onto_each_others_paths_keep_their_descriptions(tiny_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=8)
    run_index(tiny_checkpoint, photos)
    before = rows(photos / ".captioner")
    chain = ["a/photo01.png", "a/photo03.png", "a/photo05.png", "a/photo07.png"]  # each moves one place on
    os.rename(photos / chain[-1], photos / "a/photo09.png")
    for old, new in reversed(list(zip(chain, chain[1:]))):
        os.rename(photos / old, photos / new)
    report = run_index(tiny_checkpoint, photos)
    after = rows(photos / ".captioner")
    assert report.added == report.recaptioned == 0  # no photo went through the model again
    assert set(after) == set(before) - {"a/photo01.png"} | {"a/photo09.png"}
    assert after["a/photo09.png"][1:] == before["a/photo07.png"][1:]
    for old, new in zip(chain, chain[1:]):
        assert after[new][1:] == before[old][1:], new


def test_a_second_index_run_on_the_same_library_waits_its_turn(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from captioner.errors import CaptionerError
    from captioner.library.indexer import writing

    photos = collection(tiny_checkpoint, tmp_path / "photos", count=2)
    run_index(tiny_checkpoint, photos)
    with writing(photos / ".captioner"), pytest.raises(CaptionerError, match="another `captioner index`"):
        run_index(tiny_checkpoint, photos)


def test_symlinks_out_of_the_photo_folder_are_reported_and_not_indexed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=2)
    elsewhere = collection(tiny_checkpoint, tmp_path / "elsewhere", count=2)
    os.symlink(elsewhere / "b", photos / "linked")
    os.symlink(elsewhere / "b/c/photo00.png", photos / "a" / "linked.png")
    said = []
    folder, root = library_location([photos], None)
    report = index([photos], Captioner.load(tiny_checkpoint, "cpu"), model_identity(tiny_checkpoint), folder, root,
                   progress_bar=False, say=said.append)
    assert report.added == 2 and len(said) == 2 and all("out of the photo folder" in line for line in said)
