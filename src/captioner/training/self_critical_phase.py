"""The self-critical epochs of a Trainer (--scst_epochs): entering them from the best cross-entropy weights, their
learning rates, and one step and one epoch of them; with --scst_encoder_lr, the tuned encoder's blocks learn
in them too (training/learning_blocks.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from captioner.devices import autocast
from captioner.features.source import FeatureSource
from captioner.models.decoders import Decoder
from captioner.progress import progress
from captioner.training.config import TrainConfig
from captioner.training.distributed import Processes
from captioner.training.encoder_tuning import TunedEncoder
from captioner.training.learning_blocks import LearningBlocks
from captioner.training.objectives import ReferenceCrossEntropy
from captioner.training.self_critical import SelfCritical

ENCODER_GROUP = "learning encoder blocks"  # the optimizer's parameter group of --xe_encoder_lr, --scst_encoder_lr


class SelfCriticalPhase:
    """Mixed into Trainer, whose attributes these are."""

    config: TrainConfig
    decoder: Decoder
    model: nn.Module
    optimizer: torch.optim.Optimizer
    self_critical: SelfCritical | None
    references: ReferenceCrossEntropy | None
    learning: LearningBlocks | None
    blocks_learning: bool
    processes: Processes
    device: torch.device
    history: list[dict]
    best_weights: dict | None
    best_tuned: TunedEncoder | None
    tuned: TunedEncoder | None
    features: FeatureSource
    best_epoch: int
    _features_of_rows: Callable[..., torch.Tensor]
    log: Callable[[str], None]

    def self_critical_step(self, rows: list[int]) -> tuple[float, float]:
        """One optimizer step of self-critical training on these images; returns the loss and the mean reward."""
        if self.blocks_learning:
            flip = torch.rand(len(rows)).numpy() < 0.5 if self.config.augment_flip else None
            features = self.learning.features(rows, self.decoder.uses_grid, flip=flip).to(self.device)
        else:
            features = self._features_of_rows(rows, train=True)
        with autocast(self.device, self.config.amp):
            loss, reward = self.self_critical.loss(self.decoder, features, rows, self.config.max_length)
            if self.references is not None:
                loss = loss + self.config.scst_xe_weight * self.references(self.model, features, rows)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_norm:
            blocks = self.learning.parameters() if self.blocks_learning else []
            nn.utils.clip_grad_norm_([*self.decoder.caption_parameters(), *blocks], self.config.clip_norm)
        self.optimizer.step()
        return float(loss.detach()), reward

    def self_critical_epoch(self, epoch: int) -> tuple[float, float, float]:
        """One epoch of self-critical training: mean loss, mean reward (CIDEr-D of the samples), captions/s."""
        self.model.train()
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        images_per_batch = max(1, self.config.batch_size // self.config.scst_samples)
        batches = self.self_critical.batches(images_per_batch * self.processes.world_size, generator)
        total_loss, total_reward, count, started = 0.0, 0.0, 0, time.perf_counter()
        bar = progress(batches, desc=f"epoch {epoch} (self-critical)", unit="batch", enabled=self.processes.is_main,
                       leave=False)
        for rows in bar:
            mine = self.processes.shard(rows)
            if not mine:
                continue
            loss, reward = self.self_critical_step(mine)
            total_loss += loss * len(mine)
            total_reward += reward * len(mine)
            count += len(mine)
            bar.set_postfix(cider=f"{reward:.3f}")
        total_loss, total_reward, count = self.processes.sum(total_loss, total_reward, count)
        speed = count * self.config.scst_samples / (time.perf_counter() - started)
        return total_loss / max(count, 1), total_reward / max(count, 1), speed

    def _set_self_critical_lr(self) -> None:
        """--scst_lr x --scst_lr_decay per self-critical epoch already in the history, so that a resumed or
        continued run goes on where it stopped."""
        c = self.config
        done = sum(entry.get("objective") == "self-critical" for entry in self.history)
        for group in self.optimizer.param_groups:
            rate = c.scst_encoder_lr if group.get("name") == ENCODER_GROUP else c.scst_lr
            group["lr"] = rate * c.scst_lr_decay ** done

    def encoder_group(self) -> dict | None:
        """The optimizer's parameter group of the learning blocks, once they have learned."""
        return next((group for group in self.optimizer.param_groups if group.get("name") == ENCODER_GROUP), None)

    def add_encoder_group(self) -> None:
        """The learning blocks' parameters join the optimizer when they first learn (once)."""
        if self.learning is not None and self.encoder_group() is None:
            self.optimizer.add_param_group({"params": self.learning.parameters(), "lr": self.config.scst_encoder_lr,
                                            "name": ENCODER_GROUP})

    def _start_self_critical(self) -> None:
        """Continue from the best (or, with --scst_from last, the last) cross-entropy weights with a fresh optimizer
        state, at a small learning rate."""
        c = self.config
        from_best = c.scst_from == "best"
        if from_best:
            if self.best_weights is not None:
                self.decoder.load_state_dict(self.best_weights)
            if self.learning is not None and self.best_tuned is not None and (
                    self.best_tuned.weights_sha256 != self.learning.tuned.weights_sha256):
                self.features = self.learning.restore(self.best_tuned, self.log)
                self.tuned = self.learning.tuned
                self.log(f"{self.learning.description} back as the best cross-entropy epoch "
                         f"{self.best_epoch} left them")
        self.optimizer.state.clear()
        self.add_encoder_group()
        reward = f"CIDEr-D + {c.scst_bleu_weight:g} x BLEU-4" if c.scst_bleu_weight else "CIDEr-D"
        references = (f"{c.scst_xe_references} reference(s) per image drawn at random" if c.scst_xe_references
                      else "the references")
        mixed = f", plus {c.scst_xe_weight:g} x the cross-entropy of {references}" if c.scst_xe_weight else ""
        start = (f"the best cross-entropy epoch {self.best_epoch}" if from_best and self.best_epoch
                 else f"the last cross-entropy epoch {self.history[-1]['epoch']}" if self.history
                 else "the weights it started from")
        self.log(f"self-critical training ({reward} reward, {c.scst_samples} samples per image{mixed}) from {start}, "
                 f"learning rate {c.scst_lr:.0e}"
                 + (f", x {c.scst_lr_decay:g} after each epoch" if c.scst_lr_decay != 1 else "")
                 + (f"; {self.learning.description} learn too, at {c.scst_encoder_lr:.0e}"
                    if self.learning is not None and c.scst_encoder_lr else ""))
