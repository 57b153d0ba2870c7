"""Crashes cost nothing already done: training and extraction killed with SIGKILL at many moments, then
resumed, end exactly where an uninterrupted run ends, and no file left behind is truncated."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.models.checkpoint import load_checkpoint
from captioner.data.shapes import generate_shapes

# the default run kills at a few moments; the full set runs under -m slow (make test-slow, which CI runs too)
KILL_POINTS = [pytest.param(3, id="3 kills"), pytest.param(10, id="10 kills", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("crash") / "shapes", num_images=90, seed=11)


def train_arguments(data: Path, cache: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "captioner", "train", "--dataset_type", "shapes", "--data_dir", str(data),
            "--encoder", "tiny_random", "--cache_dir", str(cache), "--decoder", "attention", "--embed_size", "32",
            "--hidden_size", "32", "--attention_dim", "16", "--epochs", "3", "--batch_size", "4",
            "--learning_rate", "3e-3", "--freq_threshold", "1", "--use_scheduler", "--scheduler_type", "cosine",
            "--output_dir", str(output), *extra]


def newest_checkpoint(folder: Path) -> Path | None:
    checkpoints = sorted(folder.glob("*/model_epoch_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return checkpoints[-1] if checkpoints else None


def assert_nothing_half_written(run: Path) -> None:
    for path in run.iterdir():
        if path.name.startswith("."):
            continue  # an atomic write's temporary file: never read, removed when the run is resumed
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                image.load()
        elif path.suffix in (".txt", ".log"):
            assert path.read_text().endswith("\n"), path


@pytest.mark.parametrize("kill_points", KILL_POINTS)
def test_training_killed_at_many_moments_resumes_to_the_same_weights(data: Path, tmp_path: Path,
                                                                     kill_points: int) -> None:
    cache = tmp_path / "cache"
    # build the feature cache first, so the timed run (and every later one) is training alone
    built = subprocess.run([sys.executable, "-m", "captioner", "extract", "--dataset_type", "shapes", "--data_dir",
                            str(data), "--encoder", "tiny_random", "--cache_dir", str(cache)], capture_output=True)
    assert built.returncode == 0, built.stderr
    started = time.monotonic()
    whole = subprocess.run(train_arguments(data, cache, tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    duration = time.monotonic() - started
    (whole_run,) = (tmp_path / "whole").iterdir()
    expected = load_checkpoint(whole_run / "model_epoch_3.pt")["model"]
    chooser = random.Random(5)
    kills = 0
    for point in range(kill_points):
        output = tmp_path / f"killed_{point}"
        process = subprocess.Popen(train_arguments(data, cache, output), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        launched = time.monotonic()
        kill_at = launched + chooser.uniform(0.2, 0.7) * duration  # startup is part of every run
        while time.monotonic() < kill_at and process.poll() is None:
            time.sleep(0.02)
        if process.poll() is not None:  # it ran faster than the timed run (a busy machine then): time the rest by it
            duration = time.monotonic() - launched
        process.send_signal(signal.SIGKILL)
        kills += process.wait() == -signal.SIGKILL
        for run in output.iterdir() if output.exists() else []:
            assert_nothing_half_written(run)
        resume = newest_checkpoint(output)
        finish = subprocess.run(train_arguments(data, cache, tmp_path / f"resumed_{point}",
                                                *(["--resume", str(resume)] if resume else [])),
                                capture_output=True, text=True)
        if resume is not None and resume.name == "model_epoch_3.pt":  # killed after its last epoch: done
            assert finish.returncode == 2 and "nothing is left to train" in finish.stderr, finish.stderr
        else:
            assert finish.returncode == 0, finish.stderr
        final = newest_checkpoint(tmp_path / f"resumed_{point}") or resume
        assert final.name == "model_epoch_3.pt"
        weights = load_checkpoint(final)["model"]
        for name, value in expected.items():
            assert torch.equal(weights[name], value), (point, name)
        if resume is not None:
            assert not list(resume.parent.glob(".*.tmp")), "resuming cleans the killed run's temporary files"
    assert kills >= kill_points // 2, "most runs should have been killed before they finished"


def test_killed_while_writing_a_checkpoint(data: Path, tmp_path: Path) -> None:
    """Writes made slow (a pause between writing the temporary file and renaming it) so the kill lands in the
    middle of one: the previous checkpoint stays whole and the run resumes from it."""
    slow = ("import os, sys, time, captioner.io as io\n"
            "real = os.replace\n"
            "def replace(a, b):\n"
            "    if str(b).endswith('model_epoch_2.pt'):\n"
            "        open(sys.argv[-1] + '.writing', 'w').close(); time.sleep(30)\n"
            "    real(a, b)\n"
            "io.os.replace = replace\n"
            "from captioner.cli.command import main\n"
            "sys.exit(main(sys.argv[1:-1]))\n")
    output = tmp_path / "killed"
    marker = tmp_path / "marker"
    arguments = train_arguments(data, tmp_path / "cache", output)[3:]
    process = subprocess.Popen([sys.executable, "-c", slow, *arguments, str(marker)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not Path(str(marker) + ".writing").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run,) = output.iterdir()
    assert (run / "model_epoch_1.pt").exists() and not (run / "model_epoch_2.pt").exists()
    assert list(run.glob(".model_epoch_2.pt.*.tmp")), "the kill landed mid-write"
    assert_nothing_half_written(run)
    finish = subprocess.run(train_arguments(data, tmp_path / "cache", tmp_path / "resumed", "--resume",
                                            str(run / "model_epoch_1.pt")), capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("kill_points", KILL_POINTS)
def test_extraction_killed_at_many_moments_resumes_to_the_same_cache(data: Path, tmp_path: Path,
                                                                     kill_points: int) -> None:
    def extract(cache: Path) -> list[str]:
        return [sys.executable, "-m", "captioner", "extract", "--dataset_type", "shapes", "--data_dir", str(data),
                "--encoder", "efficientnet_lite0_random", "--image_size", "96", "--cache_dir", str(cache),
                "--batch_size", "4"]

    started = time.monotonic()
    assert subprocess.run(extract(tmp_path / "whole"), capture_output=True).returncode == 0
    duration = time.monotonic() - started
    whole = {name: np.load(tmp_path / "whole" / f"{name}.npy") for name in ("grid", "pooled")}
    manifest = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    chooser = random.Random(9)
    cache = tmp_path / "killed"
    for _ in range(kill_points):
        process = subprocess.Popen(extract(cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(chooser.uniform(0.3, 0.9) * duration)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert subprocess.run(extract(cache), capture_output=True).returncode == 0
    assert json.loads((cache / "manifest.json").read_text())["images"] == manifest["images"]
    for name, array in whole.items():
        assert np.array_equal(np.load(cache / f"{name}.npy"), array), name
