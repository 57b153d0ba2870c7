"""Training on a small synthetic set with the tiny test encoder: seconds per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captioner.cli.command import main
from captioner.errors import CaptionerError
from captioner.models.checkpoint import load_checkpoint, save_checkpoint
from captioner.training.config import ignored_options
from captioner.training.schedulers import SCHEDULER_TYPES, ScheduleSettings
from captioner.training.setup import build_trainer
from tests.training.helpers import history, small


def test_run_directory_holds_every_file(shapes: Path, tmp_path: Path) -> None:
    run = build_trainer(small(shapes, tmp_path), ["captioner", "train"]).run()
    names = {p.name for p in run.iterdir()}
    assert {"run_config.json", "run_summary.txt", "loss_curve.json", "metrics_history.json", "training_losses.png",
            "learning_rate.png", "train.log", "vocab.json", "best.pt", "model_epoch_3.pt", "model_epoch_2.pt"} <= names
    assert "model_epoch_1.pt" not in names  # --keep_checkpoints 2
    assert run.name.startswith("shapes_attention_ep3_bs16_lr3e-3_const_")
    entries = history(run)
    assert [e["epoch"] for e in entries] == [1, 2, 3]
    assert entries[-1]["train_loss"] < entries[0]["train_loss"]
    assert {"BLEU-1", "BLEU-4", "val_loss", "lr", "peak_memory_mb", "captions_per_s"} <= set(entries[0])
    assert "Epoch 3/3: train" in (run / "train.log").read_text()
    checkpoint = load_checkpoint(run / "best.pt")  # weights_only=True inside
    assert checkpoint["model_config"]["decoder"] == "attention" and checkpoint["vocab"]["itos"][0] == "<pad>"


@pytest.mark.parametrize("decoder", ["lstm", "gru"])
def test_show_and_tell_decoders_train(shapes: Path, tmp_path: Path, decoder: str) -> None:
    # attention-only options, as the flickr8k_best preset sets them: the run says it ignores them
    run = build_trainer(small(shapes, tmp_path, decoder=decoder, epochs=2, deep_output=True), ["captioner"]).run()
    assert len(history(run)) == 2
    assert f"the {decoder} decoder does not read --attention_dim, --deep_output: they are ignored" in (
        run / "train.log").read_text()
    assert ignored_options(small(shapes, tmp_path, deep_output=True, num_layers=2)) == ["--num_layers"]
    assert "--alpha_c" in ignored_options(small(shapes, tmp_path, decoder=decoder, alpha_c=0.0))
    assert "--attention_viz_samples" in ignored_options(small(shapes, tmp_path, decoder=decoder,
                                                              attention_viz_samples=5))


def test_same_seed_same_losses(shapes: Path, tmp_path: Path) -> None:
    first = history(build_trainer(small(shapes, tmp_path, epochs=2), ["captioner"]).run())
    second = history(build_trainer(small(shapes, tmp_path, epochs=2), ["captioner"]).run())
    assert [e["train_loss"] for e in first] == [e["train_loss"] for e in second]
    assert [e["val_loss"] for e in first] == [e["val_loss"] for e in second]


def test_every_scheduler_runs(shapes: Path, tmp_path: Path) -> None:
    for name in SCHEDULER_TYPES:
        schedule = ScheduleSettings(scheduler_type=name, keep_epochs=1, scheduler_gamma=0.5)
        run = build_trainer(small(shapes, tmp_path, epochs=2, use_scheduler=True, max_images=30, schedule=schedule),
                      ["captioner"]).run()
        rates = [e["lr"] for e in history(run)]
        assert len(rates) == 2, name
        if name in ("keep_then_decay", "exponential"):
            assert rates[1] < rates[0], name


def test_early_stopping_restores_the_best(shapes: Path, tmp_path: Path) -> None:
    run = build_trainer(small(shapes, tmp_path, epochs=30, learning_rate=0.3, early_stopping_patience=1), ["captioner"]).run()
    entries = history(run)
    assert len(entries) < 30
    assert "early stopping" in (run / "train.log").read_text()


def test_checkpoint_write_failure_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"epoch": 1})
    import captioner.io as io_module

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", disk_full)
    with pytest.raises(CaptionerError, match="No space left on device"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_cli_train_accepts_the_classic_flags(shapes: Path, tmp_path: Path) -> None:
    code = main(["train", "--dataset_type", "shapes", "--data_dir", str(shapes), "--encoder", "tiny_random",
                 "--cache_dir", str(tmp_path / "cache"), "--decoder", "lstm", "--epochs", "1", "--batch-size", "16",
                 "--learning_rate", "0.01", "--use_scheduler", "--scheduler_type", "cosine", "--scheduler_t_max", "1",
                 "--min_lr", "1e-6", "--embed_size", "8", "--hidden_size", "8", "--num_layers", "1",
                 "--drop_prob", "0.1", "--num_workers", "0", "--output_dir", str(tmp_path / "runs"),
                 "--freq_threshold", "1"])
    assert code == 0
    (run,) = (tmp_path / "runs").iterdir()
    config = json.loads((run / "run_config.json").read_text())
    assert config["batch_size"] == 16 and config["schedule"]["scheduler_type"] == "cosine"
    assert main(["train", "--dataset_type", "shapes", "--data_dir", str(shapes), "--encoder", "tiny_random",
                 "--cache_dir", str(tmp_path / "cache"), "--decoder", "lstm", "--embed_size", "8", "--hidden_size",
                 "8", "--epochs", "1", "--num_workers", "0", "--output_dir", str(tmp_path / "runs"),
                 "--freq_threshold", "1", "--model_path", str(run / "best.pt")]) == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2


@pytest.mark.parametrize("options", [{"augment": True}, {"fine_tune_encoder": True, "augment": True}])
def test_training_on_images_instead_of_the_cache(shapes: Path, tmp_path: Path, options: dict) -> None:
    run = build_trainer(small(shapes, tmp_path, epochs=2, max_images=30, **options), ["captioner"]).run()
    entries = history(run)
    assert len(entries) == 2 and entries[1]["train_loss"] < entries[0]["train_loss"]
    assert not (tmp_path / "cache").exists()  # no feature cache written
    checkpoint = load_checkpoint(run / "best.pt")
    encoder_state = checkpoint["encoder_state"]
    if options.get("fine_tune_encoder"):
        from captioner.features.encoders import create_encoder

        original = create_encoder("tiny_random").state_dict()
        assert any(not torch.equal(encoder_state[name], original[name]) for name in original)  # the encoder learned
        with pytest.raises(CaptionerError, match="fine-tuned encoder; resume it with --fine_tune_encoder"):
            build_trainer(small(shapes, tmp_path, epochs=3, max_images=30, resume=str(run / "best.pt")), ["captioner"])
    else:
        assert encoder_state is None


def test_best_checkpoint_by_a_dev_metric(shapes: Path, tmp_path: Path) -> None:
    run = build_trainer(small(shapes, tmp_path, epochs=4, best_metric="CIDEr"), ["captioner"]).run()
    entries = history(run)
    best = max(entries, key=lambda e: e["CIDEr"])
    assert load_checkpoint(run / "best.pt")["epoch"] == best["epoch"]
    flagged = [e["CIDEr"] for e in entries if e["best"]]
    assert flagged == sorted(flagged) and flagged[-1] == best["CIDEr"]


def test_attention_pictures_during_training(shapes: Path, tmp_path: Path) -> None:
    run = build_trainer(small(shapes, tmp_path, epochs=1, save_attention_viz=True, attention_viz_samples=2,
                        advanced_attention_viz=True), ["captioner"]).run()
    names = {p.name for p in run.iterdir()}
    assert {"attention_viz_sample_1.png", "attention_viz_sample_2.png", "advanced_attention_viz_sample_1.png",
            "advanced_attention_viz_sample_2.png"} <= names
    with pytest.raises(CaptionerError, match="needs --decoder attention"):
        build_trainer(small(shapes, tmp_path, decoder="gru", save_attention_viz=True), ["captioner"])


def test_the_transformer_trains_with_self_critical_epochs_and_draws_its_attention(shapes: Path, tmp_path: Path) -> None:
    run = build_trainer(small(shapes, tmp_path, decoder="transformer", num_heads=4, epochs=2, scst_epochs=1,
                              scst_samples=3, max_images=40, save_attention_viz=True, attention_viz_samples=1,
                              use_scheduler=True, schedule=ScheduleSettings(scheduler_type="one_cycle")),
                        ["captioner"]).run()
    entries = history(run)
    assert [e["objective"] for e in entries] == ["cross-entropy"] * 2 + ["self-critical"]
    assert entries[1]["train_loss"] < entries[0]["train_loss"]
    assert "attention_viz_sample_1.png" in {p.name for p in run.iterdir()}
    saved = load_checkpoint(run / "best.pt")["model_config"]
    assert (saved["decoder"], saved["num_layers"], saved["num_heads"], saved["drop_prob"]) == ("transformer", 3, 4, 0.1)
    assert "--alpha_c" not in (run / "train.log").read_text()  # the default, not set: nothing said
    with pytest.raises(CaptionerError, match="multiple of them"):
        build_trainer(small(shapes, tmp_path, decoder="transformer", num_heads=5), ["captioner"])


def test_self_critical_epochs_follow_the_cross_entropy_ones(shapes: Path, tmp_path: Path) -> None:
    run = build_trainer(small(shapes, tmp_path, epochs=2, scst_epochs=2, scst_samples=3, best_metric="CIDEr",
                        max_images=40), ["captioner"]).run()
    entries = history(run)
    assert [e["objective"] for e in entries] == ["cross-entropy"] * 2 + ["self-critical"] * 2
    assert all("train_CIDEr" in e for e in entries[2:]) and entries[2]["lr"] == pytest.approx(2e-5)
    assert "self-critical training" in (run / "train.log").read_text()
    assert run.name.startswith("shapes_attention_ep2_bs16_lr3e-3_const_scst2_")
    summary = (run / "run_summary.txt").read_text().splitlines()
    epoch_lines = [line for line in summary if line.startswith("epoch ") and "captions/s" in line]
    assert [line.endswith("(self-critical)") for line in epoch_lines] == [False, False, True, True]
    assert all(" CIDEr " in line for line in epoch_lines)
    assert any(line.startswith("best epoch:") and "dev CIDEr" in line for line in summary)


@pytest.mark.parametrize("scst_from", ["best", "last"])
def test_self_critical_epochs_alone_start_from_the_weights_the_run_began_with(shapes: Path, tmp_path: Path,
                                                                             scst_from: str) -> None:
    run = build_trainer(small(shapes, tmp_path, epochs=0, scst_epochs=1, scst_samples=3, best_metric="CIDEr",
                              max_images=40, scst_from=scst_from), ["captioner"]).run()
    assert [e["objective"] for e in history(run)] == ["self-critical"]
    assert "from the weights it started from" in (run / "train.log").read_text()


def test_self_critical_with_the_references_cross_entropy_mixed_in(shapes: Path, tmp_path: Path) -> None:
    options = dict(epochs=1, scst_epochs=1, scst_samples=3, best_metric="CIDEr", max_images=40, seed=5)
    plain = history(build_trainer(small(shapes, tmp_path, **options), ["captioner"]).run())
    mixed = history(build_trainer(small(shapes, tmp_path, **options, scst_xe_weight=0.5), ["captioner"]).run())
    assert [e["objective"] for e in mixed] == ["cross-entropy", "self-critical"]
    assert mixed[0]["train_loss"] == plain[0]["train_loss"]  # the cross-entropy epochs are untouched
    assert mixed[1]["train_loss"] != plain[1]["train_loss"]

    trainer = build_trainer(small(shapes, tmp_path, **options, scst_xe_weight=0.5), ["captioner"])
    trainer.model.eval()
    rows = sorted(trainer.self_critical.rows)[:4]
    features = trainer._features_of_rows(rows)
    with torch.no_grad():
        one_by_one = [float(trainer.references(trainer.model, features[i:i + 1], rows[i:i + 1])) for i in range(4)]
        together = float(trainer.references(trainer.model, features, rows))
    assert all(loss > 0 for loss in one_by_one)
    # per word over all the images' captions: between the images' own losses, each caption with its own image
    assert min(one_by_one) <= together <= max(one_by_one)


def test_mixed_cross_entropy_on_some_references_per_image(shapes: Path, tmp_path: Path) -> None:
    """--scst_xe_references K: each image's K references are drawn anew per batch from its own captions."""
    options = dict(epochs=1, scst_epochs=1, scst_samples=3, best_metric="CIDEr", max_images=40, seed=5,
                   scst_xe_weight=0.5)
    trainer = build_trainer(small(shapes, tmp_path, **options, scst_xe_references=1), ["captioner"])
    row = sorted(trainer.self_critical.rows)[0]
    own = trainer.references.examples_of_row[row]
    assert len(own) > 1
    drawn = [trainer.references._some(own) for _ in range(40)]
    assert all(len(choice) == 1 and choice[0] in own for choice in drawn)
    assert len({choice[0] for choice in drawn}) > 1  # not always the same caption
    everything = build_trainer(small(shapes, tmp_path, **options), ["captioner"])
    assert everything.references._some(own) == own
    # the mixed loss really reads one caption per image
    captions_read: list[int] = []
    real_loss = trainer.objective

    def counting_loss(model, features, captions, *rest):
        captions_read.append(len(captions))
        return real_loss(model, features, captions, *rest)

    trainer.references.objective = counting_loss
    rows = sorted(trainer.self_critical.rows)[:3]
    trainer.references(trainer.model, trainer._features_of_rows(rows), rows)
    assert captions_read == [3]
    assert history(trainer.run())[1]["objective"] == "self-critical"
    with pytest.raises(CaptionerError, match="--scst_xe_references 0"):
        build_trainer(small(shapes, tmp_path, **options, scst_xe_references=0), ["captioner"])


