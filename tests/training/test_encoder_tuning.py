"""--tune_encoder_epochs: the encoder's last blocks tuned to the captions' concepts on a cache of the grid below
them; the tuned encoder travels with the model, so evaluation, the API and bundles see the features training saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.api import Captioner
from captioner.cli.command import main
from captioner.features.encoders import create_encoder
from captioner.features.store import FeatureStore
from captioner.models.checkpoint import load_checkpoint
from captioner.models.loading import load_model
from captioner.training import tuned_features

TINY = ["--dataset_type", "shapes", "--max_images", "120", "--encoder", "efficientnet_lite0_random", "--image_size",
        "64", "--batch_size", "16", "--hidden_size", "16", "--embed_size", "16", "--attention_dim", "16",
        "--learning_rate", "3e-3"]


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tuned")
    assert main(["train", *TINY, "--data_dir", str(root / "shapes"), "--cache_dir", str(root / "cache"),
                 "--output_dir", str(root / "runs"), "--tune_encoder_epochs", "2", "--tune_encoder_blocks", "2",
                 "--epochs", "2", "--augment_flip"]) == 0
    return next((root / "runs").iterdir())


def test_the_tuned_blocks_are_kept_and_the_rest_is_the_registry_encoder(tuned_run: Path) -> None:
    checkpoint = load_checkpoint(tuned_run / "best.pt")
    tuned = checkpoint["tuned_encoder"]
    base = create_encoder("efficientnet_lite0_random")
    _, top = base.split(2)
    assert tuned["blocks"] == 2 and tuned["base_sha256"] == base.weights_sha256
    assert set(tuned["state"]) == set(top.state_dict())
    assert any(not torch.equal(tuned["state"][k], v) for k, v in top.state_dict().items())  # they learned
    assert len(tuned["history"]) == 2 and {"train_loss", "dev_loss"} <= set(tuned["history"][0])
    assert checkpoint["encoder_settings"]["weights_sha256"] == tuned["weights_sha256"] != base.weights_sha256
    model = load_model(tuned_run / "best.pt", "cpu", with_encoder=True)
    assert model.encoder.tuned_blocks == 2 and model.encoder.state_sha256() == tuned["weights_sha256"]


def test_the_cache_below_the_tuned_blocks_and_the_tuned_one(tuned_run: Path) -> None:
    cache = tuned_run.parents[1] / "cache"
    below = FeatureStore.open(cache)
    tuned = FeatureStore.open(Path(load_checkpoint(tuned_run / "best.pt")["tuned_encoder"]["cache_dir"]))
    assert below.settings["layer"] == "below 2" and tuned.settings["layer"] == ""
    assert below.images == tuned.images and tuned.grid_flip is not None
    assert tuned.grid_shape[2] == 1280 and below.grid_shape[2] != 1280
    rows = np.arange(4)
    torch.testing.assert_close(tuned.features(rows, False).float(), tuned.features(rows, True).float().mean(1),
                               atol=2e-3, rtol=2e-3)


def test_the_api_and_a_bundle_see_what_evaluation_sees(tuned_run: Path, tmp_path: Path) -> None:
    """The API runs the tuned encoder on the images, evaluation reads the tuned cache: the same features
    (the grid below the tuned blocks rounded to float16 in both), so the same captions."""
    assert main(["evaluate", "--model_path", str(tuned_run / "best.pt"), "--strategy", "greedy", "--split", "test",
                 "--max_images", "8", "--output_dir", str(tmp_path / "eval")]) == 0
    evaluated = {c["image_id"]: c["caption"] for c in json.loads((tmp_path / "eval" / "captions.json").read_text())}
    paths = json.loads((tmp_path / "eval" / "images.json").read_text())
    captioner = Captioner.load(tuned_run / "best.pt", "cpu")
    images = [paths[name] for name in evaluated]
    cached = FeatureStore.open(Path(load_checkpoint(tuned_run / "best.pt")["tuned_encoder"]["cache_dir"]))
    derived = cached.images[:6]  # made from the cache below the tuned blocks, not from the images
    live = captioner.features([Image.open(path).convert("RGB") for path in derived])
    torch.testing.assert_close(live.float(), cached.features([cached.row(p) for p in derived], True).float(),
                               atol=1e-2, rtol=1e-2)
    results = captioner.caption(images, strategy="greedy")
    assert {Path(r.image).name: r.text for r in results} == evaluated
    assert main(["export", "--model_path", str(tuned_run / "best.pt"), "--output", str(tmp_path / "bundle")]) == 0
    assert json.loads((tmp_path / "bundle" / "config.json").read_text())["encoder"]["tuned_blocks"] == 2
    bundled = Captioner.load(tmp_path / "bundle", "cpu").caption(images, strategy="greedy")
    assert [r.text for r in bundled] == [r.text for r in results]
    assert main(["evaluate", "--model_path", str(tmp_path / "bundle"), "--strategy", "greedy", "--split", "test",
                 "--max_images", "8", "--output_dir", str(tmp_path / "eval_bundle")]) == 0
    assert json.loads((tmp_path / "eval_bundle" / "captions.json").read_text()) == json.loads(
        (tmp_path / "eval" / "captions.json").read_text())


def test_the_onnx_encoder_rounds_below_the_tuned_blocks_as_pytorch_does(tuned_run: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert main(["export", "--model_path", str(tuned_run / "best.pt"), "--output", str(tmp_path / "b"), "--onnx"]) == 0
    encoder = load_model(tuned_run / "best.pt", "cpu", with_encoder=True).encoder
    pixels = torch.randn(2, 3, 64, 64)
    session = onnxruntime.InferenceSession(str(tmp_path / "b" / "encoder.onnx"))
    (grid,) = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    with torch.no_grad():
        expected = encoder(pixels).flatten(2).transpose(1, 2)
    torch.testing.assert_close(torch.from_numpy(grid), expected, atol=1e-3, rtol=1e-2)  # float16 steps apart at most


def test_an_untuned_checkpoint_is_not_tuned_under_its_decoder(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--model_path", str(tiny_checkpoint), "--epochs", "1", "--tune_encoder_epochs", "1",
                 "--encoder", "efficientnet_lite0_random", "--output_dir", str(tmp_path / "runs")]) == 2
    assert "untuned encoder" in capsys.readouterr().err


def test_going_on_from_a_tuned_checkpoint_reads_its_cache_without_tuning_again(
        tuned_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def tuning_again(*args, **kwargs):
        raise AssertionError("tuned again")

    monkeypatch.setattr(tuned_features, "tune_encoder", tuning_again)
    caches = sorted((tuned_run.parents[1]).iterdir())
    assert main(["train", "--resume", str(tuned_run / "model_epoch_1.pt"), "--output_dir",
                 str(tuned_run.parent)]) == 0
    assert sorted((tuned_run.parents[1]).iterdir()) == caches  # no cache built
    resumed = max(tuned_run.parent.iterdir(), key=lambda folder: folder.stat().st_mtime)
    assert "Epoch 2/2" in (resumed / "train.log").read_text()
    original, again = load_checkpoint(tuned_run / "best.pt"), load_checkpoint(resumed / "best.pt")
    assert again["tuned_encoder"]["weights_sha256"] == original["tuned_encoder"]["weights_sha256"]
    for key, value in original["model"].items():
        torch.testing.assert_close(again["model"][key], value)  # the run ends where an uninterrupted one did


def test_a_tuning_option_changed_when_going_on_from_a_tuned_checkpoint_is_refused(tuned_run: Path, tmp_path: Path,
                                                                                   capsys) -> None:
    """The decoder learned on the tuned encoder's features: the run keeps them, so --tune_encoder_blocks 3
    could not apply, and saying nothing would leave the user believing it did."""
    assert main(["train", "--model_path", str(tuned_run / "best.pt"), "--epochs", "1", "--tune_encoder_blocks", "3",
                 "--output_dir", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "--tune_encoder_blocks 3 (the checkpoint's: 2)" in error and "new run" in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, complaint", [
    (["--encoder", "resnet34_random"], "EfficientNet-Lite"),
    (["--num_concepts", "0"], "concepts"),
    (["--fine_tune_encoder"], "choose one"),
])
def test_settings_that_cannot_be_tuned_are_refused_before_any_work(flags, complaint, tmp_path: Path, capsys) -> None:
    assert main(["train", *TINY, "--data_dir", str(tmp_path / "shapes"), "--tune_encoder_epochs", "1", *flags,
                 "--output_dir", str(tmp_path / "runs")]) == 2
    assert complaint in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_second_run_with_the_same_tuning_reuses_the_tuned_blocks(
        tuned_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another decoder on the same tuning (the preset's GRU and LSTM rows) skips the tuning; a changed setting
    tunes again."""
    root = tuned_run.parents[1]
    assert len(list((root / "cache_tunings").glob("*.pt"))) == 1

    def tuning_again(*args, **kwargs):
        raise AssertionError("tuned again")

    monkeypatch.setattr(tuned_features, "tune_encoder", tuning_again)
    assert main(["train", *TINY, "--data_dir", str(root / "shapes"), "--cache_dir", str(root / "cache"),
                 "--output_dir", str(tmp_path / "runs"), "--tune_encoder_epochs", "2", "--tune_encoder_blocks", "2",
                 "--epochs", "1", "--augment_flip", "--decoder", "gru"]) == 0
    again = load_checkpoint(next((tmp_path / "runs").iterdir()) / "best.pt")["tuned_encoder"]
    original = load_checkpoint(tuned_run / "best.pt")["tuned_encoder"]
    assert again["weights_sha256"] == original["weights_sha256"] and again["history"] == original["history"]
    with pytest.raises(AssertionError, match="tuned again"):
        main(["train", *TINY, "--data_dir", str(root / "shapes"), "--cache_dir", str(root / "cache"),
              "--output_dir", str(tmp_path / "runs2"), "--tune_encoder_epochs", "2", "--tune_encoder_blocks", "2",
              "--tune_encoder_lr", "1e-3", "--epochs", "1", "--augment_flip"])
