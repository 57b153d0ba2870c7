"""--scst_encoder_lr, --xe_encoder_lr: the tuned encoder's last blocks go on learning in the self-critical epochs,
or in the cross-entropy ones too; every checkpoint keeps them as its epoch left them, with the cache of their output, so evaluation and resumed runs read what
the decoder was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.cli.command import main
from captioner.errors import CaptionerError
from captioner.features.derive import derive_features
from captioner.features.store import FeatureStore
from captioner.features.top_blocks import TopBlocksFeatures
from captioner.models.checkpoint import load_checkpoint
from captioner.models.loading import load_model, tuned_encoder
from captioner.training.encoder_tuning import TunedEncoder
from captioner.training.learning_blocks import LearningBlocks

TINY = ["--dataset_type", "shapes", "--max_images", "120", "--encoder", "efficientnet_lite0_random", "--image_size",
        "64", "--batch_size", "16", "--hidden_size", "16", "--embed_size", "16", "--attention_dim", "16",
        "--learning_rate", "3e-3", "--tune_encoder_epochs", "1", "--tune_encoder_blocks", "2", "--augment_flip"]
LEARNING = ["--epochs", "1", "--scst_epochs", "2", "--scst_lr", "1e-3", "--scst_encoder_lr", "1e-3",
            "--scst_xe_weight", "0.05", "--keep_checkpoints", "5", "--best_metric", "val_loss",
            "--early_stopping_patience", "5"]


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("learning")
    assert main(["train", *TINY, *LEARNING, "--data_dir", str(root / "shapes"), "--cache_dir", str(root / "cache"),
                 "--output_dir", str(root / "runs")]) == 0
    return next((root / "runs").iterdir())


def test_the_blocks_learn_in_the_self_critical_epochs_and_each_checkpoint_keeps_its_own(learning_run: Path) -> None:
    epochs = [load_checkpoint(learning_run / f"model_epoch_{n}.pt") for n in (1, 2, 3)]
    tuned = [checkpoint["tuned_encoder"] for checkpoint in epochs]
    assert len({t["weights_sha256"] for t in tuned}) == 3  # cross-entropy: as tuned; then changed by each epoch
    assert any(not torch.equal(tuned[2]["state"][k], v) for k, v in tuned[1]["state"].items())
    for checkpoint, kept in zip(epochs, tuned):
        assert checkpoint["encoder_settings"]["weights_sha256"] == kept["weights_sha256"]
        cache = FeatureStore.open(Path(kept["cache_dir"]))
        assert cache.settings["weights_sha256"] == kept["weights_sha256"] and cache.grid_flip is not None
        encoder = tuned_encoder("efficientnet_lite0_random", None, kept)
        assert encoder.state_sha256() == kept["weights_sha256"]  # the weights kept are the weights named
    assert "blocks learn too" in (learning_run / "train.log").read_text()


def test_a_checkpoint_is_evaluated_on_its_own_blocks(learning_run: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(learning_run / "model_epoch_3.pt")
    model = load_model(learning_run / "model_epoch_3.pt", "cpu", with_encoder=True)
    assert model.encoder.state_sha256() == checkpoint["tuned_encoder"]["weights_sha256"]
    assert main(["evaluate", "--model_path", str(learning_run / "model_epoch_3.pt"), "--strategy", "greedy",
                 "--split", "test", "--max_images", "6", "--output_dir", str(tmp_path / "eval")]) == 0
    assert len(json.loads((tmp_path / "eval" / "captions.json").read_text())) == 6


# from the last cross-entropy epoch (a run of its own in `make test-slow`), and in the self-critical ones
@pytest.mark.parametrize("epoch", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_resuming_ends_where_the_run_did(learning_run: Path, epoch: int) -> None:
    assert main(["train", "--resume", str(learning_run / f"model_epoch_{epoch}.pt"), "--output_dir",
                 str(learning_run.parent)]) == 0
    resumed = max(learning_run.parent.iterdir(), key=lambda folder: folder.stat().st_mtime)
    original, again = load_checkpoint(learning_run / "model_epoch_3.pt"), load_checkpoint(resumed / "model_epoch_3.pt")
    assert again["tuned_encoder"]["weights_sha256"] == original["tuned_encoder"]["weights_sha256"]
    for key, value in original["model"].items():
        torch.testing.assert_close(again["model"][key], value)


def test_resuming_learned_blocks_without_learning_is_refused(learning_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", str(learning_run / "model_epoch_2.pt"), "--scst_encoder_lr", "0",
                 "--output_dir", str(tmp_path / "runs")]) == 2
    assert "--scst_encoder_lr" in capsys.readouterr().err


def test_resuming_learned_blocks_with_other_learning_blocks_is_refused(learning_run: Path, tmp_path: Path,
                                                                      capsys) -> None:
    """The optimizer's state holds the moments of the blocks that learned: another set would not fit it."""
    assert main(["train", "--resume", str(learning_run / "model_epoch_2.pt"), "--learning_blocks", "1",
                 "--output_dir", str(tmp_path / "runs")]) == 2
    assert "--learning_blocks 2" in capsys.readouterr().err