def test_the_concept_head_leaves_the_captions_training_as_it_was(shapes: Path, tmp_path: Path) -> None:
    """The head has parameters, a loss, a clipping and random numbers of its own: the decoder trains bit for bit
    as it does without one, so a recipe's results hold with or without tags."""
    options = dict(epochs=2, max_images=30, augment_flip=True)
    with_head = build_trainer(small(shapes, tmp_path / "a", **options, num_concepts=20), ["captioner"]).run()
    without = build_trainer(small(shapes, tmp_path / "b", **options, num_concepts=0), ["captioner"]).run()
    tagged, plain = load_checkpoint(with_head / "best.pt"), load_checkpoint(without / "best.pt")
    assert 0 < len(tagged["concepts"]["concepts"]) <= 20 and plain["concepts"] is None
    assert {k for k in tagged["model"] if k.startswith("concept_head.")} and not any(
        k.startswith("concept_head.") for k in plain["model"])
    for name, value in plain["model"].items():
        assert torch.equal(tagged["model"][name], value), name
    assert [e["train_loss"] for e in history(with_head)] == [e["train_loss"] for e in history(without)]


@pytest.mark.parametrize("decoder, way", [("attention", "project"), ("attention", "attend"), ("lstm", "project"),
                                          ("gru", "attend"), ("transformer", "attend")])
