"""--resume and --model_path: a resumed run ends where an uninterrupted one ends; what is refused, and why."""

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
from captioner.cli.command import main
from captioner.data.shapes import generate_shapes
from captioner.errors import CaptionerError
from captioner.models.checkpoint import load_checkpoint, save_checkpoint
from captioner.models.loading import load_model
from captioner.training.config import TrainConfig
from captioner.training.resume import check_not_finished
from captioner.training.setup import build_trainer
from tests.training.helpers import history, small


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


@pytest.mark.slow  # one kill; tests/reliability/test_crashes.py kills at several moments in the default run
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


def test_a_trained_model_gains_a_search_embedding_without_more_caption_epochs(shapes: Path, tmp_path: Path) -> None:
    first = cli_train(shapes, tmp_path, tmp_path / "first", "--epochs", "1")
    assert "embedding" not in load_checkpoint(first / "best.pt")
    continued = cli_train(shapes, tmp_path, tmp_path / "continued", "--model_path", str(first / "best.pt"),
                          "--epochs", "0", "--embedding_epochs", "2")
    parent, child = load_checkpoint(first / "best.pt"), load_checkpoint(continued / "best.pt")
    assert all(torch.equal(child["model"][key], value) for key, value in parent["model"].items())
    assert len(child["embedding"]["history"]) == 2
    assert load_model(continued / "best.pt", "cpu").embedding is not None
