"""The resume policy, in one place: what `--resume CKPT` (go on up to --epochs, as the run would have) and
`--model_path CKPT --epochs N` (N more epochs of the checkpoint's kind) take from a checkpoint, what they
refuse, and how a trainer is put back where the checkpoint left it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from captioner.errors import CaptionerError
from captioner.models.checkpoint import load_checkpoint
from captioner.models.decoders import DecoderConfig
from captioner.training.config import STRUCTURE, TrainConfig
from captioner.training.encoder_tuning import TunedEncoder
from captioner.training.rundir import checkpoint_of_epoch

if TYPE_CHECKING:
    from captioner.training.trainer import Trainer

# options a resumed or continued run does not take from its checkpoint: what names the checkpoint and the new
# run's folder, the machine's own (device, workers), and for a continuation the epochs (it counts N more)
NOT_RESUMED = ("resume", "model_path", "mode", "preset", "output_dir", "device", "num_workers", "restart_patience")


def resumed_settings(checkpoint_path: Path, options: set[str], continuing: bool) -> dict[str, object]:
    """A resumed (--resume) or continued (--model_path) run's settings: the data, model and schedule of the run
    it goes on from, so that `--resume CKPT` alone trains the same run on; flags given explicitly still win."""
    saved = dict(load_checkpoint(checkpoint_path, mmap=True).get("train_config", {}))
    saved.update(saved.pop("schedule", None) or {})
    skipped = NOT_RESUMED + (("epochs", "scst_epochs") if continuing else ())
    return {name: value for name, value in saved.items() if name in options and name not in skipped}


def stopped_early(checkpoint: dict) -> bool:
    """Whether early stopping ended a phase of the checkpoint's run at the checkpoint's epoch (the count of epochs
    left without a better dev score had run out)."""
    return checkpoint.get("patience_left") is not None and checkpoint["patience_left"] <= 0


def last_objective(checkpoint: dict) -> str:
    """"cross-entropy" or "self-critical": what the checkpoint's epoch trained."""
    history = checkpoint.get("history") or [{}]
    return history[-1].get("objective", "cross-entropy")


def continuation_epochs(checkpoint: dict, more: int, scst_epochs: int) -> tuple[int, int]:
    """(--epochs, --scst_epochs) that train `more` epochs after the checkpoint, of the kind its epoch was."""
    if last_objective(checkpoint) == "self-critical":
        # self-critical epochs are numbered after the cross-entropy epochs the run was given
        cross_entropy = min(e["epoch"] for e in checkpoint["history"] if e.get("objective") == "self-critical") - 1
        return cross_entropy, checkpoint["epoch"] - cross_entropy + more
    return checkpoint["epoch"] + more, scst_epochs


def check_not_finished(config: TrainConfig, checkpoint: dict) -> None:
    """A resume goes on as the original run went on; where early stopping ended that run, nothing is left. The
    checkpoint decides, not this command's options: the original run did stop there. Nor is anything left
    when the checkpoint's epoch is the last one these options ask for."""
    on_to_self_critical = last_objective(checkpoint) == "cross-entropy" and config.scst_epochs
    if not config.restart_patience and stopped_early(checkpoint) and not on_to_self_critical:
        patience = checkpoint.get("train_config", {}).get("early_stopping_patience")
        raise CaptionerError(f"checkpoint {config.resume} is of epoch {checkpoint['epoch']}, at which early stopping "
                             f"ended the run (no better {checkpoint.get('best_metric')} for {patience} epochs); "
                             "nothing is left to resume, whatever --early_stopping_patience says now. To train on, "
                             "continue it with --model_path and --epochs N (N more epochs of the same kind; early "
                             "stopping counts afresh)")
    if checkpoint["epoch"] >= config.epochs + config.scst_epochs and not config.embedding_epochs:
        asked = f"--epochs {config.epochs}" + (f" and --scst_epochs {config.scst_epochs}" if config.scst_epochs else "")
        raise CaptionerError(f"checkpoint {config.resume} is of epoch {checkpoint['epoch']}, and {asked} end there: "
                             "nothing is left to train. Ask for more epochs, or continue it with --model_path and "
                             "--epochs N (N more epochs)")


