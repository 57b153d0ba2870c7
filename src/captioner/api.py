"""The Python API: load a trained model once, caption many images.

    from captioner import Captioner
    cap = Captioner.load("runs/<run>/best.pt")
    results = cap.caption(["a.jpg", pil_image, "photos/"], beam_size=3, num_captions=3)
    results[0].text, results[0].score, results[0].tokens, results[0].attention   # attention: steps x H x W
    best = cap.caption("a.jpg", **cap.recommended_decoding)   # as the model's training preset recommends

Images go through the encoder in batches and straight into the decoder (no cache), with the same
preprocessing and float16 rounding the training features had, so captions match `captioner evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captioner.data.records import IMAGE_EXTENSIONS
from captioner.decoding.recommended import recommended_in
from captioner.decoding.settings import DecodeSettings, settings_from
from captioner.decoding.strategies import Decoded, decode
from captioner.devices import keep_freed_memory
from captioner.errors import CaptionerError
from captioner.features.pixels import EncodedImages
from captioner.images import BadImageError, open_rgb
from captioner.models.loading import TrainedModel, load_model

ImageInput = str | Path | Image.Image


@dataclass
class Caption:
    text: str
    score: float  # summed log-probability of the words and <end> (beam: what beams were ranked by)
    tokens: list[str]
    attention: torch.Tensor | None = None  # (steps, H, W) for attention models; one map per word, then <end>


@dataclass
class CaptionResult:
    """The captions of one image, best first; `text`/`score`/`tokens`/`attention` are the best one's."""

    image: str  # the path, or "<PIL image N>"
    captions: list[Caption] = field(default_factory=list)
    error: str | None = None  # why the image could not be captioned (unreadable, not an image, ...)
    size: tuple[int, int] | None = None  # (width, height) of the image as read, EXIF rotation applied
    tags: list[tuple[str, float]] = field(default_factory=list)  # (concept, probability), likeliest first

    @property
    def text(self) -> str | None:
        return self.captions[0].text if self.captions else None

    @property
    def score(self) -> float | None:
        return self.captions[0].score if self.captions else None

    @property
    def tokens(self) -> list[str] | None:
        return self.captions[0].tokens if self.captions else None

    @property
    def attention(self) -> torch.Tensor | None:
        return self.captions[0].attention if self.captions else None


