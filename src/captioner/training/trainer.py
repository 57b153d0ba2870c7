"""The Trainer: epochs of cross-entropy, then of self-critical training, validation, early stopping and
checkpoints. It is handed its parts (decoder, data, features, optimizer, objectives: see setup.py, which builds
them from a TrainConfig), so one training step can be run and tested on its own."""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from captioner.data.concepts import ConceptVocabulary
from captioner.data.vocab import Vocabulary
from captioner.decoding.settings import DecodeSettings
from captioner.devices import autocast
from captioner.features.live import LiveFeatures
from captioner.features.source import FeatureSource
from captioner.features.store import FeatureStore
from captioner.models.checkpoint import load_checkpoint, save_checkpoint
from captioner.models.decoders import Decoder, DecoderConfig
from captioner.models.embedding import EmbeddingConfig, build_embedding, sentence_config
from captioner.progress import progress
from captioner.training import samples, validation
from captioner.training.batches import (
    TrainingData,
    bucketed_batches,
    image_batches,
    image_shares,
    one_view_per_image,
    pad_captions,
)
from captioner.training.concept_stage import train_concept_head
from captioner.training.config import (
    SIDED_WARNING_SHARE,
    TrainConfig,
    ignored_options,
    plain_settings,
    sided_share,
    unused_schedule_options,
)
from captioner.training.distributed import Processes, stop_processes
from captioner.training.embedding_stage import train_embedding
from captioner.training.encoder_tuning import TunedEncoder
from captioner.training.learning_blocks import LearningBlocks
from captioner.training.objectives import ConceptLoss, CrossEntropy, ReferenceCrossEntropy
from captioner.training.rundir import RunFiles
from captioner.training.schedulers import Schedule
from captioner.training.self_critical import SelfCritical
from captioner.training.self_critical_phase import SelfCriticalPhase