def check_same_model(config: TrainConfig, model_config: dict, checkpoint: dict) -> None:
    saved = {**DecoderConfig().to_dict(), **checkpoint["model_config"]}  # settings added later: their defaults
    different = [name for name in STRUCTURE if saved.get(name) != model_config.get(name)]
    if different:
        raise CaptionerError(f"checkpoint {config.resume} was trained with another model ({', '.join(different)} "
                             "differ); use the same --decoder/--embed_size/... settings or start a new run")
    if checkpoint["encoder"] != config.encoder:
        raise CaptionerError(f"checkpoint {config.resume} was trained on {checkpoint['encoder']} features, "
                             f"not {config.encoder}; pass --encoder {checkpoint['encoder']}")


def restore(trainer: Trainer, checkpoint: dict) -> None:
    """Put the trainer where the checkpoint left its run: weights, optimizer, schedule, epoch, best score and
    patience, history and random state."""
    config, source = trainer.config, trainer.config.resume
    check_same_model(config, trainer.model_config.to_dict(), checkpoint)
    trainer.decoder.load_state_dict(checkpoint["model"])
    live = trainer.live
    if checkpoint.get("encoder_state") is not None:
        if live is None or not live.fine_tune:
            raise CaptionerError(f"checkpoint {source} has a fine-tuned encoder; resume it with --fine_tune_encoder")
        live.encoder.load_state_dict(checkpoint["encoder_state"])
    elif live is not None and live.fine_tune:
        raise CaptionerError(f"checkpoint {source} was trained with a frozen encoder; leave out --fine_tune_encoder "
                             "to resume it (start a new run to fine-tune)")
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    if trainer.schedule is not None and checkpoint.get("scheduler"):
        trainer.schedule.load_state_dict(checkpoint["scheduler"])
    trainer.start_epoch = checkpoint["epoch"] + 1
    skip_to_self_critical = stopped_early(checkpoint) and not config.restart_patience  # see check_not_finished
    if skip_to_self_critical:  # as the original run went on
        trainer.start_epoch = config.epochs + 1
    if checkpoint.get("best_metric", "val_loss") == config.best_metric:
        trainer.best_score, trainer.best_epoch = checkpoint["best_score"], checkpoint["best_epoch"]
        if config.scst_epochs and 0 < trainer.best_epoch and checkpoint["epoch"] <= config.epochs:
            best = checkpoint if trainer.best_epoch == checkpoint["epoch"] else _best_checkpoint(Path(source),
                                                                                                  trainer.best_epoch)
            trainer.best_weights = {k: v.detach().clone() for k, v in best["model"].items()}
            trainer.best_tuned = TunedEncoder.from_dict(best["tuned_encoder"]) if best.get("tuned_encoder") else None
        if config.early_stopping_patience is not None and checkpoint.get("patience_left") is not None:
            trainer.patience_left = min(checkpoint["patience_left"], config.early_stopping_patience)
            if config.restart_patience or skip_to_self_critical:
                trainer.patience_left = config.early_stopping_patience
    trainer.history = list(checkpoint.get("history", []))
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if config.decoding is None:  # a continued run's model still decodes best as its recipe's did
        config.decoding = checkpoint.get("train_config", {}).get("decoding")


def _best_checkpoint(checkpoint_path: Path, epoch: int) -> dict:
    """A resumed run's best cross-entropy epoch, for the self-critical epochs to start from, looked up when it
    resumes so that a missing file fails now, not after the remaining epochs."""
    folder = checkpoint_path.parent
    best = checkpoint_of_epoch(folder, epoch)
    if best is None:
        raise CaptionerError(f"self-critical training starts from the best cross-entropy epoch {epoch}, but neither "
                             f"best.pt nor model_epoch_{epoch}.pt holds it in {folder} or the runs it resumed from; "
                             f"resume from a checkpoint of epoch {epoch} or later whose run still has it")
    return best
