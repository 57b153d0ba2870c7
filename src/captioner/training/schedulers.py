"""The six learning-rate schedules of `--use_scheduler --scheduler_type ...`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler

from captioner.options import option

SCHEDULER_TYPES = ("reduce_lr_on_plateau", "step", "cosine", "exponential", "one_cycle", "keep_then_decay")
GROUP = "learning-rate schedule"


@dataclass
class ScheduleSettings:
    scheduler_type: str = option("reduce_lr_on_plateau", choices=SCHEDULER_TYPES, group=GROUP)
    scheduler_patience: int = option(2, low=0, group=GROUP)
    scheduler_factor: float = option(0.5, above=0, group=GROUP)
    scheduler_step_size: int = option(5, low=1, group=GROUP)
    scheduler_gamma: float = option(0.8, above=0, group=GROUP)
    scheduler_t_max: int | None = option(None, "cosine period in epochs (default: --epochs)", low=1, group=GROUP)
    min_lr: float = option(0.0, low=0, group=GROUP)
    warmup_epochs: int = option(1, "one_cycle: epochs of rising learning rate", low=0, group=GROUP)
    keep_epochs: int = option(5, "keep_then_decay: epochs at the initial rate", low=1, group=GROUP)


class Schedule:
    """Wraps a torch scheduler and knows when to step it: per batch (one_cycle) or per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: ScheduleSettings, epochs: int,
                 steps_per_epoch: int) -> None:
        name = settings.scheduler_type
        self.name = name
        self.per_batch = name == "one_cycle"
        if name == "reduce_lr_on_plateau":
            self.scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=settings.scheduler_factor,
                                                            patience=settings.scheduler_patience,
                                                            min_lr=settings.min_lr)
        elif name == "step":
            self.scheduler = lr_scheduler.StepLR(optimizer, settings.scheduler_step_size, settings.scheduler_gamma)
        elif name == "cosine":
            self.scheduler = lr_scheduler.CosineAnnealingLR(optimizer, settings.scheduler_t_max or epochs,
                                                            eta_min=settings.min_lr)
        elif name == "exponential":
            self.scheduler = lr_scheduler.ExponentialLR(optimizer, settings.scheduler_gamma)
        elif name == "one_cycle":
            base = optimizer.param_groups[0]["lr"]
            self.scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=base, epochs=epochs,
                                                     steps_per_epoch=steps_per_epoch,
                                                     pct_start=min(0.9, max(settings.warmup_epochs, 1e-3) / epochs))
        elif name == "keep_then_decay":
            keep = settings.keep_epochs
            self.scheduler = lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9 ** max(0, epoch - keep + 1))
        else:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_TYPES)}")

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.per_batch:
            return
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        state = self.scheduler.state_dict()
        state.pop("lr_lambdas", None)  # LambdaLR: the lambda is rebuilt from the settings, not pickled
        return state

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
