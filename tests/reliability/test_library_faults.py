"""A library survives what a long index run meets: killed (SIGKILL) at random moments and run again, it ends
with the rows of an uninterrupted run; searches while it writes never fail; photos deleted mid-run are left out."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from captioner.api import Captioner
from captioner.library import Library
from tests.library.helpers import collection, rows, run_index

KILL_POINTS = [pytest.param(3, id="3 kills"), pytest.param(10, id="10 kills", marks=pytest.mark.slow)]


def index_command(checkpoint: Path, photos: Path) -> list[str]:
    return [sys.executable, "-m", "captioner", "index", str(photos), "--model_path", str(checkpoint),
            "--batch_size", "2"]


def committed(library: Path) -> int:
    """Photos the database holds now (read as another process would: WAL lets it while the run writes)."""
    try:
        connection = sqlite3.connect(f"file:{library / 'library.sqlite'}?mode=ro", uri=True, timeout=1)
        try:
            return connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:  # not made yet
        return 0


@pytest.mark.parametrize("kill_points", KILL_POINTS)
def test_index_killed_at_random_moments_ends_as_an_uninterrupted_run(tiny_checkpoint: Path, tmp_path: Path,
                                                                   kill_points: int) -> None:
    whole = collection(tiny_checkpoint, tmp_path / "whole", count=16)
    run_index(tiny_checkpoint, whole, batch_size=2)
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=16)
    rng = random.Random(kill_points)
    # each run is killed once the database holds this many photos, then a moment later (0-50 ms): in the
    # middle of a batch, of a transaction or of the features' write
    targets = sorted(rng.sample(range(1, 15), kill_points))
    killed = 0
    for target in targets:
        process = subprocess.Popen(index_command(tiny_checkpoint, photos), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while process.poll() is None and committed(photos / ".captioner") < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.wait()
    finished = subprocess.run(index_command(tiny_checkpoint, photos), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert killed >= kill_points // 2 and rows(photos / ".captioner") == rows(whole / ".captioner")


def test_searching_while_an_index_run_writes_never_fails(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=16)
    captioner = Captioner.load(tiny_checkpoint, "cpu")
    run_index(tiny_checkpoint, photos, captioner=captioner, batch_size=16)  # the library exists
    failures, searches, done = [], [], threading.Event()

    def search_meanwhile() -> None:
        with Library(photos / ".captioner", captioner.model) as library:
            while not done.is_set():
                try:
                    searches.append(len(library.search("a red circle", candidates=3).hits))
                except Exception as error:  # noqa: BLE001 - any failure is what this test looks for
                    failures.append(error)

    searcher = threading.Thread(target=search_meanwhile)
    searcher.start()
    try:
        run_index(tiny_checkpoint, photos, captioner=captioner, batch_size=1, reindex=True)
    finally:
        done.set()
        searcher.join()
    assert not failures and len(searches) > 3


def test_a_photo_deleted_after_the_scan_is_left_out(tiny_checkpoint: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=4)
    captioner = Captioner.load(tiny_checkpoint, "cpu")
    real = captioner.describe_batch

    def deleted_first(batch, settings, **options):
        (photos / batch[0][0]).unlink(missing_ok=True)  # gone between the listing and the reading
        return real(batch, settings, **options)

    monkeypatch.setattr(captioner, "describe_batch", deleted_first)
    report = run_index(tiny_checkpoint, photos, captioner=captioner, batch_size=4)
    assert report.work.vanished == 1 and report.unreadable == 0 and len(rows(photos / ".captioner")) == 3
