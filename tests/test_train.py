"""Training on a small synthetic set with the tiny test encoder: seconds per run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import captioner.training.setup as training_setup
import captioner.training.validation as validation_module
from captioner.models.checkpoint import load_checkpoint, save_checkpoint
from captioner.cli.command import main
from captioner.data.shapes import generate_shapes
from captioner.errors import CaptionerError
from captioner.training.schedulers import SCHEDULER_TYPES, ScheduleSettings
from captioner.data.formats import load_dataset
from captioner.data.vocab import clean_caption
from captioner.training.distributed import Processes
from captioner.training.config import TrainConfig, ignored_options, unused_schedule_options
from captioner.training.resume import check_not_finished
from captioner.training.setup import build_trainer
from captioner.training.validation import dev_scores


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", num_images=60, seed=3)


def small(shapes: Path, tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(dataset_type="shapes", data_dir=str(shapes), encoder="tiny_random", cache_dir=str(tmp_path / "cache"),
                    decoder="attention", embed_size=16, hidden_size=16, attention_dim=16, epochs=3, batch_size=16,
                    learning_rate=3e-3, output_dir=str(tmp_path / "runs"), freq_threshold=1, num_workers=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def history(run: Path) -> list[dict]:
    return json.loads((run / "metrics_history.json").read_text())


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


def test_schedule_settings_without_use_scheduler_are_named_as_ignored(shapes: Path, tmp_path: Path) -> None:
    schedule = ScheduleSettings(scheduler_type="step", scheduler_step_size=2)
    assert unused_schedule_options(small(shapes, tmp_path, schedule=schedule)) == ["--scheduler_type",
                                                                                   "--scheduler_step_size"]
    assert unused_schedule_options(small(shapes, tmp_path, schedule=schedule, use_scheduler=True)) == []


def test_same_seed_same_losses(shapes: Path, tmp_path: Path) -> None:
    first = history(build_trainer(small(shapes, tmp_path, epochs=2), ["captioner"]).run())
    second = history(build_trainer(small(shapes, tmp_path, epochs=2), ["captioner"]).run())
    assert [e["train_loss"] for e in first] == [e["train_loss"] for e in second]
    assert [e["val_loss"] for e in first] == [e["val_loss"] for e in second]


def test_resume_gives_the_losses_of_an_uninterrupted_run(shapes: Path, tmp_path: Path) -> None:
    options = dict(epochs=4, use_scheduler=True)
    whole = history(build_trainer(small(shapes, tmp_path, **options), ["captioner"]).run())
    partial = build_trainer(small(shapes, tmp_path, **options), ["captioner"])
    partial.config.epochs = 2  # a 4-epoch run (its schedule included) that stops after epoch 2, as a kill would
    run = partial.run()
    resumed_run = build_trainer(small(shapes, tmp_path, **options, resume=str(run / "model_epoch_2.pt")), ["captioner"]).run()
    resumed = history(resumed_run)
    assert [e["epoch"] for e in resumed] == [1, 2, 3, 4]
    assert [e["train_loss"] for e in resumed] == [e["train_loss"] for e in whole]
    assert [e["lr"] for e in resumed] == [e["lr"] for e in whole]
    assert json.loads((resumed_run / "run_config.json").read_text())["parent_checkpoint"].endswith("model_epoch_2.pt")


def test_a_continued_run_keeps_the_decoding_its_preset_recommended(shapes: Path, tmp_path: Path) -> None:
    decoding = {"strategy": "beam", "beam_size": 2, "length_penalty": 1.0}
    run = build_trainer(small(shapes, tmp_path, epochs=1, max_images=30, decoding=decoding), ["captioner"]).run()
    resumed = build_trainer(small(shapes, tmp_path, epochs=2, max_images=30, resume=str(run / "best.pt")), ["captioner"]).run()
    assert json.loads((resumed / "run_config.json").read_text())["decoding"] == decoding
    assert torch.load(resumed / "best.pt", weights_only=True)["train_config"]["decoding"] == decoding


def test_resume_takes_the_runs_own_settings_and_flags_given_win(shapes: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from captioner.cli.command import main

    run = build_trainer(small(shapes, tmp_path, epochs=2, max_images=30, keep_checkpoints=3), ["captioner"]).run()
    out = tmp_path / "resumed"
    assert main(["train", "--resume", str(run / "model_epoch_1.pt"), "--output_dir", str(out)]) == 0
    (resumed,) = out.iterdir()
    config = json.loads((resumed / "run_config.json").read_text())
    assert (config["max_images"], config["learning_rate"], config["hidden_size"]) == (30, 3e-3, 16)
    assert [e["train_loss"] for e in history(resumed)] == [e["train_loss"] for e in history(run)]
    assert main(["train", "--resume", str(run / "model_epoch_2.pt"), "--epochs", "3", "--output_dir", str(out)]) == 0
    assert max(e["epoch"] for e in history(max(out.iterdir(), key=lambda p: p.stat().st_mtime))) == 3
    # the run's last epoch: nothing is left, and no run folder is made; a kill's leftover is still cleaned
    (run / ".loss_curve.json.0123abcd.tmp").write_text("{half")
    assert main(["train", "--resume", str(run / "model_epoch_2.pt"), "--output_dir", str(out)]) == 2
    assert not list(run.glob(".*.tmp"))
    assert "is of epoch 2, and --epochs 2 end there: nothing is left to train" in capsys.readouterr().err
    assert len(list(out.iterdir())) == 2


@pytest.mark.parametrize("option, value, expected", [
    ("batch_size", 0, "--batch_size 0: must be at least 1"), ("learning_rate", -1.0, "--learning_rate -1: must be above 0"),
    ("drop_prob", 1.5, "--drop_prob 1.5: must be at least 0 and below 1"), ("hidden_size", 0, "--hidden_size 0"),
    ("label_smoothing", 2.0, "--label_smoothing 2"), ("max_length", 0, "--max_length 0"),
    ("scst_samples", 1, "--scst_samples 1: must be at least 2"), ("subset_fraction", 1.5, "--subset_fraction 1.5"),
    ("epochs", 0, "nothing to train")])
def test_out_of_range_numbers_are_refused_before_any_work(shapes: Path, tmp_path: Path, option: str, value: float,
                                                          expected: str) -> None:
    with pytest.raises(CaptionerError, match=expected):
        build_trainer(small(shapes, tmp_path, **{option: value}, cache_dir=str(tmp_path / "never")), ["captioner"])
    assert not (tmp_path / "never").exists()


def test_an_out_of_range_schedule_setting_is_refused(shapes: Path, tmp_path: Path) -> None:
    schedule = ScheduleSettings(scheduler_type="step", scheduler_step_size=0)
    with pytest.raises(CaptionerError, match="--scheduler_step_size 0: must be at least 1"):
        build_trainer(small(shapes, tmp_path, use_scheduler=True, schedule=schedule), ["captioner"])


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


def test_incompatible_and_damaged_checkpoints_are_clear_errors(shapes: Path, tmp_path: Path) -> None:
    run = build_trainer(small(shapes, tmp_path, epochs=1), ["captioner"]).run()
    with pytest.raises(CaptionerError, match="another model \\(hidden_size"):
        build_trainer(small(shapes, tmp_path, epochs=2, hidden_size=32, resume=str(run / "best.pt")), ["captioner"])
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((run / "best.pt").read_bytes()[:1000])
    with pytest.raises(CaptionerError, match="not a readable checkpoint"):
        load_checkpoint(damaged)
    (tmp_path / "other.pt").write_bytes(b"\0" * 100)
    with pytest.raises(CaptionerError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CaptionerError, match="not a captioner checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


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


def test_killed_mid_run_then_resumed_finishes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL a real `captioner train` process once its first checkpoint exists, resume from that checkpoint,
    and the finished run has the losses of a run that was never interrupted."""
    data = generate_shapes(tmp_path / "shapes", num_images=150, seed=4)
    arguments = [sys.executable, "-m", "captioner", "train", "--dataset_type", "shapes", "--data_dir", str(data),
                 "--encoder", "tiny_random", "--cache_dir", str(tmp_path / "cache"), "--decoder", "attention",
                 "--embed_size", "16", "--hidden_size", "16", "--attention_dim", "16", "--epochs", "3",
                 "--batch_size", "4", "--learning_rate", "3e-3", "--freq_threshold", "1", "--use_scheduler",
                 "--scheduler_type", "cosine"]
    whole = subprocess.run([*arguments, "--output_dir", str(tmp_path / "whole")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([*arguments, "--output_dir", str(killed_dir)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed_dir.glob("*/model_epoch_1.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    (killed_run,) = killed_dir.iterdir()
    assert not (killed_run / "model_epoch_3.pt").exists()
    # the checkpoint alone: the run's data, model and schedule come from it
    resumed = subprocess.run([*arguments[:4], "--output_dir", str(tmp_path / "resumed"), "--resume",
                              str(killed_run / "model_epoch_1.pt")], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    (whole_run,), (resumed_run,) = (tmp_path / "whole").iterdir(), (tmp_path / "resumed").iterdir()
    assert [e["train_loss"] for e in history(resumed_run)] == [e["train_loss"] for e in history(whole_run)]
    assert [e["val_loss"] for e in history(resumed_run)] == [e["val_loss"] for e in history(whole_run)]


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


def test_a_resumed_run_stops_early_where_the_original_would(shapes: Path, tmp_path: Path) -> None:
    options = dict(epochs=30, learning_rate=0.3, early_stopping_patience=2)
    whole = history(build_trainer(small(shapes, tmp_path, **options), ["captioner"]).run())
    stopped_at = whole[-1]["epoch"]
    assert stopped_at < 30
    first = build_trainer(small(shapes, tmp_path, **options), ["captioner"])
    first.config.epochs = stopped_at - 1  # killed one epoch before it would stop
    run = first.run()
    resumed = history(build_trainer(small(shapes, tmp_path, **options, resume=str(run / f"model_epoch_{stopped_at - 1}.pt")),
                              ["captioner"]).run())
    assert resumed[-1]["epoch"] == stopped_at


def test_resumed_from_the_epoch_that_stopped_early_goes_on_to_self_critical(shapes: Path, tmp_path: Path) -> None:
    """Was: one more cross-entropy epoch, then self-critical (the checkpoint's patience had run out)."""
    options = dict(epochs=30, learning_rate=0.3, early_stopping_patience=2, scst_epochs=1, scst_samples=3,
                   best_metric="CIDEr", max_images=40, keep_checkpoints=40)
    whole_run = build_trainer(small(shapes, tmp_path, **options), ["captioner"]).run()
    whole = history(whole_run)
    stopped_at = [e for e in whole if e["objective"] == "cross-entropy"][-1]["epoch"]
    assert stopped_at < 30 and [e["epoch"] for e in whole][-1] == 31
    resumed = history(build_trainer(small(shapes, tmp_path, **options,
                                    resume=str(whole_run / f"model_epoch_{stopped_at}.pt")), ["captioner"]).run())
    assert [(e["epoch"], e["objective"]) for e in resumed] == [(e["epoch"], e["objective"]) for e in whole]
    assert resumed[-1]["train_loss"] == whole[-1]["train_loss"]


def cli_train(shapes: Path, tmp_path: Path, output: Path, *extra: str) -> Path:
    """`captioner train` with the model of small(), into a new folder; returns the run directory."""
    assert main(["train", "--dataset_type", "shapes", "--data_dir", str(shapes), "--encoder", "tiny_random",
                 "--cache_dir", str(tmp_path / "cache"), "--embed_size", "16", "--hidden_size", "16",
                 "--attention_dim", "16", "--batch_size", "16", "--freq_threshold", "1", "--num_workers", "0",
                 "--output_dir", str(output), *extra]) == 0
    (run,) = output.iterdir()
    return run


def test_a_run_that_stopped_early_is_not_resumed_but_can_be_continued(shapes: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    options = dict(epochs=30, learning_rate=0.3, early_stopping_patience=2, keep_checkpoints=40)
    run = build_trainer(small(shapes, tmp_path, **options), ["captioner"]).run()
    stopped_at = history(run)[-1]["epoch"]
    last = run / f"model_epoch_{stopped_at}.pt"

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the refusal")

    with monkeypatch.context() as patch:
        patch.setattr(training_setup, "load_dataset", no_data)
        # refused whatever this command's patience: the original run did stop there
        for patience in (2, 5):
            with pytest.raises(CaptionerError, match=f"epoch {stopped_at}, at which early stopping ended the run"):
                build_trainer(small(shapes, tmp_path, **{**options, "early_stopping_patience": patience},
                              resume=str(last)), ["captioner"])
    # --model_path asks for more epochs: early stopping counts afresh (was: stopped after one)
    continued = cli_train(shapes, tmp_path, tmp_path / "continued", "--learning_rate", "0.3",
                          "--early_stopping_patience", "2", "--keep_checkpoints", "40", "--model_path", str(last),
                          "--epochs", "5")
    assert load_checkpoint(continued / f"model_epoch_{stopped_at + 1}.pt")["patience_left"] >= 1
    assert len(history(continued)) - stopped_at >= 2


def test_a_self_critical_checkpoint_is_continued_with_self_critical_epochs(shapes: Path, tmp_path: Path) -> None:
    """Was: --model_path on a self-critical checkpoint trained cross-entropy epochs after it."""
    common = ("--best_metric", "CIDEr", "--scst_samples", "3", "--max_images", "40", "--learning_rate", "3e-3")
    first = cli_train(shapes, tmp_path, tmp_path / "first", *common, "--epochs", "1", "--scst_epochs", "1")
    continued = cli_train(shapes, tmp_path, tmp_path / "continued", *common, "--model_path",
                          str(first / "model_epoch_2.pt"), "--epochs", "2")
    assert [(e["epoch"], e["objective"]) for e in history(continued)] == [
        (1, "cross-entropy"), (2, "self-critical"), (3, "self-critical"), (4, "self-critical")]


def test_what_a_checkpoint_of_an_early_stop_leaves_to_resume() -> None:
    def checkpoint(objective: str) -> dict:
        return {"epoch": 7, "patience_left": 0, "best_metric": "CIDEr", "history": [{"objective": objective}],
                "train_config": {"early_stopping_patience": 3}}

    config = TrainConfig(epochs=9, scst_epochs=2, early_stopping_patience=3, best_metric="CIDEr", resume="ck.pt")
    check_not_finished(config, checkpoint("cross-entropy"))  # on to self-critical
    with pytest.raises(CaptionerError, match=r"ck.pt is of epoch 7.*no better CIDEr for 3 epochs"):
        check_not_finished(config, checkpoint("self-critical"))
    with pytest.raises(CaptionerError, match="--model_path"):
        check_not_finished(TrainConfig(epochs=9, resume="ck.pt"), checkpoint("cross-entropy"))
    continuation = TrainConfig(epochs=9, restart_patience=True, resume="ck.pt")
    check_not_finished(continuation, checkpoint("self-critical"))
    check_not_finished(config, {**checkpoint("self-critical"), "patience_left": 1})


def test_resumed_self_critical_starts_from_the_best_cross_entropy_epoch_not_a_later_best(shapes: Path,
                                                                                       tmp_path: Path) -> None:
    options = dict(epochs=3, scst_epochs=1, scst_samples=3, best_metric="CIDEr", keep_checkpoints=10, max_images=40)
    run = build_trainer(small(shapes, tmp_path, **options), ["captioner"]).run()
    best_xe = max((e for e in history(run) if e["objective"] == "cross-entropy"), key=lambda e: e["CIDEr"])["epoch"]
    assert best_xe < 3, "the scenario needs a best cross-entropy epoch before the last one"
    save_checkpoint(run / "best.pt", load_checkpoint(run / "model_epoch_4.pt"))  # as when self-critical improved
    expected = load_checkpoint(run / f"model_epoch_{best_xe}.pt")["model"]

    def weights_found(resume: Path) -> dict:
        return build_trainer(small(shapes, tmp_path, **options, resume=str(resume)), ["captioner"]).best_weights

    # resumed after the best epoch, at the best epoch, and from a run that itself resumed (chain of parents)
    chained = tmp_path / "runs" / "chained"
    chained.mkdir()
    shutil.copy(run / "model_epoch_3.pt", chained / "model_epoch_3.pt")
    (chained / "run_config.json").write_text(json.dumps({"parent_checkpoint": str(run / "model_epoch_3.pt")}))
    for resume in (run / "model_epoch_3.pt", run / f"model_epoch_{best_xe}.pt", chained / "model_epoch_3.pt"):
        weights = weights_found(resume)
        assert all(torch.equal(weights[name], expected[name]) for name in expected), resume

    (run / f"model_epoch_{best_xe}.pt").unlink()  # fails when it resumes, not after the remaining epochs
    with pytest.raises(CaptionerError, match=f"best cross-entropy epoch {best_xe}"):
        weights_found(run / "model_epoch_3.pt")


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


def test_dev_loss_is_the_cross_entropy_per_word_of_every_dev_caption(shapes: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Validation batches captions shortest first; the loss must still be that of each caption on its own."""
    trainer = build_trainer(small(shapes, tmp_path, amp=False, label_smoothing=0.1), ["captioner"])
    monkeypatch.setattr(validation_module, "BATCH", 4)  # several batches, with a partial last one
    batch_lengths = []
    real_pad_captions = validation_module.pad_captions

    def recording_pad_captions(examples, indices):
        batch_lengths.append([len(examples.captions[i]) for i in indices])
        return real_pad_captions(examples, indices)

    monkeypatch.setattr(validation_module, "pad_captions", recording_pad_captions)
    loss, _ = trainer.validate()
    lengths = [length for batch in batch_lengths for length in batch]
    assert len(batch_lengths) > 2 and len(lengths) == len(trainer.data.dev) and lengths == sorted(lengths)
    dev, total, words = trainer.data.dev, 0.0, 0
    with torch.no_grad():
        for index, caption in enumerate(dev.captions):
            tokens = torch.tensor([caption])
            logits, _ = trainer.decoder(trainer._features_of_rows(dev.rows[[index]]), tokens)
            total += float(trainer.objective.loss_fn(logits[0], tokens[0, 1:]))
            words += len(caption) - 1
    assert len({len(c) for c in dev.captions}) > 1  # lengths differ, so padding is in play
    assert loss == pytest.approx(total / words, rel=1e-5)


def test_under_torchrun_each_process_validates_its_share(shapes: Path, tmp_path: Path, monkeypatch) -> None:
    """Each of two processes computes the dev loss over half the batches and captions half the dev images;
    what they exchange adds up to the single process's loss and scores."""
    trainer = build_trainer(small(shapes, tmp_path, amp=False), ["captioner"])
    monkeypatch.setattr(validation_module, "BATCH", 4)  # several batches
    whole_loss, whole_scores = trainer.validate()
    sums: dict[int, tuple] = {}
    shares: dict[int, dict] = {}

    class OneOfTwo(Processes):
        """A process of two, without a process group: what it would send the other is recorded."""

        def sum(self, *values: float) -> list[float]:
            sums[self.rank] = values
            return list(values)

        def merge(self, part: dict) -> dict:
            shares[self.rank] = part
            return part

    for rank in (0, 1):
        trainer.processes = OneOfTwo(rank=rank, world_size=2)
        trainer.validate()
    images = len(trainer.data.dev_records)
    assert sorted(shares[0]) == list(range(0, images, 2)) and sorted(shares[1]) == list(range(1, images, 2))
    (total_0, words_0), (total_1, words_1) = sums[0], sums[1]
    assert 0 < words_0 < words_0 + words_1 and (total_0 + total_1) / (words_0 + words_1) == pytest.approx(whole_loss)
    references = {key: [" ".join(clean_caption(text)) for text in record.captions]
                  for key, record in enumerate(trainer.data.dev_records)}
    assert dev_scores(references, {**shares[0], **shares[1]}) == pytest.approx(whole_scores)


def test_self_critical_learning_rate_decays_per_epoch_and_a_resume_keeps_it(shapes: Path, tmp_path: Path) -> None:
    options = dict(epochs=1, scst_epochs=3, scst_samples=3, scst_lr=1e-3, scst_lr_decay=0.5, best_metric="CIDEr",
                   max_images=40, keep_checkpoints=10)
    run = build_trainer(small(shapes, tmp_path, **options), ["captioner"]).run()
    assert [e["lr"] for e in history(run)[1:]] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    resumed = build_trainer(small(shapes, tmp_path, **options, resume=str(run / "model_epoch_2.pt")), ["captioner"]).run()
    assert [e["lr"] for e in history(resumed)[1:]] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert [e["train_loss"] for e in history(resumed)] == [e["train_loss"] for e in history(run)]
    constant = build_trainer(small(shapes, tmp_path, **{**options, "scst_lr_decay": 1.0}), ["captioner"]).run()
    losses, constant_losses = [e["train_loss"] for e in history(run)], [e["train_loss"] for e in history(constant)]
    assert losses[:2] == constant_losses[:2] and losses[2] != constant_losses[2]  # the rate was in effect


def test_a_learning_rate_factor_of_zero_is_refused(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="--scst_lr_decay 0"):
        build_trainer(small(shapes, tmp_path, scst_epochs=1, scst_lr_decay=0.0), ["captioner"])


def test_an_interrupted_run_says_how_to_resume_it(shapes: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    trainer = build_trainer(small(shapes, tmp_path, epochs=3), ["captioner"])
    real_epoch, calls = trainer.train_epoch, []

    def interrupted_in_epoch_2(*args, **kwargs):  # Ctrl-C in the middle of the second epoch
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", interrupted_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    (run,) = (tmp_path / "runs").iterdir()
    assert f"{run} keeps epochs up to 1; go on with: captioner train --resume {run / 'model_epoch_1.pt'}" in \
        capsys.readouterr().err


def test_mirroring_captions_that_name_sides_is_warned_about(shapes: Path, tmp_path: Path) -> None:
    from captioner.training.config import sided_share

    records = load_dataset("shapes", shapes).split("train")
    assert sided_share(records) > 0.05  # "... to the left of ..."
    run = build_trainer(small(shapes, tmp_path, epochs=1, augment_flip=True), ["captioner"]).run()
    assert "of the training captions say 'left' or 'right'" in (run / "train.log").read_text()
