"""The dev loss and dev scores after each epoch, on one process and shared out under torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import captioner.training.validation as validation_module
from captioner.data.vocab import clean_caption
from captioner.training.distributed import Processes
from captioner.training.setup import build_trainer
from captioner.training.validation import dev_scores
from tests.training.helpers import small


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


def test_dev_captions_are_decoded_as_the_preset_recommends(shapes: Path, tmp_path: Path, monkeypatch) -> None:
    """best.pt is picked by the captions users get: the recommended decoding (flip averaging included);
    --dev_decoding greedy, or no recommendation, decodes greedily."""
    recommended = {"strategy": "beam", "beam_size": 2, "length_penalty": 1.0, "flip_average": True}
    trainer = build_trainer(small(shapes, tmp_path, amp=False, augment_flip=True, decoding=recommended), ["captioner"])
    seen = []
    real_decode = validation_module.decode

    def recording_decode(decoder, features, vocab, settings):
        seen.append((settings.strategy, settings.beam_size, settings.flip_average, tuple(features.shape)))
        return real_decode(decoder, features, vocab, settings)

    monkeypatch.setattr(validation_module, "decode", recording_decode)
    _, scores = trainer.validate()
    assert {"CIDEr", "BLEU-4"} <= set(scores)
    images = len(trainer.data.dev_records)
    assert [s[:3] for s in seen] == [("beam", 2, True)] and seen[0][3][:2] == (images, 2)  # each image, its mirror
    seen.clear()
    trainer.config.dev_decoding = "greedy"
    trainer.validate()
    assert [s[0] for s in seen] == ["greedy"]
    no_mirrors = build_trainer(small(shapes, tmp_path / "plain", amp=False, decoding=recommended), ["captioner"])
    assert not no_mirrors.dev_decoding.flip_average  # a cache without mirrored features: beam alone
