"""torchrun with two CPU processes trains and validates the same model as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import captioner.training.distributed as distributed
from captioner.data.shapes import generate_shapes
from captioner.models.checkpoint import load_checkpoint
from captioner.training.distributed import Processes, collective_device


def train_command(data: Path, tmp_path: Path, output: str, decoder: str = "attention") -> list[str]:
    return ["train", "--dataset_type", "shapes", "--data_dir", str(data), "--encoder", "tiny_random",
            "--cache_dir", str(tmp_path / "cache"), "--decoder", decoder, "--embed_size", "16",
            "--hidden_size", "16", "--attention_dim", "16", "--drop_prob", "0", "--epochs", "2",
            "--batch_size", "16", "--learning_rate", "3e-3", "--freq_threshold", "1", "--no_amp",
            "--use_scheduler", "--scheduler_type", "cosine", "--output_dir", str(tmp_path / output)]


def only_run(folder: Path) -> Path:
    (run,) = list(folder.iterdir())
    return run


@pytest.mark.parametrize("decoder", ["attention", pytest.param("transformer", marks=pytest.mark.slow)])
def test_two_processes_match_one(tmp_path: Path, decoder: str) -> None:
    data = generate_shapes(tmp_path / "shapes", num_images=60, seed=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--num_heads", "4"] if decoder == "transformer" else []
    single = subprocess.run([sys.executable, "-m", "captioner", *train_command(data, tmp_path, "one", decoder), *extra],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "captioner", *train_command(data, tmp_path, "two", decoder), *extra],
                              capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr
    assert "2 processes" in launched.stdout
    one, two = only_run(tmp_path / "one"), only_run(tmp_path / "two")  # only rank 0 wrote a run directory
    first, second = (json.loads((run / "metrics_history.json").read_text()) for run in (one, two))
    # validation is sharded too: each process scores its share of the dev captions and greedy-captions its share
    # of the dev images; the totals and the scores over all of them are the single process's
    for name in ("train_loss", "val_loss", "lr", "BLEU-4", "CIDEr"):
        assert [e[name] for e in second] == [pytest.approx(e[name], rel=1e-4) for e in first], name
    weights_one, weights_two = (load_checkpoint(run / "model_epoch_2.pt")["model"] for run in (one, two))
    for name, value in weights_one.items():
        # summation order differs across processes; Adam turns those float roundings of near-zero gradients
        # into steps of up to ~1e-4, so the weights agree to that, not bit for bit
        kept = attention_key_bias_left_out(name, value)
        torch.testing.assert_close(weights_two[name][kept], value[kept], atol=3e-4, rtol=1e-3, msg=name)


def attention_key_bias_left_out(name: str, value: torch.Tensor) -> torch.Tensor:
    """All of a tensor but the transformer's key biases: softmax ignores a shift shared by every key, so their
    gradient is zero in exact arithmetic and all Adam ever sees of it is rounding noise, which it scales up to
    full-size steps that differ from one summation order to another."""
    kept = torch.ones_like(value, dtype=torch.bool)
    if name.endswith("self_qkv.bias"):  # queries, keys, values
        third = value.shape[0] // 3
        kept[third:2 * third] = False
    elif name.endswith("cross_kv.bias"):  # keys, values
        kept[: value.shape[0] // 2] = False
    return kept


def test_collectives_use_the_device_the_backend_takes(monkeypatch) -> None:
    """NCCL only takes CUDA tensors: sums of numbers (losses, word counts) must be put on this process's GPU."""
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(distributed.torch.cuda, "current_device", lambda: 1)
    assert collective_device() == torch.device("cuda", 1)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    assert collective_device() == torch.device("cpu")


def test_merged_shares_are_in_key_order(monkeypatch) -> None:
    """As one process would hold them, so that scores averaged over the dict add up in the same order."""
    def all_gather_object(parts: list, part: dict) -> None:
        parts[:] = [part, {1: "b", 3: "d"}]

    monkeypatch.setattr(distributed.dist, "all_gather_object", all_gather_object)
    merged = Processes(rank=0, world_size=2).merge({0: "a", 2: "c", 4: "e"})
    assert list(merged.items()) == [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]


@pytest.mark.slow  # two runs, one of them under torchrun
def test_two_processes_match_one_with_the_encoder_blocks_learning(tmp_path: Path) -> None:
    """--xe_encoder_lr under torchrun: each process gets whole images in one view (training/batches.py
    image_shares), so the blocks and the decoder learn as with one process. At a small rate: Adam turns the
    rounding noise of near-zero gradients (summed in another order) into full steps of the blocks' rate."""
    data = generate_shapes(tmp_path / "shapes", num_images=60, seed=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = train_command(data, tmp_path, "one")
    command[command.index("--encoder") + 1] = "efficientnet_lite0_random"  # one with blocks to tune
    learning = ["--image_size", "64", "--tune_encoder_epochs", "1", "--tune_encoder_blocks", "2", "--augment_flip",
                "--xe_encoder_lr", "1e-5", "--xe_encoder_from", "2", "--keep_checkpoints", "3"]
    single = subprocess.run([sys.executable, "-m", "captioner", *command, *learning], capture_output=True, text=True,
                            env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    one = only_run(tmp_path / "one")
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "captioner", "train", "--resume", str(one / "model_epoch_1.pt"), "--output_dir",
                               str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr
    two = only_run(tmp_path / "two")
    first, second = (json.loads((run / "metrics_history.json").read_text())[-1] for run in (one, two))
    assert second["epoch"] == 2
    for name in ("train_loss", "val_loss"):
        assert second[name] == pytest.approx(first[name], rel=1e-4), name
    blocks_one, blocks_two = (load_checkpoint(run / "model_epoch_2.pt")["tuned_encoder"]["state"] for run in (one, two))
    tuned = load_checkpoint(one / "model_epoch_1.pt")["tuned_encoder"]["state"]
    assert any(not torch.equal(tuned[name], value) for name, value in blocks_one.items())  # they learned
    for name, value in blocks_one.items():
        torch.testing.assert_close(blocks_two[name], value, atol=3e-4, rtol=1e-3, msg=name)
