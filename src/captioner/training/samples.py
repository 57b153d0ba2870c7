"""What a run shows of its model besides numbers: attention pictures of fixed dev images (at each new best and
at the end) and captions of a few held-out images next to their references."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from captioner.data.records import ImageRecord
from captioner.data.vocab import Vocabulary
from captioner.decoding.strategies import greedy
from captioner.decoding.trace import trace_caption
from captioner.features.source import FeatureSource
from captioner.images import BadImageError, open_rgb
from captioner.models.decoders import Decoder
from captioner.visualize import save_picture


@torch.no_grad()
def save_attention_pictures(decoder: Decoder, records: list[ImageRecord], features: FeatureSource,
                            features_of_rows: Callable, vocab: Vocabulary, folder: Path, max_length: int,
                            basic: bool, advanced: bool, log: Callable[[str], None]) -> None:
    """attention_viz_sample_K.png (and advanced_...) for these dev images, with the decoder's current weights."""
    decoder.eval()
    h, w, _ = features.grid_shape
    for number, record in enumerate(records, 1):
        image_features = features_of_rows([features.row(record.image)])
        (decoded,) = greedy(decoder, image_features, vocab, max_length)
        trace = trace_caption(decoder, image_features[0], vocab, decoded.tokens, (h, w))
        try:
            image = open_rgb(record.image)
        except BadImageError as error:
            log(f"attention picture of {record.image_id} skipped: {error}")
            continue
        if basic:
            save_picture(folder / f"attention_viz_sample_{number}.png", image, trace)
        if advanced:
            save_picture(folder / f"advanced_attention_viz_sample_{number}.png", image, trace, True)


@torch.no_grad()
def show_samples(decoder: Decoder, records: list[ImageRecord], count: int, features: FeatureSource,
                 features_of_rows: Callable, vocab: Vocabulary, max_length: int, log: Callable[[str], None]) -> None:
    """Greedy captions of the first `count` of these held-out images the encoder could read, next to a reference."""
    decoder.eval()
    records = [record for record in records if features.row(record.image) is not None][:count]
    if not records:
        return
    image_features = features_of_rows([features.row(record.image) for record in records])
    for record, decoded in zip(records, greedy(decoder, image_features, vocab, max_length)):
        log(f"{record.image_id}: {' '.join(vocab.decode(decoded.tokens))}")
        log(f"    reference: {record.captions[0]}")
