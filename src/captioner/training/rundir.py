"""A run directory: named from its settings and a timestamp, never overwritten, with everything a reader needs."""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict
from pathlib import Path

from captioner.io import atomic_write_bytes, atomic_write_text
from captioner.models.checkpoint import load_checkpoint, save_checkpoint


class RunFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def create(cls, output_dir: Path, name: str) -> RunFiles:
        stamp = time.strftime("%Y%m%d_%H%M%S")
        output_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            folder = output_dir / (f"{name}_{stamp}" + (f"_{attempt}" if attempt else ""))
            try:
                folder.mkdir()
                return cls(folder)
            except FileExistsError:
                continue
        raise RuntimeError(f"cannot create a new run directory in {output_dir}")

    def log(self, line: str) -> None:
        print(line, flush=True)
        with open(self.folder / "train.log", "a") as handle:
            handle.write(line + "\n")

    def start(self, config, command: list[str], vocab, dataset, parent: str | None) -> None:
        settings = json.loads(json.dumps(asdict(config), default=str))
        settings["parent_checkpoint"] = parent
        atomic_write_text(self.folder / "run_config.json", json.dumps(settings, indent=2))
        vocab.save(self.folder / "vocab.json")
        self.command = " ".join(shlex.quote(part) for part in ["captioner", *command[1:]])
        self.dataset_line = (f"{dataset.name}: {len(dataset.records)} images, splits {dataset.split_sizes()}; "
                             f"{dataset.report.summary()}")
        self.parent = parent
        self._write_summary([], 0)

    def save_epoch(self, epoch: int, checkpoint: dict, best: bool, keep: int) -> None:
        save_checkpoint(self.epoch_path(epoch), checkpoint)
        if best:
            save_checkpoint(self.best_path(), checkpoint)
        epochs = self._saved_epochs()
        for old in epochs[:-keep] if keep > 0 else []:
            self.epoch_path(old).unlink(missing_ok=True)

    def how_to_resume(self) -> str:
        """For an interrupted run: what it kept, and the command that goes on from there."""
        epochs = self._saved_epochs()
        if not epochs:
            return f"no epoch of {self.folder} was finished; nothing to resume"
        return (f"{self.folder} keeps epochs up to {epochs[-1]}; go on with: captioner train --resume "
                f"{self.epoch_path(epochs[-1])}")

    def _saved_epochs(self) -> list[int]:
        return sorted(int(p.stem.rsplit("_", 1)[1]) for p in self.folder.glob("model_epoch_*.pt"))

    def best_path(self) -> Path:
        return self.folder / "best.pt"

    def epoch_path(self, epoch: int) -> Path:
        return self.folder / f"model_epoch_{epoch}.pt"

    def parent_checkpoint(self) -> str | None:
        """The checkpoint this run resumed from, as run_config.json records it (None if none or unreadable)."""
        try:
            return json.loads((self.folder / "run_config.json").read_text()).get("parent_checkpoint")
        except (OSError, ValueError, AttributeError):
            return None

    def write_history(self, history: list[dict]) -> None:
        curve = [{k: entry[k] for k in ("epoch", "train_loss", "val_loss", "lr")} for entry in history]
        atomic_write_text(self.folder / "loss_curve.json", json.dumps(curve, indent=1))
        atomic_write_text(self.folder / "metrics_history.json", json.dumps(history, indent=1))

    def finish(self, history: list[dict], best_epoch: int) -> None:
        self._plots(history)
        self._write_summary(history, best_epoch)

    def _write_summary(self, history: list[dict], best_epoch: int) -> None:
        lines = ["captioner training run", "", f"reproduce:  {self.command}", f"data:       {self.dataset_line}"]
        if self.parent:
            lines.append(f"resumed from {self.parent}")
        if history:
            best = next((e for e in history if e["epoch"] == best_epoch), history[-1])
            lines += [f"epochs run: {history[0]['epoch']}..{history[-1]['epoch']}",
                      f"best epoch: {best_epoch} (val loss {best['val_loss']:.4f}, dev BLEU-4 {best['BLEU-4']:.4f}, "
                      f"dev CIDEr {best.get('CIDEr', math.nan):.4f})",
                      f"best model: {self.best_path()}", ""]
            # a self-critical epoch's training loss is a policy-gradient loss, not a cross-entropy: say which
            lines += [f"epoch {e['epoch']:3d}  train {e['train_loss']:.4f}  val {e['val_loss']:.4f}  lr {e['lr']:.2e}"
                      f"  BLEU-1 {e['BLEU-1']:.3f}  BLEU-4 {e['BLEU-4']:.3f}  CIDEr {e.get('CIDEr', math.nan):.3f}"
                      f"  {e['captions_per_s']:.0f} captions/s"
                      + ("  (self-critical)" if e.get("objective") == "self-critical" else "")
                      for e in history]
        atomic_write_text(self.folder / "run_summary.txt", "\n".join(lines) + "\n")

    def _plots(self, history: list[dict]) -> None:
        if not history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [e["epoch"] for e in history]
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(epochs, [e["train_loss"] for e in history], "o-", label="train")
        axis.plot(epochs, [e["val_loss"] for e in history], "o-", label="validation (dev)")
        axis.set(xlabel="epoch", ylabel="cross-entropy per word", title="Training and validation loss")
        axis.legend()
        axis.grid(alpha=0.3)
        figure.tight_layout()
        _save_figure(figure, self.folder / "training_losses.png")
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(epochs, [e["lr"] for e in history], "o-")
        axis.set(xlabel="epoch", ylabel="learning rate", title="Learning rate", yscale="log")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        _save_figure(figure, self.folder / "learning_rate.png")


def _save_figure(figure, path: Path) -> None:
    """Render in memory, then write atomically: a kill mid-save never leaves a truncated PNG."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files (`.NAME.XXXX.tmp`) of atomic writes that a killed run left in its folder;
    the files they were to replace are whole (the old version) or absent."""
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def checkpoint_of_epoch(run_folder: Path, epoch: int) -> dict | None:
    """The checkpoint of an epoch of this run, or of the run it resumed from, and so on: best.pt if that is the
    epoch's (later epochs may have replaced it), else model_epoch_N.pt; None if none holds it."""
    folder, seen = run_folder, set()
    while folder not in seen:
        seen.add(folder)
        run = RunFiles(folder)
        for candidate in (run.best_path(), run.epoch_path(epoch)):
            if candidate.exists():
                checkpoint = load_checkpoint(candidate)
                if checkpoint["epoch"] == epoch:
                    return checkpoint
        parent = run.parent_checkpoint()
        if not parent:
            return None
        folder = Path(parent).parent
    return None