def test_every_decoder_trains_reading_the_concepts(shapes: Path, tmp_path: Path, decoder: str, way: str) -> None:
    run = build_trainer(small(shapes, tmp_path, decoder=decoder, epochs=2, max_images=40, num_concepts=12,
                              use_concepts=True, concept_input=way, concept_top_k=5), ["captioner"]).run()
    entries = history(run)
    assert entries[-1]["train_loss"] < entries[0]["train_loss"]
    checkpoint = load_checkpoint(run / "best.pt")
    assert checkpoint["model_config"]["concept_input"] == way and checkpoint["model_config"]["concept_top_k"] == 5
    from captioner.api import Captioner

    captioner = Captioner.load(run / "best.pt")
    image = min(shapes.rglob("*.png"))
    result = captioner.caption([image], strategy="beam", beam_size=2)[0]
    assert result.error is None and result.text is not None and result.tags


def test_reading_concepts_needs_the_head(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="--num_concepts 0 leaves no head"):
        build_trainer(small(shapes, tmp_path, use_concepts=True, num_concepts=0), ["captioner"])


def test_the_concept_stage_trains_the_head_alone_first(shapes: Path, tmp_path: Path) -> None:
    """--concept_epochs trains the head before the captions start, and draws no random number the captions'
    training would: without --use_concepts the captions train as they do without the stage."""
    options = dict(epochs=1, max_images=40, num_concepts=12, augment_flip=True)
    staged = build_trainer(small(shapes, tmp_path / "a", **options, concept_epochs=3, concept_lr=1e-2), ["captioner"])
    before = {name: value.clone() for name, value in staged.decoder.state_dict().items()}
    staged.train_concept_head()
    losses = [entry["train_loss"] for entry in staged.concept_history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(0 < entry["dev_loss"] < 1 for entry in staged.concept_history)
    after = staged.decoder.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items() if not name.startswith("concept_head."))
    assert not torch.equal(after["concept_head.classify.weight"], before["concept_head.classify.weight"])
    with_stage = build_trainer(small(shapes, tmp_path / "b", **options, concept_epochs=2), ["captioner"]).run()
    without = build_trainer(small(shapes, tmp_path / "c", **options), ["captioner"]).run()
    assert [e["train_loss"] for e in history(with_stage)] == [e["train_loss"] for e in history(without)]
    assert len(load_checkpoint(with_stage / "best.pt")["concept_history"]) == 2
    with pytest.raises(CaptionerError, match="--concept_epochs trains the concept head"):
        build_trainer(small(shapes, tmp_path, concept_epochs=1, num_concepts=0), ["captioner"])