def test_the_blocks_over_the_cached_grid_give_the_cached_features_and_take_gradients(learning_run: Path) -> None:
    kept = load_checkpoint(learning_run / "model_epoch_1.pt")["tuned_encoder"]
    top = tuned_encoder("efficientnet_lite0_random", None, kept).split(2)[1]
    below = FeatureStore.open(learning_run.parents[1] / "cache")
    source = TopBlocksFeatures(below, top, torch.device("cpu"))  # in bfloat16 where derive_features is
    cached = FeatureStore.open(Path(kept["cache_dir"]))
    rows, flip = np.arange(5), np.array([False, True, False, True, True])
    with torch.no_grad():
        live = source.features(rows, True, flip=flip)
    torch.testing.assert_close(live.half().float(), cached.features(rows, True, flip=flip).float())
    source.features(rows, False, train=True).sum().backward()
    assert all(p.grad is not None for p in source.parameters() if p.requires_grad)
    assert source.grid_shape == cached.grid_shape
    derived = derive_features(below, top, "another", torch.device("cpu"), folder=learning_run.parent / "derived",
                              log=lambda line: None)
    assert derived.grid_shape == cached.grid_shape


def test_the_blocks_run_once_per_image_of_a_batch_of_captions(learning_run: Path) -> None:
    kept = load_checkpoint(learning_run / "model_epoch_1.pt")["tuned_encoder"]
    blocks = LearningBlocks(tuned_encoder("efficientnet_lite0_random", None, kept), TunedEncoder.from_dict(kept),
                            FeatureStore.open(learning_run.parents[1] / "cache"), torch.device("cpu"))
    seen: list[int] = []
    blocks.top.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    rows, flip = np.array([3, 3, 5, 3, 7]), np.array([True, False, False, False, False])
    for use_grid in (True, False):
        seen.clear()
        features = blocks.caption_features(rows, use_grid, flip=flip)
        assert seen == [3]  # images 3, 5 and 7; image 3 as its first caption's flip says
        with torch.no_grad():
            each = blocks.features(np.array([3, 5, 7]), use_grid, flip=np.array([True, False, False]))
        torch.testing.assert_close(features.detach(), each[[0, 0, 1, 0, 2]])
    features.float().sum().backward()
    assert all(p.grad is not None for p in blocks.parameters() if p.requires_grad)


def test_with_fewer_blocks_learning_the_others_are_cached_once_and_give_the_same_features(learning_run: Path) -> None:
    kept = load_checkpoint(learning_run / "model_epoch_1.pt")["tuned_encoder"]
    encoder = tuned_encoder("efficientnet_lite0_random", None, kept)
    below = FeatureStore.open(learning_run.parents[1] / "cache")
    blocks = LearningBlocks(encoder, TunedEncoder.from_dict(kept), below, torch.device("cpu"), learning=1,
                            log=lambda line: None)
    assert blocks.below.folder != below.folder and blocks.below.folder.name.startswith("cache_frozen1_")
    last = {id(p) for p in encoder.split(1)[1].parameters()}
    assert {id(p) for p in blocks.parameters()} == last  # the first tuned block does not learn
    rows, flip = np.arange(5), np.array([False, True, False, True, True])
    with torch.no_grad():
        features = blocks.features(rows, True, flip=flip, train=False)
    cached = FeatureStore.open(Path(kept["cache_dir"])).features(rows, True, flip=flip).float()
    torch.testing.assert_close(features.float(), cached, atol=0.05, rtol=0.05)  # via a float16 cache in between
    again = LearningBlocks(encoder, TunedEncoder.from_dict(kept), below, torch.device("cpu"), learning=1,
                           log=lambda line: pytest.fail(f"the cache was built again: {line}"))
    assert again.below.folder == blocks.below.folder
    with pytest.raises(CaptionerError, match="--learning_blocks 3"):
        LearningBlocks(encoder, TunedEncoder.from_dict(kept), below, torch.device("cpu"), learning=3)


