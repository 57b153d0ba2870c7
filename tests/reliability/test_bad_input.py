"""Every command that reads user data, on a Flickr8k-style folder holding every kind of bad input: each one
either handles a bad item or names the file and the problem, and the batch around it goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.cli.command import main
from tests.bad_images import write_bad_files, write_good_variants

WORDS = ["red", "blue", "green", "circle", "square", "dog", "grass", "runs", "sits", "big"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "flickr8k"
    images = root / "Images"
    rng = np.random.default_rng(0)
    good = []
    for index in range(36):
        path = images / f"photo_{index:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        good.append(path.name)
    good += [p.name for p in write_good_variants(images).values()]
    bad = [p.name for p in write_bad_files(images).values()]
    (images / "no_captions.jpg").write_bytes((images / "photo_00.jpg").read_bytes())  # an image without captions
    lines = []
    for index, name in enumerate(good + bad):
        for number in range(3):
            words = [WORDS[(index + number + k) % len(WORDS)] for k in range(4)]
            lines.append(f"{name}#{number}\ta {' '.join(words)} .")
    lines.append("ghost.jpg#0\ta caption whose image does not exist")  # an id without an image
    lines.append(f"{good[0]}#3\t")  # a blank caption
    lines.append(f"{good[1]}#3\t" + " ".join(["long"] * 500))  # a caption of 500 words
    text = "\r\n".join(lines) + "\r\n"  # CRLF
    encoded = "\ufeff".encode() + text.encode("utf-8")  # a BOM
    encoded += f"{good[2]}#4\ta caf\xe9 by the lake\r\n".encode("cp1252")  # a line in another encoding
    (root / "Flickr8k.token.txt").write_bytes(encoded)
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(good[:28] + bad[:2]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(good[28:36] + bad[2:3]) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text("\n".join(good[36:] + bad[3:]) + "\n")
    return root


def common(corpus: Path, tmp_path: Path) -> list[str]:
    return ["--dataset_type", "flickr8k", "--data_dir", str(corpus), "--encoder", "tiny_random",
            "--cache_dir", str(tmp_path / "cache")]


def test_data_stats_reports_every_quirk(corpus: Path, capsys) -> None:
    assert main(["data", "stats", "--dataset_type", "flickr8k", "--data_dir", str(corpus), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    report = json.dumps(stats)
    assert "ghost.jpg" in report or "without an image" in report
    assert "blank" in report or "empty" in report
    assert "repaired" in report


def test_extract_train_evaluate_and_caption_go_on_past_bad_files(corpus: Path, tmp_path: Path, capsys) -> None:
    assert main(["extract", *common(corpus, tmp_path)]) == 0
    out = capsys.readouterr()
    for name in ("empty.jpg", "truncated.jpg", "notes.jpg", "bomb.png"):
        assert name in out.out + out.err, name
    runs = tmp_path / "runs"
    assert main(["train", *common(corpus, tmp_path), "--decoder", "attention", "--embed_size", "16",
                 "--hidden_size", "16", "--attention_dim", "16", "--epochs", "1", "--batch_size", "8",
                 "--freq_threshold", "1", "--output_dir", str(runs)]) == 0
    (run,) = runs.iterdir()
    assert "could not read" in (run / "train.log").read_text()
    capsys.readouterr()
    assert main(["evaluate", "--model_path", str(run / "best.pt"), "--strategy", "greedy"]) == 0
    about = json.loads(next(run.glob("eval_test_greedy/evaluation.json")).read_text())
    assert about["images_skipped"] >= 1 and about["images"] >= 1
    capsys.readouterr()
    assert main(["caption", str(corpus / "Images"), "--model_path", str(run / "best.pt"), "--strategy", "greedy"]) == 0
    out = capsys.readouterr()
    assert "images could not be captioned" in out.err
    for name in ("empty.jpg", "truncated.jpg", "notes.jpg", "bomb.png"):
        assert name in out.err, name
    assert "photo_00.jpg" in out.out and "cmyk.jpg" in out.out and "sixteen.png" in out.out


def test_a_vocabulary_of_only_special_tokens_is_a_clear_error(corpus: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", *common(corpus, tmp_path), "--epochs", "1", "--freq_threshold", "100000",
                 "--output_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "freq_threshold" in err and "Traceback" not in err
