"""Batches of training captions: by length for the decoder alone, by image when the encoder's blocks learn."""

from __future__ import annotations

import numpy as np
import torch

from captioner.training.batches import bucketed_batches, image_batches, image_shares, one_view_per_image

# 7 images with 5 captions each and one with 9: rows as a CaptionExamples holds them (an image's captions in a row)
ROWS = np.repeat(np.arange(8), [5, 5, 5, 5, 5, 5, 5, 9])
LENGTHS = [int(n) for n in np.random.default_rng(0).integers(5, 20, len(ROWS))]


def test_image_batches_hold_every_caption_once_and_each_image_whole() -> None:
    batches = image_batches(ROWS, LENGTHS, 12, torch.Generator().manual_seed(1))
    assert sorted(i for batch in batches for i in batch) == list(range(len(ROWS)))
    for batch in batches:
        images = set(ROWS[batch].tolist())
        assert all(np.sum(ROWS[batch] == image) == np.sum(ROWS == image) for image in images)
        assert len(batch) <= 12 or len(images) == 1  # an image with more captions than a batch comes alone
    assert [len(batch) for batch in batches].count(10) >= 2  # two images of five fill a batch of 12 up to ten
    small = image_batches(ROWS, LENGTHS, 8, torch.Generator().manual_seed(1))
    assert sorted(len(batch) for batch in small) == [5] * 7 + [9]  # the image of 9 captions alone


def test_image_shares_give_each_image_to_one_process_and_one_view() -> None:
    rows = np.array([4, 4, 7, 4, 9, 7, 2])
    shares = image_shares(rows, 2)
    assert sorted(shares[0] + shares[1]) == list(range(len(rows)))
    assert not set(rows[shares[0]]) & set(rows[shares[1]])
    assert image_shares(rows, 1) == [list(range(len(rows)))]
    flip = np.array([True, False, False, False, True, True, False])
    assert one_view_per_image(rows, flip).tolist() == [True, True, False, True, True, False, False]
    assert one_view_per_image(rows, None) is None


def test_image_batches_put_images_of_similar_longest_caption_together() -> None:
    rows = np.repeat(np.arange(40), 5)
    lengths = [int(n) for n in np.random.default_rng(2).integers(5, 30, len(rows))]
    grouped = image_batches(rows, lengths, 20, torch.Generator().manual_seed(3))
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in grouped)
    shuffled = np.random.default_rng(4).permutation(40)
    at_random = [np.flatnonzero(np.isin(rows, shuffled[i:i + 4])).tolist() for i in range(0, 40, 4)]
    assert padded < sum(len(batch) * max(lengths[i] for i in batch) for batch in at_random)


def test_batches_are_the_same_for_the_same_generator_and_differ_by_epoch() -> None:
    for make in (lambda g: image_batches(ROWS, LENGTHS, 12, g), lambda g: bucketed_batches(LENGTHS, 12, g)):
        assert make(torch.Generator().manual_seed(5)) == make(torch.Generator().manual_seed(5))
        assert make(torch.Generator().manual_seed(5)) != make(torch.Generator().manual_seed(6))
