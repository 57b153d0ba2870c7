from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import captioner.features.extract as features
from captioner.errors import CaptionerError
from captioner.features.extract import extract_features
from captioner.features.store import FeatureStore
from tests.bad_images import write_bad_files, write_good_variants
from tests.conftest import write_image


def photos(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(1)
    return [write_image(folder / f"p{i:02d}.png", (48, 40), tuple(int(v) for v in rng.integers(0, 255, 3)))
            for i in range(count)]


def extract(images: list[Path], cache: Path, **options) -> FeatureStore:
    options.setdefault("batch_size", 4)
    return extract_features(images, "tiny_random", cache_dir=cache, num_workers=0, progress=False, **options)


def test_cache_holds_grid_and_pooled_float16_memory_mapped(tmp_path: Path) -> None:
    images = photos(tmp_path / "img", 6)
    store = extract(images, tmp_path / "cache")
    assert store.grid.shape == (6, 16, 64) and store.pooled.shape == (6, 64)
    assert store.grid.dtype == np.float16 and isinstance(store.grid, np.memmap)
    row = store.row(images[2])
    np.testing.assert_allclose(store.grid[row].astype(np.float32).mean(0), store.pooled[row], rtol=0.01, atol=1e-3)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["settings"]["encoder"] == "tiny_random" and manifest["settings"]["image_size"] == 64
    assert manifest["images"] == [str(path) for path in images]
    assert "resize to 64x64" in manifest["settings"]["transform"]


def test_second_run_reuses_the_cache(tmp_path: Path, monkeypatch) -> None:
    images = photos(tmp_path / "img", 4)
    extract(images, tmp_path / "cache")
    monkeypatch.setattr(features, "_build", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
    assert extract(images[:2], tmp_path / "cache").covers(images)


def test_cache_with_other_settings_is_refused(tmp_path: Path) -> None:
    images = photos(tmp_path / "img", 3)
    extract(images, tmp_path / "cache")
    with pytest.raises(CaptionerError, match=r"built with other settings \(image_size: cache has 64, now 96"):
        extract(images, tmp_path / "cache", image_size=96)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(CaptionerError, match="not a feature cache"):
        extract(images, tmp_path / "other")
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_new_images_are_added_and_cached_rows_copied(tmp_path: Path) -> None:
    images = photos(tmp_path / "img", 8)
    extract(images[:3], tmp_path / "grown")
    grown = extract(images, tmp_path / "grown")
    whole = extract(images, tmp_path / "whole")
    for image in images:
        np.testing.assert_array_equal(grown.grid[grown.row(image)], whole.grid[whole.row(image)])


def test_interrupted_extraction_resumes_and_equals_one_go(tmp_path: Path, monkeypatch) -> None:
    images = photos(tmp_path / "img", 12)
    whole = extract(images, tmp_path / "whole")

    monkeypatch.setattr(features, "FLUSH_EVERY_S", 0.0)
    original = features._ImageFiles.__getitem__
    calls = {"n": 0}

    def dies_at_the_ninth_image(self, index):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(features._ImageFiles, "__getitem__", dies_at_the_ninth_image)
    with pytest.raises(KeyboardInterrupt):
        extract(images, tmp_path / "resumed")
    progress = json.loads((tmp_path / "resumed.partial" / "progress.json").read_text())
    assert progress["done"] == 8 and not (tmp_path / "resumed").exists()

    monkeypatch.setattr(features._ImageFiles, "__getitem__", original)
    seen = []
    monkeypatch.setattr(features._ImageFiles, "__getitem__", lambda self, i: seen.append(i) or original(self, i))
    resumed = extract(images, tmp_path / "resumed")
    assert len(seen) == 4  # only the last four images were encoded again
    np.testing.assert_array_equal(np.asarray(resumed.grid), np.asarray(whole.grid))
    np.testing.assert_array_equal(np.asarray(resumed.pooled), np.asarray(whole.pooled))
    assert not (tmp_path / "resumed.partial").exists()


def test_bad_images_are_skipped_by_name_and_the_rest_goes_on(tmp_path: Path, capsys) -> None:
    good = list(write_good_variants(tmp_path / "good").values())
    bad = list(write_bad_files(tmp_path / "bad").values())
    store = extract(good + bad, tmp_path / "cache")
    assert all(store.row(path) is not None for path in good)
    assert all(store.row(path) is None for path in bad)
    assert set(store.skipped) == {str(path) for path in bad}
    assert "empty.jpg" in store.skipped[str(tmp_path / "bad" / "empty.jpg")]
    assert "skipped" in capsys.readouterr().out


def test_flip_features_are_the_features_of_the_mirrored_image(tmp_path: Path) -> None:
    halves = np.zeros((40, 48, 3), dtype=np.uint8)
    halves[:, :24] = (255, 0, 0)
    halves[:, 24:] = (0, 0, 255)
    (tmp_path / "img").mkdir()
    Image.fromarray(halves).save(tmp_path / "img" / "halves.png")
    Image.fromarray(halves[:, ::-1].copy()).save(tmp_path / "img" / "mirrored.png")
    store = extract([tmp_path / "img" / "halves.png", tmp_path / "img" / "mirrored.png"], tmp_path / "cache",
                    flip=True)
    assert store.grid_flip is not None and store.grid_flip.shape == store.grid.shape
    halves_row, mirrored_row = store.row(tmp_path / "img" / "halves.png"), store.row(tmp_path / "img" / "mirrored.png")
    assert not np.allclose(store.grid[halves_row], store.grid_flip[halves_row])
    np.testing.assert_allclose(store.grid_flip[halves_row], store.grid[mirrored_row], atol=2e-3)
    rows = [halves_row, mirrored_row]
    for use_grid, flipped in ((True, store.grid_flip), (False, store.pooled_flip)):  # all mirrored, and mixed
        assert np.array_equal(store.features(rows, use_grid, flip=np.array([True, True])).numpy(), flipped[rows])
        mixed = store.features(rows, use_grid, flip=np.array([False, True])).numpy()
        assert np.array_equal(mixed[0], (store.grid if use_grid else store.pooled)[halves_row])
        assert np.array_equal(mixed[1], flipped[mirrored_row])


def test_cli_extract_reports_skipped_files(tmp_path: Path, capsys) -> None:
    from captioner.cli.command import main

    for name in ("a.png", "b.png"):
        write_image(tmp_path / "data" / "Images" / name)
    (tmp_path / "data" / "Images" / "c.png").write_bytes(b"")
    (tmp_path / "data" / "captions.txt").write_text("image,caption\na.png,a red\nb.png,a red\nc.png,broken\n")
    code = main(["extract", "--dataset_type", "csv", "--data_dir", str(tmp_path / "data"), "--encoder",
                 "tiny_random", "--cache_dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0
    assert "features of 2 images (4x4x64 grid" in out
    assert "skipped 1 unreadable images" in out and "c.png: an empty file" in out


def test_relative_image_paths_find_their_rows(tmp_path: Path, monkeypatch) -> None:
    """Bug: a dataset read from a relative --data_dir looked its images up by relative path and missed."""
    images = photos(tmp_path / "img", 2)
    monkeypatch.chdir(tmp_path)
    relative = [Path("img") / path.name for path in images]
    store = extract(relative, tmp_path / "cache")
    assert store.row(relative[1]) == store.row(images[1]) == 1
    assert store.covers(relative)


def test_a_full_disk_is_a_clear_error_and_the_old_cache_stays(tmp_path: Path, monkeypatch) -> None:
    images = photos(tmp_path / "img", 6)
    old = extract(images[:3], tmp_path / "cache")
    before = np.array(old.grid)

    def disk_full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features.os, "posix_fallocate", disk_full)
    with pytest.raises(CaptionerError, match="No space left on device.*existing cache there is untouched"):
        extract(images, tmp_path / "cache")
    monkeypatch.undo()
    again = FeatureStore.open(tmp_path / "cache")
    np.testing.assert_array_equal(np.array(again.grid), before)
    assert not (tmp_path / "cache.partial").exists()


def test_a_cache_with_flipped_rows_serves_plain_requests(tmp_path: Path, monkeypatch) -> None:
    """Training with --augment_flip into a --cache_dir, then evaluating from that folder (no flips wanted),
    used to be refused as "built with other settings"; new images are then added with their flips."""
    images = photos(tmp_path / "img", 4)
    flipped = extract(images[:3], tmp_path / "cache", flip=True)
    grid = np.array(flipped.grid)
    monkeypatch.setattr(features, "_build", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
    plain = extract(images[:3], tmp_path / "cache")
    np.testing.assert_array_equal(np.array(plain.grid), grid)
    monkeypatch.undo()
    grown = extract(images, tmp_path / "cache")
    assert grown.covers(images) and grown.grid_flip is not None and grown.grid_flip.shape[0] == 4


def test_a_second_process_waits_for_the_one_building_the_cache(tmp_path: Path, capsys) -> None:
    """Two extractions into one folder at once left a broken cache; now the second waits for the first's lock."""
    import fcntl
    import threading

    images, cache = photos(tmp_path / "img", 4), tmp_path / "cache"
    with open(tmp_path / "cache.lock", "a") as held:  # another process building the cache
        fcntl.flock(held, fcntl.LOCK_EX)
        result: list[FeatureStore] = []
        waiting = threading.Thread(target=lambda: result.append(extract(images, cache)))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not cache.exists() and not (tmp_path / "cache.partial").exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    waiting.join(timeout=60)
    assert result and result[0].covers(images)
    assert f"waiting for another process building the feature cache {cache}" in capsys.readouterr().err
