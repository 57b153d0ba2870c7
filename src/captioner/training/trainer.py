"""`captioner train`: teacher forcing on cached features, with schedules, early stopping, checkpoints, resume."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import random
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from captioner.training.batches import CaptionExamples, bucketed_batches, make_batch, pad_captions
from captioner.models.checkpoint import load_checkpoint
from captioner.data.formats import load_dataset
from captioner.data.records import Dataset
from captioner.data.vocab import SPECIALS, Vocabulary, clean_caption
from captioner.models.decoders import DecoderConfig, build_decoder
from captioner.decoding.strategies import DecodeSettings, decode, greedy
from captioner.devices import autocast, keep_freed_memory, pick_device
from captioner.training.distributed import start_processes, stop_processes
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureStore, extract_features
from captioner.features.live import LiveFeatures
from captioner.training.rundir import RunFiles, remove_temporaries, weights_of_epoch
from captioner.training.schedulers import Schedule, ScheduleSettings


# Model settings that shape the weights; a checkpoint continues only with the same ones (dropout may change).
STRUCTURE = ("decoder", "vocab_size", "feature_dim", "embed_size", "hidden_size", "attention_dim", "num_layers",
             "image_init")


@dataclass
class TrainConfig:
    """Every setting of a run; saved as run_config.json."""

    dataset_type: str = "shapes"
    data_dir: str | None = None
    captions_file: str | None = None
    max_images: int | None = None
    subset_fraction: float | None = None
    seed: int = 42
    freq_threshold: int = 5
    max_vocab: int | None = None
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None
    image_size: int | None = None
    cache_dir: str | None = None
    augment_flip: bool = False
    fine_tune_encoder: bool = False  # train the encoder too, on images (no feature cache)
    augment: bool = False  # random crop, flip and colour jitter of the images (no feature cache)
    encoder_lr: float = 1e-4
    num_workers: int | None = None
    device: str | None = None
    decoder: str = "attention"
    embed_size: int = 512
    hidden_size: int = 512
    attention_dim: int = 512
    num_layers: int = 1
    drop_prob: float = 0.5
    image_init: str = "input"
    alpha_c: float = 1.0
    deep_output: bool = False
    embed_dropout: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 4e-4
    clip_norm: float = 5.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    max_length: int = 30
    use_scheduler: bool = False
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    early_stopping_patience: int | None = None
    best_metric: str = "val_loss"  # what picks best.pt and drives early stopping: val_loss, BLEU-4 or CIDEr
    scst_epochs: int = 0  # after the cross-entropy epochs, this many epochs of self-critical CIDEr-D training
    scst_lr: float = 2e-5
    scst_lr_decay: float = 1.0  # each self-critical epoch after the first runs at the previous one's rate x this
    scst_samples: int = 5  # sampled captions per image; each one's baseline is the mean of the others
    scst_xe_weight: float = 0.0  # self-critical loss + this x the cross-entropy of the images' references
    scst_xe_references: int | None = None  # references per image in that cross-entropy (None: all of them)
    scst_bleu_weight: float = 0.0  # self-critical reward: CIDEr-D + this x the sample's BLEU-4
    keep_checkpoints: int = 2
    output_dir: str = "runs"
    amp: bool = True
    bleu_images: int = 1000  # dev images decoded greedily each epoch for BLEU
    show_samples: int = 0  # at the end, caption this many held-out test images next to their references
    save_attention_viz: bool = False  # attention pictures of fixed dev images, at each new best and at the end
    attention_viz_samples: int = 3
    advanced_attention_viz: bool = False
    resume: str | None = None
    restart_patience: bool = False  # --model_path: more epochs were asked for, so early stopping counts afresh
    preset: str | None = None  # the named recipe the settings came from, if any
    # how the preset's models caption best (presets.DECODING: RECOMMENDABLE decoding options), kept by continued
    # runs: what `captioner caption/evaluate --recommended`, Captioner.recommended_decoding and the web page use
    decoding: dict[str, object] | None = None

    @classmethod
    def from_namespace(cls, args: object) -> TrainConfig:
        values = {f.name: getattr(args, f.name) for f in fields(cls)
                  if f.name != "schedule" and getattr(args, f.name, None) is not None}
        values = {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}
        schedule = {f.name: getattr(args, f.name) for f in fields(ScheduleSettings)
                    if getattr(args, f.name, None) is not None}
        return cls(**values, schedule=ScheduleSettings(**schedule))

    def run_name(self) -> str:
        schedule = self.schedule.scheduler_type if self.use_scheduler else "const"
        scst = f"_scst{self.scst_epochs}" if self.scst_epochs else ""
        return (f"{self.dataset_type}_{self.decoder}_ep{self.epochs}_bs{self.batch_size}_lr{self.learning_rate:.0e}"
                f"_{schedule}{scst}").replace("e-0", "e-")


# ---------------------------------------------------------------- metrics used during training


def dev_scores(references: dict[int, list[str]], hypotheses: dict[int, str]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D (0-1 and 0-10, as the scorers return them) with the coco-caption scorers on
    already-cleaned text: quick, Java-free, and ranking epochs the way the final evaluation would."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    references = {k: references[k] for k in hypotheses}
    hypotheses = {k: [v or "<empty>"] for k, v in hypotheses.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their internals
        bleu, _ = Bleu(4).compute_score(references, hypotheses, verbose=0)
        cider, _ = Cider().compute_score(references, hypotheses)
    return {**{f"BLEU-{n + 1}": float(score) for n, score in enumerate(bleu)}, "CIDEr": float(cider)}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _at_least(lowest: float) -> tuple:
    return (lambda value: value >= lowest), f"at least {lowest:g}"


_POSITIVE = ((lambda value: value > 0), "above 0")
_A_PROBABILITY = ((lambda value: 0 <= value < 1), "at least 0 and below 1")
# what each numeric option must be (None, where allowed, means "not set"), checked before any work
OPTION_RANGES = {
    **dict.fromkeys(("embed_size", "hidden_size", "attention_dim", "num_layers", "batch_size", "max_length",
                     "freq_threshold", "max_vocab", "max_images", "image_size", "keep_checkpoints",
                     "early_stopping_patience", "scst_xe_references", "scheduler_step_size", "scheduler_t_max",
                     "keep_epochs"), _at_least(1)),
    **dict.fromkeys(("epochs", "scst_epochs", "num_workers", "bleu_images", "show_samples", "attention_viz_samples",
                     "clip_norm", "weight_decay", "alpha_c", "scst_xe_weight", "scst_bleu_weight", "min_lr",
                     "scheduler_patience", "warmup_epochs"), _at_least(0)),
    **dict.fromkeys(("learning_rate", "encoder_lr", "scst_lr", "scst_lr_decay", "scheduler_factor",
                     "scheduler_gamma"), _POSITIVE),
    **dict.fromkeys(("drop_prob", "embed_dropout", "label_smoothing"), _A_PROBABILITY),
    "subset_fraction": ((lambda value: 0 < value <= 1), "above 0 and at most 1"),
    "scst_samples": _at_least(2),  # each sample's baseline is the mean of its siblings'
}


def check_options(config: TrainConfig) -> None:
    """Settings that are wrong on their own, whatever the data."""
    settings = {**asdict(config), **asdict(config.schedule)}
    for name, (allowed, what) in OPTION_RANGES.items():
        value = settings[name]
        if value is not None and not allowed(value):
            raise CaptionerError(f"--{name} {value:g}: must be {what}")
    if config.epochs + config.scst_epochs < 1:
        raise CaptionerError("--epochs and --scst_epochs are both 0: nothing to train")
    if (config.save_attention_viz or config.advanced_attention_viz) and config.decoder != "attention":
        given = "--save_attention_viz" if config.save_attention_viz else "--advanced_attention_viz"
        raise CaptionerError(f"{given} needs --decoder attention; the {config.decoder} decoder has no "
                             "attention to draw")


# options that only some decoders read
DECODER_ONLY_OPTIONS = {"attention_dim": ("attention",), "deep_output": ("attention",), "embed_dropout": ("attention",),
                        "alpha_c": ("attention",), "attention_viz_samples": ("attention",),
                        "num_layers": ("lstm", "gru"), "image_init": ("lstm", "gru")}


def ignored_options(config: TrainConfig) -> list[str]:
    """Options set away from their defaults that the chosen decoder does not read (the flickr8k_best preset sets
    some for the attention decoder), so that a run with --decoder lstm says so instead of silently dropping them."""
    defaults = {option.name: option.default for option in fields(TrainConfig)}
    return [f"--{name}" for name, readers in DECODER_ONLY_OPTIONS.items()
            if config.decoder not in readers and getattr(config, name) != defaults[name]]


SIDED_WARNING_SHARE = 0.05  # Flickr8k: 0.4% of the captions; the synthetic shapes: about 10%
_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def sided_share(records: list) -> float:
    """The share of captions naming a side, which a mirrored image turns into a wrong description."""
    captions = [text for record in records for text in record.captions]
    return sum(bool(_SIDES.search(text)) for text in captions) / max(len(captions), 1)


def unused_schedule_options(config: TrainConfig) -> list[str]:
    """Schedule settings given without --use_scheduler, which alone switches the schedule on."""
    if config.use_scheduler:
        return []
    defaults = ScheduleSettings()
    return [f"--{option.name}" for option in fields(ScheduleSettings)
            if getattr(config.schedule, option.name) != getattr(defaults, option.name)]


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
    if checkpoint["epoch"] >= config.epochs + config.scst_epochs:
        asked = f"--epochs {config.epochs}" + (f" and --scst_epochs {config.scst_epochs}" if config.scst_epochs else "")
        raise CaptionerError(f"checkpoint {config.resume} is of epoch {checkpoint['epoch']}, and {asked} end there: "
                             "nothing is left to train. Ask for more epochs, or continue it with --model_path and "
                             "--epochs N (N more epochs)")


# ---------------------------------------------------------------- the trainer


class Trainer:
    validation_batch = 256  # dev captions per teacher-forced batch

    def __init__(self, config: TrainConfig, command: list[str] | None = None) -> None:
        check_options(config)  # before minutes of feature extraction, not after
        self.parent = load_checkpoint(config.resume) if config.resume else None
        self.config = config
        self.command = command or sys.argv
        self.processes, device = start_processes(config.device)
        self.device = device or pick_device(config.device)
        keep_freed_memory()
        if self.parent is not None and self.processes.is_main:
            remove_temporaries(Path(config.resume).parent)  # left by a kill in the middle of an atomic write
        if self.parent is not None:
            check_not_finished(config, self.parent)  # before the data and features, too
        self.dataset = self._load_data()
        self.vocab = self._vocabulary()
        if not self.processes.is_main:
            self.processes.barrier()  # the main process builds the feature cache; the others then read it
        self.store = self._features()
        if self.processes.is_main:
            self.processes.barrier()
        self.train_set = CaptionExamples.build(self.dataset.split("train"), self.store, self.vocab, config.max_length)
        self.dev_records = [r for r in self.dataset.split("dev") if self.store.row(r.image) is not None]
        self.dev_set = CaptionExamples.build(self.dev_records, self.store, self.vocab, config.max_length)
        if len(self.train_set) == 0 or len(self.dev_set) == 0:
            raise CaptionerError(f"{config.dataset_type}: the train and dev splits need usable captions "
                                 f"(train {len(self.train_set)}, dev {len(self.dev_set)})")
        h, w, channels = self.store.grid_shape
        self.model_config = DecoderConfig(config.decoder, len(self.vocab), channels, config.embed_size,
                                          config.hidden_size, config.attention_dim, config.num_layers,
                                          config.drop_prob, config.image_init, config.deep_output,
                                          config.embed_dropout)
        # Seeded here, after data and features: extraction (when the cache is missing) draws random numbers,
        # and the same seed must give the same run whether or not the cache existed.
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.decoder = build_decoder(self.model_config).to(self.device)
        self.model = self.decoder  # what the training step calls: the decoder, or its DDP wrapper
        # fused Adam: one kernel for all parameters instead of a dozen passes over each
        groups = [{"params": list(self.decoder.parameters())}]
        if self.live is not None and self.live.fine_tune:
            groups.append({"params": self.live.parameters(), "lr": config.encoder_lr})
        self.optimizer = torch.optim.Adam(groups, lr=config.learning_rate, weight_decay=config.weight_decay,
                                          fused=self.device.type in ("cpu", "cuda"))
        steps = math.ceil(len(self.train_set) / config.batch_size)
        self.schedule = Schedule(self.optimizer, config.schedule, config.epochs, steps) if config.use_scheduler else None
        # summed, then divided by the words of the whole (global) batch: the same loss on 1 or N processes
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=self.vocab.pad_id, label_smoothing=config.label_smoothing,
                                           reduction="sum")
        self.start_epoch, self.best_epoch, self.history = 1, 0, []
        self.best_weights: dict | None = None  # in memory, for the switch to self-critical training
        self.patience_left = config.early_stopping_patience
        if config.scst_epochs and self.processes.distributed:
            raise CaptionerError("--scst_epochs runs in a single process for now; train the cross-entropy epochs with "
                                 "torchrun, then continue with --resume and --scst_epochs without it")
        self.self_critical = self._self_critical() if config.scst_epochs else None
        self.best_score = math.inf if config.best_metric == "val_loss" else -math.inf
        if self.parent is not None:
            self._restore(self.parent)
            if config.decoding is None:  # a continued run's model still decodes best as its recipe's did
                config.decoding = self.parent.get("train_config", {}).get("decoding")
        if self.processes.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.decoder, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.files: RunFiles | None = None  # created by run(), on the main process only

    # ---- setup

    def _load_data(self) -> Dataset:
        c = self.config
        return load_dataset(c.dataset_type, c.data_dir, captions_file=c.captions_file, seed=c.seed,
                            max_images=c.max_images, subset_fraction=c.subset_fraction)

    def _vocabulary(self) -> Vocabulary:
        if self.parent is not None:
            return Vocabulary.from_dict(self.parent["vocab"], f"checkpoint {self.config.resume}")
        tokens = (clean_caption(text) for record in self.dataset.split("train") for text in record.captions)
        vocab = Vocabulary.build(tokens, self.config.freq_threshold, self.config.max_vocab)
        if len(vocab) <= len(SPECIALS):
            raise CaptionerError(f"the vocabulary would hold only {', '.join(SPECIALS)}: no word of the training "
                                 f"captions occurs --freq_threshold {self.config.freq_threshold} times; lower it")
        return vocab

    @property
    def live(self) -> LiveFeatures | None:
        """The encoder run on images at every step, when fine-tuning or augmenting; None with the cache."""
        return self.store if isinstance(self.store, LiveFeatures) else None

    def _features(self) -> FeatureStore | LiveFeatures:
        c = self.config
        if c.fine_tune_encoder or c.augment:
            if c.augment_flip:
                raise CaptionerError("--augment_flip caches flipped features; with --augment/--fine_tune_encoder "
                                     "images are flipped on the fly, so leave --augment_flip out")
            images = [r.image for r in self.dataset.records if r.split in ("train", "dev", "test")]
            return LiveFeatures(images, c.encoder, Path(c.encoder_weights) if c.encoder_weights else None,
                                c.image_size, augment=c.augment, fine_tune=c.fine_tune_encoder, device=self.device,
                                amp=c.amp)
        images = [r.image for r in self.dataset.records if r.split in ("train", "dev", "test")]
        return extract_features(images, c.encoder, image_size=c.image_size,
                                cache_dir=Path(c.cache_dir) if c.cache_dir else None, flip=c.augment_flip,
                                weights=Path(c.encoder_weights) if c.encoder_weights else None,
                                num_workers=c.num_workers, device=c.device)

    def _self_critical(self):
        from captioner.training.self_critical import SelfCritical

        references = {}
        for record in self.dataset.split("train"):
            row = self.store.row(record.image)
            if row is not None:
                references[row] = [clean_caption(text)[: self.config.max_length] for text in record.captions]
        return SelfCritical(references, self.vocab, self.config.scst_samples, self.config.scst_bleu_weight)

    def _set_self_critical_lr(self) -> None:
        """--scst_lr x --scst_lr_decay per self-critical epoch already in the history, so that a resumed or
        continued run goes on where it stopped."""
        done = sum(entry.get("objective") == "self-critical" for entry in self.history)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.scst_lr * self.config.scst_lr_decay ** done

    def _start_self_critical(self) -> None:
        """Continue from the best cross-entropy weights with a fresh optimizer state, at a small learning rate."""
        c = self.config
        if self.best_weights is not None:
            self.decoder.load_state_dict(self.best_weights)
        self.optimizer.state.clear()
        reward = f"CIDEr-D + {c.scst_bleu_weight:g} x BLEU-4" if c.scst_bleu_weight else "CIDEr-D"
        references = (f"{c.scst_xe_references} reference(s) per image drawn at random" if c.scst_xe_references
                      else "the references")
        mixed = f", plus {c.scst_xe_weight:g} x the cross-entropy of {references}" if c.scst_xe_weight else ""
        self.log(f"self-critical training ({reward} reward, {c.scst_samples} samples per image{mixed}) from the best "
                 f"cross-entropy epoch {self.best_epoch}, learning rate {c.scst_lr:.0e}"
                 + (f", x {c.scst_lr_decay:g} after each epoch" if c.scst_lr_decay != 1 else ""))

    def _weights_of_epoch(self, epoch: int) -> dict:
        """A resumed run's best cross-entropy weights, for the self-critical epochs to start from, looked up
        when it resumes so that a missing file fails now, not after the remaining epochs."""
        folder = Path(self.config.resume).parent
        weights = weights_of_epoch(folder, epoch)
        if weights is None:
            raise CaptionerError(f"self-critical training starts from the best cross-entropy epoch {epoch}, but "
                                 f"neither best.pt nor model_epoch_{epoch}.pt holds it in {folder} or the runs it "
                                 f"resumed from; resume from a checkpoint of epoch {epoch} or later whose run "
                                 "still has it")
        return weights

    def _restore(self, checkpoint: dict) -> None:
        source = self.config.resume
        saved, current = checkpoint["model_config"], self.model_config.to_dict()
        different = [name for name in STRUCTURE if saved.get(name) != current[name]]
        if different:
            raise CaptionerError(f"checkpoint {source} was trained with another model ({', '.join(different)} "
                                 "differ); use the same --decoder/--embed_size/... settings or start a new run")
        if checkpoint["encoder"] != self.config.encoder:
            raise CaptionerError(f"checkpoint {source} was trained on {checkpoint['encoder']} features, "
                                 f"not {self.config.encoder}; pass --encoder {checkpoint['encoder']}")
        self.decoder.load_state_dict(checkpoint["model"])
        if checkpoint.get("encoder_state") is not None:
            if self.live is None or not self.live.fine_tune:
                raise CaptionerError(f"checkpoint {source} has a fine-tuned encoder; resume it with --fine_tune_encoder")
            self.live.encoder.load_state_dict(checkpoint["encoder_state"])
        elif self.live is not None and self.live.fine_tune:
            raise CaptionerError(f"checkpoint {source} was trained with a frozen encoder; leave out --fine_tune_encoder "
                                 "to resume it (start a new run to fine-tune)")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.schedule is not None and checkpoint.get("scheduler"):
            self.schedule.load_state_dict(checkpoint["scheduler"])
        self.start_epoch = checkpoint["epoch"] + 1
        skip_to_self_critical = stopped_early(checkpoint) and not self.config.restart_patience  # see check_not_finished
        if skip_to_self_critical:  # as the original run went on
            self.start_epoch = self.config.epochs + 1
        if checkpoint.get("best_metric", "val_loss") == self.config.best_metric:
            self.best_score, self.best_epoch = checkpoint["best_score"], checkpoint["best_epoch"]
            if self.config.scst_epochs and 0 < self.best_epoch and checkpoint["epoch"] <= self.config.epochs:
                self.best_weights = ({k: v.detach().clone() for k, v in self.decoder.state_dict().items()}
                                     if self.best_epoch == checkpoint["epoch"] else self._weights_of_epoch(self.best_epoch))
            if self.config.early_stopping_patience is not None and checkpoint.get("patience_left") is not None:
                self.patience_left = min(checkpoint["patience_left"], self.config.early_stopping_patience)
                if self.config.restart_patience or skip_to_self_critical:
                    self.patience_left = self.config.early_stopping_patience
        self.history = list(checkpoint.get("history", []))
        torch.set_rng_state(checkpoint["rng"]["torch"])

    # ---- one epoch

    def _batches(self, epoch: int) -> tuple[list[list[int]], torch.Generator]:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        lengths = [len(caption) for caption in self.train_set.captions]
        return bucketed_batches(lengths, self.config.batch_size, generator), generator

    def _loss(self, features: torch.Tensor, captions: torch.Tensor, total_words: int,
              total_captions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to minimise and the summed cross-entropy (to report). Both are divided by the words and
        captions of the whole batch across processes, times the number of processes (DDP averages gradients),
        so N processes compute exactly the gradient of one process with the global batch."""
        scale = self.processes.world_size
        logits, alphas = self.model(features, captions)  # (B, T-1, V)
        targets = captions[:, 1:]
        cross_entropy = self.loss_fn(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss = cross_entropy * (scale / total_words)
        if alphas is not None and self.config.alpha_c > 0:
            # doubly stochastic regularisation: over the caption, every region gets about one unit of attention
            mask = (targets != self.vocab.pad_id).unsqueeze(2).float()
            coverage = (alphas.float() * mask).sum(1)  # (B, L)
            penalty = ((1.0 - coverage) ** 2).mean(1).sum()
            loss = loss + self.config.alpha_c * penalty * (scale / total_captions)
        return loss, cross_entropy.detach()

    def train_step(self, indices: list[int], generator: torch.Generator) -> tuple[float, int]:
        """One optimizer step on a global batch; returns this process's summed cross-entropy and word count."""
        flip = None
        if self.config.augment_flip:
            flip = (torch.rand(len(indices), generator=generator) < 0.5).numpy()
        total_words = sum(len(self.train_set.captions[i]) - 1 for i in indices)
        local = self.processes.shard(list(range(len(indices))))
        mine = [indices[i] for i in local]
        if self.live is not None:
            captions = pad_captions(self.train_set, mine)
            features = self.live.features(self.train_set.rows[mine].tolist(), self.decoder.uses_grid, train=True)
        else:
            features, captions = make_batch(self.train_set, mine, self.store, self.decoder.uses_grid,
                                            flip[local] if flip is not None else None)
        features, captions = features.to(self.device), captions.to(self.device)
        with autocast(self.device, self.config.amp):
            loss, cross_entropy = self._loss(features, captions, total_words, len(indices))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        encoder_parameters = self.live.parameters() if self.live is not None else []
        self.processes.average_gradients(encoder_parameters)  # DDP wraps the decoder only
        if self.config.clip_norm:
            nn.utils.clip_grad_norm_([*self.decoder.parameters(), *encoder_parameters], self.config.clip_norm)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.after_batch()
        return float(cross_entropy), int((captions[:, 1:] != self.vocab.pad_id).sum())

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """Mean cross-entropy per word over the epoch, and captions per second (all processes together)."""
        self.model.train()
        batches, generator = self._batches(epoch)
        total, words, captions_seen, started = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, file=sys.stderr,
                   disable=None if self.processes.is_main else True)  # None: off when not a terminal
        for indices in bar:
            if len(indices) < self.processes.world_size:
                continue  # a global batch too small to give every process a caption
            cross_entropy, count = self.train_step(indices, generator)
            total += cross_entropy
            words += count
            captions_seen += len(indices)
            speed = captions_seen / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{cross_entropy / max(count, 1):.3f}", captions_s=f"{speed:.0f}")
        total, words = self.processes.sum(total, words)
        return total / max(words, 1), captions_seen / (time.perf_counter() - started)

    def self_critical_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One epoch of self-critical training: mean loss, mean reward (CIDEr-D of the samples), captions/s."""
        self.model.train()
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        images_per_batch = max(1, self.config.batch_size // self.config.scst_samples)
        batches = self.self_critical.batches(images_per_batch * self.processes.world_size, generator)
        total_loss, total_reward, count, started = 0.0, 0.0, 0, time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch} (self-critical)", unit="batch", leave=False, file=sys.stderr,
                   disable=None if self.processes.is_main else True)
        for rows in bar:
            mine = self.processes.shard(rows)
            if not mine:
                continue
            features = self._features_of_rows(mine, train=True)
            with autocast(self.device, self.config.amp):
                loss, reward = self.self_critical.loss(self.decoder, features, mine, self.config.max_length)
                if self.config.scst_xe_weight:
                    loss = loss + self.config.scst_xe_weight * self._reference_loss(features, mine)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.clip_norm:
                nn.utils.clip_grad_norm_(self.decoder.parameters(), self.config.clip_norm)
            self.optimizer.step()
            total_loss += float(loss.detach()) * len(mine)
            total_reward += reward * len(mine)
            count += len(mine)
            bar.set_postfix(cider=f"{reward:.3f}")
        total_loss, total_reward, count = self.processes.sum(total_loss, total_reward, count)
        speed = count * self.config.scst_samples / (time.perf_counter() - started)
        return total_loss / max(count, 1), total_reward / max(count, 1), speed

    def _reference_loss(self, features: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Teacher-forced cross-entropy per word of these images' reference captions (mixed with the
        self-critical loss it keeps the captions close to human ones: their length, their words). With
        --scst_xe_references K only K of each image's references, drawn anew each time: the teacher-forced
        pass over all five costs as much as the sampling."""
        examples = [(position, index) for position, row in enumerate(rows)
                    for index in self._some_references(self._examples_of_row[row])]
        captions = pad_captions(self.train_set, [index for _, index in examples]).to(self.device)
        image_of = torch.tensor([position for position, _ in examples], device=features.device)
        words = int((captions[:, 1:] != self.vocab.pad_id).sum())
        loss, _ = self._loss(features.index_select(0, image_of), captions, words, len(examples))
        return loss

    def _some_references(self, examples: list[int]) -> list[int]:
        count = self.config.scst_xe_references
        if not count or count >= len(examples):
            return examples
        return [examples[i] for i in sorted(torch.randperm(len(examples))[:count].tolist())]

    @functools.cached_property
    def _examples_of_row(self) -> dict[int, list[int]]:
        """The training captions (example indices) of each image's feature row."""
        examples: dict[int, list[int]] = {}
        for index, row in enumerate(self.train_set.rows.tolist()):
            examples.setdefault(row, []).append(index)
        return examples

    @torch.no_grad()
    def validate(self) -> tuple[float, dict[str, float]]:
        """Dev cross-entropy per word, and greedy BLEU and CIDEr; under torchrun each process computes its share
        and every process gets the same totals. Captions go through the cross-entropy pass shortest first:
        batches of similar length step over half the padding."""
        self.decoder.eval()
        total, words, batch = 0.0, 0, self.validation_batch
        order = sorted(range(len(self.dev_set)), key=lambda index: len(self.dev_set.captions[index]))
        batches = [order[start:start + batch] for start in range(0, len(order), batch)]
        for indices in self.processes.shard(batches):
            captions = pad_captions(self.dev_set, indices).to(self.device)
            features = self._features_of_rows(self.dev_set.rows[indices])
            with autocast(self.device, self.config.amp):
                logits, _ = self.decoder(features.to(self.device), captions)
                cross_entropy = self.loss_fn(logits.reshape(-1, logits.shape[-1]).float(), captions[:, 1:].reshape(-1))
            total += float(cross_entropy)
            words += int((captions[:, 1:] != self.vocab.pad_id).sum())
        total, words = self.processes.sum(total, words)
        return total / max(words, 1), self.dev_metrics()

    def dev_metrics(self) -> dict[str, float]:
        """Greedy captions of (up to --bleu_images) dev images, scored with BLEU and CIDEr; under torchrun each
        process captions its share of the images and every process scores all of them."""
        records = self.dev_records[: self.config.bleu_images]
        mine = self.processes.shard(list(range(len(records))))
        settings = DecodeSettings("greedy", max_length=self.config.max_length, amp=self.config.amp)
        hypotheses = {}
        for start in range(0, len(mine), 250):
            keys = mine[start:start + 250]
            features = self._features_of_rows([self.store.row(records[key].image) for key in keys])
            for key, (decoded,) in zip(keys, decode(self.decoder, features, self.vocab, settings)):
                hypotheses[key] = " ".join(self.vocab.decode(decoded.tokens))
        return dev_scores(self._dev_references, self.processes.merge(hypotheses))

    @functools.cached_property
    def _dev_references(self) -> dict[int, list[str]]:
        """The cleaned references of the dev images dev_metrics() captions: the same every epoch."""
        return {key: [" ".join(clean_caption(text)) for text in record.captions]
                for key, record in enumerate(self.dev_records[: self.config.bleu_images])}

    def _features_of_rows(self, rows: list[int] | np.ndarray, train: bool = False) -> torch.Tensor:
        """Features of these images as the decoder reads them; `train` allows flipped features (with
        --augment_flip) but never gradients into the encoder."""
        if self.live is not None:
            with torch.no_grad():
                return self.live.features(list(rows), self.decoder.uses_grid, train=train)
        flip = torch.rand(len(rows)).numpy() < 0.5 if train and self.config.augment_flip else None
        return self.store.features(rows, self.decoder.uses_grid, flip).to(self.device)

    # ---- the run

    def checkpoint(self, epoch: int) -> dict:
        return {"model_config": self.model_config.to_dict(), "model": self.decoder.state_dict(),
                "vocab": self.vocab.to_dict(), "encoder": self.config.encoder,
                "encoder_settings": self.store.settings, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict() if self.schedule else None, "epoch": epoch,
                "best_metric": self.config.best_metric, "best_score": self.best_score,
                "patience_left": self.patience_left, "best_epoch": self.best_epoch, "history": self.history,
                "encoder_state": self.live.encoder.state_dict() if self.live and self.live.fine_tune else None,
                "train_config": _plain(asdict(self.config)), "rng": {"torch": torch.get_rng_state()}}

    def run(self) -> Path | None:
        """Train; returns the run directory (None on the processes other than the main one)."""
        try:
            return self._run()
        except KeyboardInterrupt:
            if self.files is not None:
                print(self.files.how_to_resume(), file=sys.stderr)
            raise
        finally:
            stop_processes()

    def _run(self) -> Path | None:
        c, main = self.config, self.processes.is_main
        if main:
            self.files = RunFiles.create(Path(c.output_dir), c.run_name())
            self.files.start(c, self.command, self.vocab, self.dataset, parent=c.resume)
        self.log(f"train {len(self.train_set)} captions / dev {len(self.dev_set)} captions; vocabulary "
                 f"{len(self.vocab)}; features {self.store.grid_shape} from {self.store.folder}"
                 + (f"; {self.processes.world_size} processes" if self.processes.distributed else ""))
        sided = sided_share(self.dataset.split("train")) if c.augment_flip or c.augment else 0.0
        if sided > SIDED_WARNING_SHARE:
            self.log(f"warning: {sided:.0%} of the training captions say 'left' or 'right', and mirrored images "
                     "(--augment_flip / --augment) make those words wrong half the time; consider leaving it out")
        ignored = ignored_options(c)
        if ignored:
            self.log(f"the {c.decoder} decoder does not read {', '.join(ignored)}: they are ignored")
        unused = unused_schedule_options(c)
        if unused:
            self.log(f"{', '.join(unused)} are ignored without --use_scheduler: the learning rate stays constant")
        unreadable = self.train_set.missing_images + self.dev_set.missing_images
        if unreadable:
            where = (f"{self.store.folder / 'manifest.json'} under 'skipped'" if self.live is None
                     else ", ".join(f"{name}: {why}" for name, why in list(self.store.skipped.items())[:5]))
            self.log(f"left out {unreadable} train/dev images the encoder could not read ({where})")
        epoch, last = self.start_epoch, c.epochs + c.scst_epochs
        while epoch <= last:
            self_critical = epoch > c.epochs
            if epoch == c.epochs + 1 and self_critical:  # entering the phase (not resuming in the middle of it)
                self._start_self_critical()
            if self_critical:
                self._set_self_critical_lr()
                train_loss, reward, speed = self.self_critical_epoch(epoch)
            else:
                (train_loss, speed), reward = self.train_epoch(epoch), None
            val_loss, scores = self.validate()
            lr = self.optimizer.param_groups[0]["lr"]
            if self.schedule is not None and not self_critical:
                self.schedule.after_epoch(val_loss)
            value = val_loss if c.best_metric == "val_loss" else scores[c.best_metric]
            improved = value < self.best_score if c.best_metric == "val_loss" else value > self.best_score
            if c.early_stopping_patience is not None:  # before the checkpoint, so a resume stops alike
                self.patience_left = c.early_stopping_patience if improved else self.patience_left - 1
            if improved:
                self.best_score, self.best_epoch = value, epoch
                if c.scst_epochs:
                    self.best_weights = {k: v.detach().clone() for k, v in self.decoder.state_dict().items()}
            entry = {"epoch": epoch, "objective": "self-critical" if self_critical else "cross-entropy",
                     "train_loss": train_loss, "val_loss": val_loss, "lr": lr, **scores, "captions_per_s": speed,
                     "peak_memory_mb": peak_memory_mb(self.device), "best": improved}
            if reward is not None:
                entry["train_CIDEr"] = reward
            self.history.append(entry)
            trained = f"reward {reward:.3f}" if reward is not None else f"train {train_loss:.3f}"
            self.log(f"Epoch {epoch}/{last}: {trained} | val {val_loss:.3f} | lr {lr:.1e} | "
                     f"BLEU-4 {scores['BLEU-4']:.3f} | CIDEr {scores['CIDEr']:.3f} | {speed:.0f} captions/s | "
                     f"{entry['peak_memory_mb']:.0f} MB" + (" | best" if improved else ""))
            if main:
                self.files.save_epoch(epoch, self.checkpoint(epoch), best=improved, keep=c.keep_checkpoints)
                self.files.write_history(self.history)
                if improved:
                    self.save_attention_pictures()
            if c.early_stopping_patience is not None:
                if self.patience_left <= 0:
                    self.log(f"early stopping: no better {c.best_metric} for {c.early_stopping_patience} epochs; "
                             f"best was epoch {self.best_epoch}")
                    if self_critical or not c.scst_epochs:
                        break
                    epoch, self.patience_left = c.epochs + 1, c.early_stopping_patience  # on to self-critical
                    continue
            epoch += 1
        if not main:
            return None
        best = self.files.best_path()
        if best.exists():
            self.decoder.load_state_dict(load_checkpoint(best)["model"])
        self.files.finish(self.history, self.best_epoch)
        self.save_attention_pictures()
        if c.show_samples:
            self.show_samples(c.show_samples)
        return self.files.folder

    @torch.no_grad()
    def save_attention_pictures(self) -> None:
        """attention_viz_sample_K.png (and advanced_...) for the first dev images, with the current weights."""
        c = self.config
        if not (c.save_attention_viz or c.advanced_attention_viz):
            return
        from captioner.images import BadImageError, open_rgb
        from captioner.visualize import save_picture, trace_caption

        self.decoder.eval()
        h, w, _ = self.store.grid_shape
        for number, record in enumerate(self.dev_records[: c.attention_viz_samples], 1):
            features = self._features_of_rows([self.store.row(record.image)])
            (decoded,) = greedy(self.decoder, features, self.vocab, c.max_length)
            trace = trace_caption(self.decoder, features[0], self.vocab, decoded.tokens, (h, w))
            try:
                image = open_rgb(record.image)
            except BadImageError as error:
                self.log(f"attention picture of {record.image_id} skipped: {error}")
                continue
            if c.save_attention_viz:
                save_picture(self.files.folder / f"attention_viz_sample_{number}.png", image, trace)
            if c.advanced_attention_viz:
                save_picture(self.files.folder / f"advanced_attention_viz_sample_{number}.png", image, trace, True)

    def log(self, line: str) -> None:
        if self.files is not None:
            self.files.log(line)

    @torch.no_grad()
    def show_samples(self, count: int) -> None:
        """Greedy captions of held-out test images (dev if there is no test split), next to their references."""
        self.decoder.eval()
        held_out = [r for r in self.dataset.split("test") or self.dataset.split("dev") if self.store.row(r.image) is not None]
        records = held_out[:count]
        if not records:
            return
        features = self._features_of_rows([self.store.row(r.image) for r in records])
        for record, decoded in zip(records, greedy(self.decoder, features, self.vocab, self.config.max_length)):
            self.log(f"{record.image_id}: {' '.join(self.vocab.decode(decoded.tokens))}")
            self.log(f"    reference: {record.captions[0]}")


def _plain(value: object) -> object:
    """Settings as builtins only, so checkpoints load with weights_only=True."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)