class Captioner:
    def __init__(self, model: TrainedModel) -> None:
        """`model` loaded with its encoder (load_model(..., with_encoder=True)); Captioner.load does that."""
        keep_freed_memory()  # the process keeps freed memory for reuse: 25-35% faster captioning on a CPU
        if model.encoder is None:
            raise ValueError("Captioner needs the model loaded with its encoder: load_model(path, with_encoder=True)")
        self.model = model
        self.encoder = model.encoder.to(model.device).to(memory_format=torch.channels_last).eval()
        self.image_size = model.image_size
        h, w, _ = model.encoder_settings["grid"]
        self.grid = (int(h), int(w))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, encoder_weights: str | Path | None = None) -> Captioner:
        """A checkpoint (`best.pt`, `model_epoch_N.pt`) or a folder written by `captioner export`; `device`
        defaults to CUDA when present."""
        return cls(load_model(path, device, with_encoder=True, encoder_weights=encoder_weights))

    @property
    def default_batch_size(self) -> int:
        """Images captioned together: 64. Every decoding step reads all the decoder's weights from memory, so
        the more images share a step the better (beam 3 on a 2-core AMX CPU: about 4.2 ms per image at 16,
        2.5-3 at 64); the encoder runs them in batches of its own (encoder_batch_size)."""
        return 64

    @property
    def encoder_batch_size(self) -> int:
        """16 on a CPU (the fastest bf16 encoder batch on a 2-core AMX machine, measured), 64 on CUDA."""
        return 64 if self.model.device.type == "cuda" else 16

    @property
    def uses_attention(self) -> bool:
        return self.model.decoder.uses_grid

    @property
    def recommended_decoding(self) -> dict[str, object]:
        """Keyword arguments of caption() that its training preset recommends ({} without a preset):
        `cap.caption(images, **cap.recommended_decoding)`."""
        return recommended_in(self.model.train_config, self.model.source)

    def caption(self, images: ImageInput | Iterable[ImageInput], *, batch_size: int | None = None,
                **decoding: object) -> list[CaptionResult]:
        """Captions of every image, in order. Folders are expanded to the images in them (sorted); an image
        that cannot be read gets a result with `error` set instead of stopping the batch.

        `decoding`: the options of DecodeSettings (captioner/decoding/settings.py), by name: strategy ("greedy",
        "beam", "sample"), beam_size, num_captions, max_length, length_penalty, no_repeat_ngram, temperature,
        top_k, top_p, seed, flip_average (each word's probability averaged over the image and its mirror
        image: the encoder runs twice). Defaults: beam search, beam 3, one caption."""
        settings = settings_from(decoding)
        return [result for batch in self.caption_batches(images, settings, batch_size) for result in batch]

    @property
    def can_tag(self) -> bool:
        return self.model.decoder.concept_head is not None and self.model.concepts is not None

    def tag(self, images: ImageInput | Iterable[ImageInput], top_k: int = 10, threshold: float | None = None,
            batch_size: int | None = None) -> list[CaptionResult]:
        """The concepts each image shows, as `tags`: (concept, probability) pairs, the `top_k` likeliest (those
        at `threshold` or above, with a threshold); no captions are written."""
        self.check_tagging(top_k, threshold)
        results = []
        for batch in _batches(expand_inputs(images), batch_size or self.default_batch_size):
            opened, features = self._read_and_encode(batch, mirrored_too=False)
            if features is not None:
                readable = [result for result, pixels in opened if pixels is not None]
                self._fill_tags(readable, features, top_k, threshold)
            results += [result for result, _ in opened]
        return results

    def check_tagging(self, top_k: int = 10, threshold: float | None = None) -> None:
        """A clear error for a model without a concept head, or a top_k or threshold out of range."""
        if not self.can_tag:
            raise CaptionerError(f"{self.model.source} has no concept head, so it cannot tag images (it was trained "
                                 "before concepts, or with --num_concepts 0); train a model with concepts, or "
                                 "caption instead")
        if top_k < 1 or (threshold is not None and not 0 <= threshold <= 1):
            raise ValueError("top_k must be at least 1 and threshold in [0, 1]")

    def _fill_tags(self, results: list[CaptionResult], features: torch.Tensor, top_k: int = 10,
                   threshold: float | None = None) -> None:
        with torch.no_grad():
            probabilities = torch.sigmoid(self.model.decoder.concept_logits(features)).cpu()
        values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        concepts = self.model.concepts.concepts
        for result, row_values, row_indices in zip(results, values.tolist(), indices.tolist()):
            result.tags = [(concepts[index], round(value, 4)) for value, index in zip(row_values, row_indices)
                           if threshold is None or value >= threshold]

    def caption_batches(self, images: ImageInput | Iterable[ImageInput], settings: DecodeSettings,
                        batch_size: int | None = None) -> Iterator[list[CaptionResult]]:
        """The results of caption(), one batch at a time as each is done (for progress bars and streaming)."""
        for batch in _batches(expand_inputs(images), batch_size or self.default_batch_size):
            yield self.caption_batch(batch, settings)

    def caption_batch(self, batch: list[tuple[str, ImageInput]], settings: DecodeSettings) -> list[CaptionResult]:
        """Captions of one batch of (name, image); with the model's ten likeliest tags where it has a concept head."""
        return self.describe_batch(batch, settings)[0]

    def describe_batch(self, batch: list[tuple[str, ImageInput]], settings: DecodeSettings, *,
                       both_views: bool = False) -> tuple[list[CaptionResult], torch.Tensor | None]:
        """caption_batch(), and the features the decoder read for the readable images, in their order (the
        image's own view; (B, 2, ...) with its mirror image's when `both_views` and the settings flip-average):
        a photo library keeps them to rank its images by a query."""
        opened, features = self._read_and_encode(batch, mirrored_too=settings.flip_average)
        if features is None:
            return [result for result, _ in opened], None
        readable = [result for result, pixels in opened if pixels is not None]
        for result, decoded in zip(readable, decode(self.model.decoder, features, self.model.vocab, settings)):
            result.captions = [self._caption(d) for d in decoded]
        plain = features[:, 0] if settings.flip_average else features
        if self.can_tag:
            self._fill_tags(readable, plain)
        return [result for result, _ in opened], features if both_views else plain

    def _read_and_encode(self, batch: list[tuple[str, ImageInput]], mirrored_too: bool
                         ) -> tuple[list[tuple[CaptionResult, np.ndarray | None]], torch.Tensor | None]:
        """Each image's result and pixels (None where unreadable), and the readable images' features ((B, 2, ...)
        with the mirror images' when `mirrored_too`); None when no image could be read.

        JPEG decoding, resizing and normalizing release the GIL: the batch's images are read on all cores at
        once, while the encoder and decoder wait (reading them *during* the encoder's work only slows it
        down, measured). The threads run no torch (see EncoderSpec.pixels)."""
        if len(batch) > 1:  # a pool per batch: cheap next to the batch, and nothing to leak or carry over a fork
            with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="read") as pool:
                opened = list(pool.map(self._open, batch))
        else:
            opened = [self._open(item) for item in batch]
        pixels = [pixels for _, pixels in opened if pixels is not None]
        if not pixels:
            return opened, None
        source = self._source(torch.from_numpy(np.stack(pixels)))
        rows = list(range(len(pixels)))
        features = (source.both_views(rows, self.uses_attention) if mirrored_too
                    else source.features(rows, self.uses_attention))
        return opened, features

    def _open(self, item: tuple[str, ImageInput]) -> tuple[CaptionResult, np.ndarray | None]:
        """The image's result (with `error` set if it cannot be read) and its encoder input (3, S, S)."""
        name, source = item
        result = CaptionResult(name)
        try:
            image = open_rgb(source, name=name, draft_size=self.image_size)
        except BadImageError as error:
            result.error = str(error)
            return result, None
        result.size = image.size
        return result, self.encoder.spec.pixels(image, self.image_size)

    def features(self, images: list[Image.Image]) -> torch.Tensor:
        """What the decoder reads for these (RGB) images: (B, L, C) grids for attention, (B, C) otherwise."""
        pixels = torch.stack([self.encoder.spec.prepare(image, self.image_size) for image in images])
        return self._source(pixels).features(list(range(len(images))), self.uses_attention)

    def _source(self, pixels: torch.Tensor) -> EncodedImages:
        """Normalized images (B, 3, S, S), encoded as the cache would be, the encoder running its own batch size."""
        return EncodedImages(self.encoder, pixels, self.model.encoder_settings, self.model.device,
                             self.encoder_batch_size)

    def _caption(self, decoded: Decoded) -> Caption:
        words = self.model.vocab.decode(decoded.tokens)
        attention = None
        if decoded.attention is not None:
            attention = decoded.attention.float().view(-1, *self.grid)  # (steps, H, W)
        score = decoded.score if decoded.score is not None else decoded.log_prob
        return Caption(" ".join(words), float(score), words, attention)


def expand_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[tuple[str, ImageInput]]:
    """(name, source) pairs: paths as given, folders as their image files in sorted order."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    for number, item in enumerate(images):
        if isinstance(item, Image.Image):
            yield f"<PIL image {number}>", item
            continue
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.suffix.lower() in IMAGE_EXTENSIONS and child.is_file():
                    yield str(child), child
        else:
            yield str(path), path


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