@pytest.mark.slow  # a run of its own
def test_with_fewer_blocks_learning_only_those_change(learning_run: Path) -> None:
    root = learning_run.parents[1]
    assert main(["train", *TINY, *XE_LEARNING, "--learning_blocks", "1", "--data_dir", str(root / "shapes"),
                 "--cache_dir", str(root / "cache"), "--output_dir", str(root / "one_learning")]) == 0
    run = next((root / "one_learning").iterdir())
    first, second = (load_checkpoint(run / f"model_epoch_{n}.pt")["tuned_encoder"] for n in (1, 2))
    changed = {key for key, value in first["state"].items() if not torch.equal(second["state"][key], value)}
    assert changed and all(not key.startswith("0.") for key in changed)  # block 0 of the two stays as tuned
    cache = FeatureStore.open(Path(second["cache_dir"]))
    assert cache.settings["weights_sha256"] == second["weights_sha256"]
    assert "the last 1 of the encoder's 2 tuned blocks learn" in (run / "train.log").read_text()


def test_without_a_tuned_encoder_the_option_is_ignored_and_the_run_says_so(tmp_path: Path) -> None:
    """The preset sets it, and `--preset flickr8k_best --tune_encoder_epochs 0` (the recipe before the tuned
    encoder) must still run."""
    assert main(["train", *TINY[:-5], "--data_dir", str(tmp_path / "shapes"), "--epochs", "1", "--scst_epochs", "1",
                 "--scst_encoder_lr", "1e-4", "--output_dir", str(tmp_path / "runs")]) == 0
    log = (next((tmp_path / "runs").iterdir()) / "train.log").read_text()
    assert "--scst_encoder_lr is ignored" in log and "no tuned encoder" in log


@pytest.mark.slow  # a second run
def test_the_cross_entropy_epochs_are_those_of_a_run_without_learning_blocks(learning_run: Path) -> None:
    """The flag changes the self-critical epochs only: building the blocks draws no number from the run's
    random stream, so the preset's cross-entropy epochs stay bit for bit what they were."""
    root = learning_run.parents[1]
    at = LEARNING.index("--scst_encoder_lr")
    plain = LEARNING[:at] + LEARNING[at + 2:]
    assert main(["train", *TINY, *plain, "--data_dir", str(root / "shapes"), "--cache_dir", str(root / "cache"),
                 "--output_dir", str(root / "plain")]) == 0
    without = load_checkpoint(next((root / "plain").iterdir()) / "model_epoch_1.pt")["model"]
    for key, value in load_checkpoint(learning_run / "model_epoch_1.pt")["model"].items():
        assert torch.equal(without[key], value)


XE_LEARNING = ["--epochs", "2", "--xe_encoder_lr", "1e-3", "--xe_encoder_from", "2", "--keep_checkpoints", "5",
               "--best_metric", "val_loss", "--early_stopping_patience", "5"]


@pytest.fixture(scope="module")
def xe_learning_run(learning_run: Path) -> Path:
    root = learning_run.parents[1]  # the same data and caches: the tuning is found, not repeated
    assert main(["train", *TINY, *XE_LEARNING, "--data_dir", str(root / "shapes"), "--cache_dir", str(root / "cache"),
                 "--output_dir", str(root / "xe")]) == 0
    return next((root / "xe").iterdir())


def test_the_blocks_learn_in_the_cross_entropy_epochs_from_the_one_asked(learning_run: Path,
                                                                         xe_learning_run: Path) -> None:
    first, second = (load_checkpoint(xe_learning_run / f"model_epoch_{n}.pt") for n in (1, 2))
    as_tuned = load_checkpoint(learning_run / "model_epoch_1.pt")["tuned_encoder"]["weights_sha256"]
    assert first["tuned_encoder"]["weights_sha256"] == as_tuned  # epoch 1: the blocks as the tuning left them
    assert first["tuned_encoder"]["weights_sha256"] != second["tuned_encoder"]["weights_sha256"]
    cache = FeatureStore.open(Path(second["tuned_encoder"]["cache_dir"]))
    assert cache.settings["weights_sha256"] == second["tuned_encoder"]["weights_sha256"]
    assert "learn in cross-entropy epochs 2-2" in (xe_learning_run / "train.log").read_text()


