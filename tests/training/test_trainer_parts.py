"""The Trainer is handed its parts, so a training step runs without any dataset, cache or encoder: here on
features held in memory, a vocabulary of a few words and a decoder built by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioner.data.records import Dataset, ImageRecord, LoadReport
from captioner.data.vocab import Vocabulary
from captioner.features.source import FeatureSource
from captioner.models.decoders import DecoderConfig, build_decoder
from captioner.training.batches import CaptionExamples, TrainingData
from captioner.training.config import TrainConfig
from captioner.training.objectives import CrossEntropy
from captioner.training.trainer import Trainer


class InMemory(FeatureSource):
    """Random features, one grid per image: what a cache would hold."""

    def __init__(self, images: int, grid: tuple[int, int, int] = (2, 2, 8)) -> None:
        generator = torch.Generator().manual_seed(0)
        h, w, c = grid
        self.grid = torch.randn(images, h * w, c, generator=generator)
        self.settings = {"encoder": "in memory", "grid": list(grid)}
        self.skipped = {}
        self.description = "memory"

    def row(self, image) -> int:
        return int(str(image).removeprefix("image"))

    def features(self, rows, use_grid: bool, *, flip=None, train: bool = False) -> torch.Tensor:
        grid = self.grid[torch.as_tensor(np.asarray(rows))]
        return grid if use_grid else grid.mean(1)


@pytest.mark.parametrize("decoder", ["attention", "gru"])
def test_one_training_step_on_parts_built_by_hand(decoder: str) -> None:
    torch.manual_seed(0)
    vocab = Vocabulary(["a", "red", "blue", "circle", "square"])
    examples = CaptionExamples(np.array([0, 1, 2, 3]), [vocab.encode(["a", "red", "circle"]),
                                                        vocab.encode(["a", "blue", "square"]),
                                                        vocab.encode(["a", "red", "square"]),
                                                        vocab.encode(["a", "blue", "circle"])], 0)
    records = [ImageRecord(f"image{i}", ("a caption",), "dev") for i in range(4)]
    data = TrainingData(Dataset("memory", records, LoadReport()), examples, examples, records)
    config = TrainConfig(decoder=decoder, batch_size=4, amp=False, clip_norm=1.0)
    model_config = DecoderConfig(decoder, len(vocab), 8, 16, 16, 8, drop_prob=0.0)
    model = build_decoder(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    trainer = Trainer(config, model, model_config, vocab, data, InMemory(4), optimizer, None,
                      CrossEntropy(vocab.pad_id, alpha_c=1.0 if decoder == "attention" else 0.0))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        summed, words = trainer.train_step([0, 1, 2, 3], generator)
        assert words == 4 * 4  # three words and <end> per caption
        losses.append(summed / words)
    assert losses[-1] < 0.5 * losses[0]  # it learns the four captions
    loss, scores = trainer.validate()
    assert loss < losses[0] and set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}