class Trainer(SelfCriticalPhase):
    def __init__(self, config: TrainConfig, decoder: Decoder, model_config: DecoderConfig, vocab: Vocabulary,
                 data: TrainingData, features: FeatureSource, optimizer: torch.optim.Optimizer,
                 schedule: Schedule | None, objective: CrossEntropy, self_critical: SelfCritical | None = None,
                 processes: Processes | None = None, device: torch.device | None = None,
                 command: list[str] | None = None, concepts: ConceptVocabulary | None = None,
                 concept_loss: ConceptLoss | None = None, tuned: TunedEncoder | None = None,
                 learning: LearningBlocks | None = None) -> None:
        self.config, self.decoder, self.model_config, self.vocab = config, decoder, model_config, vocab
        self.tuned = tuned  # the encoder's tuned blocks (--tune_encoder_epochs), kept in every checkpoint
        self.learning = learning  # those blocks learning (--xe_encoder_lr, --scst_encoder_lr)
        self.blocks_learning = False  # in the epoch under way
        self.data, self.features, self.optimizer, self.schedule = data, features, optimizer, schedule
        self.objective, self.self_critical = objective, self_critical
        self.concepts, self.concept_loss = concepts, concept_loss
        self.references = (ReferenceCrossEntropy(objective, data.train, config.scst_xe_references)
                           if config.scst_xe_weight else None)
        self.processes = processes or Processes()
        self.device = device or torch.device("cpu")
        self.command = command or sys.argv
        self.model: nn.Module = decoder  # what the training step calls: the decoder, or its DDP wrapper
        self.start_epoch, self.best_epoch, self.history = 1, 0, []
        self.concept_history: list[dict] = []  # --concept_epochs: the head's own stage
        self.best_score = math.inf if config.best_metric == "val_loss" else -math.inf
        self.best_weights: dict | None = None  # in memory, for the switch to self-critical training
        self.best_tuned: TunedEncoder | None = None  # and the blocks they were trained with, if those learn
        self.patience_left = config.early_stopping_patience
        self.files: RunFiles | None = None  # created by run(), on the main process only
        self._dev_references = validation.cleaned_references(data.dev_records[: config.bleu_images])

    @property
    def live(self) -> LiveFeatures | None:
        """The encoder run on images at every step, when fine-tuning or augmenting; None with the cache."""
        return self.features if isinstance(self.features, LiveFeatures) else None

    def wrap_for_processes(self) -> None:
        """DistributedDataParallel around the decoder under torchrun."""
        if self.processes.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.decoder, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ---- one step, one epoch

    def _batches(self, epoch: int) -> tuple[list[list[int]], torch.Generator]:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        lengths = [len(caption) for caption in self.data.train.captions]
        if self.blocks_learning:  # the blocks run once per image of a batch: its captions share one
            return image_batches(self.data.train.rows, lengths, self.config.batch_size, generator), generator
        return bucketed_batches(lengths, self.config.batch_size, generator), generator

    def train_step(self, indices: list[int], generator: torch.Generator) -> tuple[float, int]:
        """One optimizer step on a global batch; returns this process's summed cross-entropy and word count."""
        train = self.data.train
        flip = (torch.rand(len(indices), generator=generator) < 0.5).numpy() if self.config.augment_flip else None
        total_words = sum(len(train.captions[i]) - 1 for i in indices)
        if self.blocks_learning:  # each image to one process, in one view: the blocks run once for it
            flip = one_view_per_image(train.rows[indices], flip)
            local = image_shares(train.rows[indices], self.processes.world_size)[self.processes.rank]
        else:
            local = self.processes.shard(list(range(len(indices))))
        mine = [indices[i] for i in local]
        flip = flip[local] if flip is not None else None
        if self.blocks_learning:
            features = self.learning.caption_features(train.rows[mine], self.decoder.uses_grid, flip=flip)
        else:
            features = self.features.features(train.rows[mine], self.decoder.uses_grid, flip=flip, train=True)
        features, captions = features.to(self.device), pad_captions(train, mine).to(self.device)
        with autocast(self.device, self.config.amp):
            loss, cross_entropy = self.objective(self.model, features, captions, total_words, len(indices),
                                                 self.processes.world_size)
            if self.concept_loss is not None:  # the head's own loss, on this process's share, weighted by its size
                share = len(mine) * self.processes.world_size / len(indices)  # so the processes' mean is the batch's
                loss = loss + share * self.concept_loss(self.decoder, features, train.rows[mine])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        encoder_parameters = (self.live.parameters() if self.live is not None
                              else self.learning.parameters() if self.blocks_learning else [])
        self.processes.average_gradients(encoder_parameters)  # DDP wraps the decoder only
        if self.config.clip_norm:  # the concept head apart: its gradients leave the captions' clipping as it was
            nn.utils.clip_grad_norm_([*self.decoder.caption_parameters(), *encoder_parameters], self.config.clip_norm)
            if self.decoder.concept_head is not None:
                nn.utils.clip_grad_norm_(self.decoder.concept_head.parameters(), self.config.clip_norm)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.after_batch()
        return float(cross_entropy), int((captions[:, 1:] != self.vocab.pad_id).sum())

    def _set_xe_encoder_lr(self, epoch: int) -> bool:
        """--xe_encoder_lr scaled as the schedule has scaled the decoder's rate by now; whether the blocks learn in
        this cross-entropy epoch."""
        c = self.config
        if self.learning is None or not c.xe_encoder_lr or epoch < c.xe_encoder_from:
            return False
        self.add_encoder_group()
        self.encoder_group()["lr"] = c.xe_encoder_lr * (self.optimizer.param_groups[0]["lr"] / c.learning_rate)
        return True

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """Mean cross-entropy per word over the epoch, and captions per second (all processes together)."""
        self.model.train()
        batches, generator = self._batches(epoch)
        total, words, captions_seen, started = 0.0, 0, 0, time.perf_counter()
        bar = progress(batches, desc=f"epoch {epoch}", unit="batch", enabled=self.processes.is_main, leave=False)
        for indices in bar:
            shares = len(np.unique(self.data.train.rows[indices])) if self.blocks_learning else len(indices)
            if shares < self.processes.world_size:
                continue  # a global batch too small to give every process a caption (an image, if blocks learn)
            cross_entropy, count = self.train_step(indices, generator)
            total += cross_entropy
            words += count
            captions_seen += len(indices)
            speed = captions_seen / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{cross_entropy / max(count, 1):.3f}", captions_s=f"{speed:.0f}")
        total, words = self.processes.sum(total, words)
        return total / max(words, 1), captions_seen / (time.perf_counter() - started)

    @property
    def dev_decoding(self) -> DecodeSettings:
        """How the dev captions that pick best.pt are decoded: as the preset recommends, unless asked greedy;
        without mirrored features in the cache, without averaging over them."""
        c = self.config
        settings = validation.dev_settings(c.decoding if c.dev_decoding == "recommended" else None, c.max_length,
                                           c.amp)
        if settings.flip_average and self.live is None and not self.features.settings.get("flip"):
            settings = dataclasses.replace(settings, flip_average=False)
        return settings

    def validate(self) -> tuple[float, dict[str, float]]:
        """Dev cross-entropy per word, and BLEU and CIDEr of the dev captions."""
        c, settings = self.config, self.dev_decoding
        loss = validation.dev_loss(self.decoder, self.data.dev, self._features_of_rows, self.objective,
                                   self.processes, self.device, c.amp)

        def features_of_rows(rows) -> torch.Tensor:
            if not settings.flip_average:
                return self._features_of_rows(rows)
            return self.features.both_views(rows, self.decoder.uses_grid).to(self.device)

        records, row_of = self.data.dev_records[: c.bleu_images], lambda record: self.features.row(record.image)
        scores = validation.dev_metrics(self.decoder, records, row_of, features_of_rows, self.vocab,
                                        self._dev_references, self.processes, settings)
        return loss, scores

    def _features_of_rows(self, rows: list[int] | np.ndarray, train: bool = False) -> torch.Tensor:
        """Features of these images as the decoder reads them; `train` allows flipped features (with
        --augment_flip) and augmentation, but never gradients into the encoder."""
        flip = torch.rand(len(rows)).numpy() < 0.5 if train and self.config.augment_flip else None
        with torch.no_grad():
            return self.features.features(rows, self.decoder.uses_grid, flip=flip, train=train).to(self.device)

    # ---- the run

    def checkpoint(self, epoch: int) -> dict:
        live = self.live
        return {"model_config": self.model_config.to_dict(), "model": self.decoder.state_dict(),
                "vocab": self.vocab.to_dict(), "encoder": self.config.encoder,
                "encoder_settings": self.features.settings, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict() if self.schedule else None, "epoch": epoch,
                "best_metric": self.config.best_metric, "best_score": self.best_score,
                "patience_left": self.patience_left, "best_epoch": self.best_epoch, "history": self.history,
                "encoder_state": live.encoder.state_dict() if live and live.fine_tune else None,
                "train_config": plain_settings(self.config), "rng": {"torch": torch.get_rng_state()},
                "concepts": self.concepts.to_dict() if self.concepts is not None else None,
                "concept_history": self.concept_history,
                "tuned_encoder": self.tuned.to_dict() if self.tuned is not None else None}

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
            self.files.start(c, self.command, self.vocab, self.data.dataset, parent=c.resume)
        self._say_what_runs()
        if self.start_epoch == 1 and c.concept_epochs:
            self.train_concept_head()
        epoch, last = self.start_epoch, c.epochs + c.scst_epochs
        while epoch <= last:
            self_critical = epoch > c.epochs
            if epoch == c.epochs + 1 and self_critical:  # entering the phase (not resuming in the middle of it)
                self._start_self_critical()
            if self_critical:
                self._set_self_critical_lr()
                self.blocks_learning = self.learning is not None and c.scst_encoder_lr > 0
                train_loss, reward, speed = self.self_critical_epoch(epoch)
            else:
                self.blocks_learning = self._set_xe_encoder_lr(epoch)
                (train_loss, speed), reward = self.train_epoch(epoch), None
            if self.blocks_learning:  # the dev captions and the checkpoint read the blocks as they are now
                self.features, self.tuned = self.learning.settle(self.log)
            val_loss, scores = self.validate()
            improved = self._after_epoch(epoch, self_critical, train_loss, reward, speed, val_loss, scores)
            if main:
                self.files.save_epoch(epoch, self.checkpoint(epoch), best=improved, keep=c.keep_checkpoints)
                self.files.write_history(self.history)
                if improved:
                    self.save_attention_pictures()
            if c.early_stopping_patience is not None and self.patience_left <= 0:
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
            kept = load_checkpoint(best)
            self.decoder.load_state_dict(kept["model"])
            if self.learning is not None:  # and the features of its epoch's blocks, for what trains after it
                self.features = FeatureStore.open(Path(kept["tuned_encoder"]["cache_dir"]))
        self.files.finish(self.history, self.best_epoch)
        self.save_attention_pictures()
        if c.embedding_epochs:
            if not best.exists():  # no caption epochs (--epochs 0): an embedding for the model as it came
                save_checkpoint(best, self.checkpoint(self.start_epoch - 1))
            self.train_embedding(best)
        if c.show_samples:
            held_out = self.data.dataset.split("test") or self.data.dataset.split("dev")
            samples.show_samples(self.decoder, held_out, c.show_samples, self.features, self._features_of_rows,
                                 self.vocab, c.max_length, self.log)
        return self.files.folder

    def train_concept_head(self) -> None:
        c, train, dev = self.config, self.data.train, self.data.dev
        self.concept_history = train_concept_head(
            self.decoder, self.features, self.concept_loss, np.unique(train.rows), np.unique(dev.rows),
            c.concept_epochs, c.concept_lr, flip=c.augment_flip, seed=c.seed, device=self.device, amp=c.amp,
            log=self.log)

    def train_embedding(self, best: Path) -> None:
        """The text-image embedding, saved into best.pt beside the decoder; a word-reading one starts from the
        decoder's word embeddings."""
        c = self.config
        words = getattr(self.decoder, "embed", None)
        word_dim = words.weight.shape[1] if isinstance(words, nn.Embedding) else 512
        sizes = {"feature_dim": self.features.grid_shape[2], "vocab_size": len(self.vocab), "word_dim": word_dim,
                 "pad_id": self.vocab.pad_id, "dropout": c.embedding_dropout, "members": c.embedding_members}
        config = sentence_config(**sizes) if c.embedding_text == "sentence" else EmbeddingConfig(**sizes)
        embedding = build_embedding(config).to(self.device)
        if config.text == "words" and isinstance(words, nn.Embedding):
            for member in getattr(embedding, "members", [embedding]):
                member.words.weight.data.copy_(words.weight.detach().float())
        history = train_embedding(embedding, self.features, self.data.train, self.data.dev, c.embedding_epochs,
                                  c.embedding_lr, use_grid=self.decoder.uses_grid, flip=c.augment_flip, seed=c.seed,
                                  device=self.device, log=self.log)
        checkpoint = load_checkpoint(best)
        checkpoint["embedding"] = {"config": config.to_dict(), "state": embedding.state_dict(), "history": history}
        save_checkpoint(best, checkpoint)

    def _after_epoch(self, epoch: int, self_critical: bool, train_loss: float, reward: float | None, speed: float,
                     val_loss: float, scores: dict[str, float]) -> bool:
        """Schedule, best score, patience and history after an epoch; its line in the log. Whether it is the best."""
        c = self.config
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
                self.best_tuned = self.tuned
        entry = {"epoch": epoch, "objective": "self-critical" if self_critical else "cross-entropy",
                 "train_loss": train_loss, "val_loss": val_loss, "lr": lr, **scores, "captions_per_s": speed,
                 "peak_memory_mb": peak_memory_mb(self.device), "best": improved}
        if reward is not None:
            entry["train_CIDEr"] = reward
        self.history.append(entry)
        trained = f"reward {reward:.3f}" if reward is not None else f"train {train_loss:.3f}"
        self.log(f"Epoch {epoch}/{c.epochs + c.scst_epochs}: {trained} | val {val_loss:.3f} | lr {lr:.1e} | "
                 f"BLEU-4 {scores['BLEU-4']:.3f} | CIDEr {scores['CIDEr']:.3f} | {speed:.0f} captions/s | "
                 f"{entry['peak_memory_mb']:.0f} MB" + (" | best" if improved else ""))
        return improved

    def _say_what_runs(self) -> None:
        c, data = self.config, self.data
        self.log(f"train {len(data.train)} captions / dev {len(data.dev)} captions; vocabulary "
                 f"{len(self.vocab)}; features {self.features.grid_shape} from {self.features.description}"
                 + (f"; {self.processes.world_size} processes" if self.processes.distributed else ""))
        sided = sided_share(data.dataset.split("train")) if c.augment_flip or c.augment else 0.0
        if sided > SIDED_WARNING_SHARE:
            self.log(f"warning: {sided:.0%} of the training captions say 'left' or 'right', and mirrored images "
                     "(--augment_flip / --augment) make those words wrong half the time; consider leaving it out")
        self.log(f"dev captions ({c.best_metric if c.best_metric != 'val_loss' else 'BLEU-4 and CIDEr'}): "
                 f"{self.dev_decoding.describe()}")
        ignored = ignored_options(c)
        if ignored:
            self.log(f"the {c.decoder} decoder does not read {', '.join(ignored)}: they are ignored")
        if c.scst_encoder_lr and self.learning is None:  # the preset sets it; --tune_encoder_epochs 0 leaves no blocks
            self.log("--scst_encoder_lr is ignored: it trains a tuned encoder's blocks in the self-critical epochs, "
                     "and this run has " + ("no tuned encoder" if self.tuned is None else "no self-critical epochs"))
        if c.xe_encoder_lr and self.learning is None:
            self.log("--xe_encoder_lr is ignored: it trains a tuned encoder's blocks, and this run has none")
        elif c.xe_encoder_lr and max(c.xe_encoder_from, self.start_epoch) <= c.epochs:  # epochs left to run
            self.log(f"{self.learning.description} learn in cross-entropy epochs "
                     f"{max(c.xe_encoder_from, self.start_epoch)}-{c.epochs} too, at {c.xe_encoder_lr:.0e} x the "
                     "schedule's share of --learning_rate")
        unused = unused_schedule_options(c)
        if unused:
            self.log(f"{', '.join(unused)} are ignored without --use_scheduler: the learning rate stays constant")
        unreadable = data.train.missing_images + data.dev.missing_images
        if unreadable:
            where = (f"{Path(self.features.description) / 'manifest.json'} under 'skipped'" if self.live is None
                     else ", ".join(f"{name}: {why}" for name, why in list(self.features.skipped.items())[:5]))
            self.log(f"left out {unreadable} train/dev images the encoder could not read ({where})")

    def save_attention_pictures(self) -> None:
        c = self.config
        if c.save_attention_viz or c.advanced_attention_viz:
            samples.save_attention_pictures(self.decoder, self.data.dev_records[: c.attention_viz_samples],
                                            self.features, self._features_of_rows, self.vocab, self.files.folder,
                                            c.max_length, c.save_attention_viz, c.advanced_attention_viz, self.log)

    def log(self, line: str) -> None:
        if self.files is not None:
            self.files.log(line)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