@pytest.fixture(scope="module")
def not_best_run(learning_run: Path) -> Path:
    """The blocks learn in epoch 2, which is not the best (this tiny model's dev CIDEr is 0 in both epochs, and
    the first holds the best), then one self-critical epoch."""
    root = learning_run.parents[1]
    later_not_best = ["--epochs", "2", "--xe_encoder_lr", "1e-3", "--xe_encoder_from", "2", "--scst_epochs", "1",
                      "--scst_encoder_lr", "0", "--keep_checkpoints", "5", "--best_metric", "CIDEr"]
    assert main(["train", *TINY, *later_not_best, "--data_dir", str(root / "shapes"), "--cache_dir",
                 str(root / "cache"), "--output_dir", str(root / "not_best")]) == 0
    run = next((root / "not_best").iterdir())
    assert load_checkpoint(run / "model_epoch_2.pt")["best_epoch"] == 1, "the premise: epoch 2 is not the best"
    return run


def test_self_critical_training_starts_from_the_blocks_of_the_best_cross_entropy_epoch(not_best_run: Path) -> None:
    """It goes on from epoch 1's decoder, and from the blocks that decoder learned on, not from epoch 2's."""
    first, second, self_critical = (load_checkpoint(not_best_run / f"model_epoch_{n}.pt")["tuned_encoder"]
                                    for n in (1, 2, 3))
    assert first["weights_sha256"] != second["weights_sha256"]
    assert self_critical["weights_sha256"] == first["weights_sha256"]
    assert FeatureStore.open(Path(self_critical["cache_dir"])).settings["weights_sha256"] == first["weights_sha256"]
    assert "blocks back as the best cross-entropy epoch 1 left them" in (not_best_run / "train.log").read_text()


def test_with_scst_from_last_self_critical_training_goes_on_from_the_last_epochs_blocks(not_best_run: Path) -> None:
    """Resumed at the end of the cross-entropy epochs with --scst_from last: the self-critical epoch reads epoch 2's
    blocks (they do not learn in it here), although epoch 1 is the best."""
    assert main(["train", "--resume", str(not_best_run / "model_epoch_2.pt"), "--scst_from", "last",
                 "--output_dir", str(not_best_run.parent)]) == 0
    resumed = max(not_best_run.parent.iterdir(), key=lambda folder: folder.stat().st_mtime)
    second = load_checkpoint(not_best_run / "model_epoch_2.pt")["tuned_encoder"]["weights_sha256"]
    assert load_checkpoint(resumed / "model_epoch_3.pt")["tuned_encoder"]["weights_sha256"] == second
    log = (resumed / "train.log").read_text()
    assert "from the last cross-entropy epoch 2" in log and "blocks back as" not in log


def resumed_ends_where_the_run_did(run: Path, epoch: int) -> Path:
    """Resume `run` from `epoch`; its last epoch (epoch + 1) has the same blocks and decoder. The resumed run."""
    assert main(["train", "--resume", str(run / f"model_epoch_{epoch}.pt"), "--output_dir", str(run.parent)]) == 0
    resumed = max(run.parent.iterdir(), key=lambda folder: folder.stat().st_mtime)
    original, again = (load_checkpoint(folder / f"model_epoch_{epoch + 1}.pt") for folder in (run, resumed))
    assert again["tuned_encoder"]["weights_sha256"] == original["tuned_encoder"]["weights_sha256"]
    for key, value in original["model"].items():
        torch.testing.assert_close(again["model"][key], value)
    return resumed


@pytest.mark.slow  # a run of its own
def test_resumed_after_the_cross_entropy_epochs_the_blocks_are_the_best_epochs_too(not_best_run: Path) -> None:
    """Found in epoch 1's checkpoint; the self-critical epoch ends where the uninterrupted run's did."""
    resumed = resumed_ends_where_the_run_did(not_best_run, 2)
    assert "learn in cross-entropy epochs" not in (resumed / "train.log").read_text()  # none left to run


@pytest.mark.slow  # a run of its own
def test_resuming_in_the_cross_entropy_epochs_ends_where_the_run_did(xe_learning_run: Path) -> None:
    resumed_ends_where_the_run_did(xe_learning_run, 1)


def test_blocks_learning_in_the_cross_entropy_epochs_refuse_a_per_batch_schedule(tmp_path: Path, capsys) -> None:
    assert main(["train", *TINY, "--data_dir", str(tmp_path / "shapes"), "--xe_encoder_lr", "1e-4",
                 "--use_scheduler", "--scheduler_type", "one_cycle", "--output_dir", str(tmp_path / "runs")]) == 2
    assert "one_cycle" in capsys.readouterr().err
