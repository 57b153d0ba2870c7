"""A library survives what a long index run meets: killed (SIGKILL) at random moments and run again, it ends
with the rows of an uninterrupted run; searches while it writes never fail; photos deleted mid-run are left out."""

from __future__ import annotations

import random
import signal
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


@pytest.mark.parametrize("kill_points", KILL_POINTS)
def test_index_killed_at_random_moments_ends_as_an_uninterrupted_run(tiny_checkpoint: Path, tmp_path: Path,
                                                                   kill_points: int) -> None:
    whole = collection(tiny_checkpoint, tmp_path / "whole", count=16)
    run_index(tiny_checkpoint, whole, batch_size=2)
    photos = collection(tiny_checkpoint, tmp_path / "photos", count=16)
    moments = random.Random(kill_points).sample(range(5, 80), kill_points)  # tenths of a second after start-up
    killed = 0
    for moment in sorted(moments):
        process = subprocess.Popen(index_command(tiny_checkpoint, photos), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(moment / 10)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.wait()
    finished = subprocess.run(index_command(tiny_checkpoint, photos), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert killed >= 1 and rows(photos / ".captioner") == rows(whole / ".captioner")


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

    def deleted_first(batch, settings):
        (photos / batch[0][0]).unlink(missing_ok=True)  # gone between the listing and the reading
        return real(batch, settings)

    monkeypatch.setattr(captioner, "describe_batch", deleted_first)
    report = run_index(tiny_checkpoint, photos, captioner=captioner, batch_size=4)
    assert report.work.vanished == 1 and report.unreadable == 0 and len(rows(photos / ".captioner")) == 3
