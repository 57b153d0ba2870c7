"""`captioner evaluate`: caption a split with a trained model and score it as papers do.

Writes an evaluation folder: captions.json (COCO results format), references.json, metrics.json (x100),
per_image.json (BLEU-4, CIDEr, WER of each image, for reviewing), images.json (image id -> file) and
evaluation.json (what was run).
Re-scoring captions.json against references.json with pycocoevalcap gives the numbers in metrics.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from captioner.data.formats import load_dataset
from captioner.data.records import ImageRecord
from captioner.decoding.strategies import DecodeSettings, decode
from captioner.devices import keep_freed_memory
from captioner.errors import CaptionerError
from captioner.features.cache import extract_features, read_manifest
from captioner.io import atomic_write_text
from captioner.features.live import LiveFeatures
from captioner.evaluation.metrics import Scores, score_captions
from captioner.evaluation.ratings import DATABASE as RATINGS_FILE
from captioner.models.loading import TrainedModel


@dataclass
class EvaluationResult:
    folder: Path
    scores: Scores
    captions: dict[str, str]  # image id -> caption
    seconds: float


def evaluate(model: TrainedModel, split: str = "test", settings: DecodeSettings | None = None, *,
             dataset_type: str | None = None, data_dir: str | None = None, captions_file: str | None = None,
             max_images: int | None = None, output_dir: Path | None = None, cache_dir: Path | None = None,
             encoder_weights: Path | None = None, batch_size: int = 100, use_java: bool | None = None,
             progress: bool = True) -> EvaluationResult:
    """Dataset settings default to the ones the model was trained with."""
    keep_freed_memory()
    settings = settings or DecodeSettings()
    started = time.perf_counter()
    folder = output_dir or default_output_dir(model.source, split, settings)
    if (folder / RATINGS_FILE).exists():  # ratings are kept by image: new captions would inherit the old ones'
        raise CaptionerError(f"{folder} holds human ratings of its captions ({RATINGS_FILE}); new captions there "
                             "would be paired with ratings of other sentences: choose another --output_dir")
    records, dataset_type = split_records(model, split, dataset_type, data_dir, captions_file, max_images)
    lookup = FeatureLookup(model, [r.image for r in records], cache_dir, encoder_weights, progress,
                           mirrored_too=settings.flip_average)
    usable = [r for r in records if lookup.row(r.image) is not None]
    if not usable:
        raise CaptionerError(f"none of the {len(records)} {split} images could be read by the encoder")
    captions: dict[str, str] = {}
    for start in range(0, len(usable), batch_size):
        chunk = usable[start:start + batch_size]
        features = lookup.features([lookup.row(r.image) for r in chunk])
        for record, results in zip(chunk, decode(model.decoder, features, model.vocab, settings)):
            captions[record.image_id] = " ".join(model.vocab.decode(results[0].tokens))
    references = {r.image_id: list(r.captions) for r in usable}
    scores = score_captions(references, captions, use_java=use_java)
    seconds = time.perf_counter() - started
    images = {r.image_id: str(r.image.resolve()) for r in usable}
    write_evaluation(folder, model, split, settings, captions, references, scores, seconds,
                     skipped=len(records) - len(usable), dataset_type=dataset_type, images=images)
    return EvaluationResult(folder, scores, captions, seconds)


def split_records(model: TrainedModel, split: str, dataset_type: str | None, data_dir: str | None,
                  captions_file: str | None, max_images: int | None) -> tuple[list[ImageRecord], str]:
    trained = model.train_config
    dataset_type = dataset_type or trained.get("dataset_type")
    if not dataset_type:
        raise CaptionerError(f"checkpoint {model.source} does not say which dataset it was trained on; "
                             "pass --dataset_type and --data_dir")
    same_dataset = dataset_type == trained.get("dataset_type")
    data_dir = data_dir or (trained.get("data_dir") if same_dataset else None)
    captions_file = captions_file or (trained.get("captions_file") if same_dataset else None)
    dataset = load_dataset(dataset_type, data_dir, captions_file=captions_file, seed=trained.get("seed", 42))
    records = [r for r in dataset.split(split) if r.captions]
    if not records:
        raise CaptionerError(f"{dataset_type} has no {split} images with captions "
                             f"(splits: {dataset.split_sizes()})")
    return (records[:max_images] if max_images else records), dataset_type


class FeatureLookup:
    """Features of the evaluated images as the decoder expects them: from the feature cache (built or extended
    as needed) for a frozen encoder, or computed with the checkpoint's fine-tuned encoder."""

    def __init__(self, model: TrainedModel, images: list[Path], cache_dir: Path | None,
                 encoder_weights: Path | None, progress: bool, mirrored_too: bool = False) -> None:
        """`mirrored_too`: features (B, 2, ...) of each image and its mirror image (for --flip_average)."""
        self.model, self.mirrored_too = model, mirrored_too
        weights = encoder_weights or model.train_config.get("encoder_weights")
        weights = Path(weights) if weights else None
        if model.encoder_state is not None:
            if mirrored_too:
                raise CaptionerError(f"--flip_average reads mirrored features from the feature cache; "
                                     f"{model.source} has a fine-tuned encoder, which has none")
            self.live = LiveFeatures(images, model.encoder_name, weights, model.image_size, augment=False,
                                     fine_tune=False, device=model.device)
            self.live.encoder.load_state_dict(model.encoder_state)
            self.store = None
        else:
            self.live = None
            cache_dir = cache_dir or _trained_cache(model)
            manifest = read_manifest(Path(cache_dir)) if mirrored_too and cache_dir else None
            if manifest is not None and not manifest["settings"].get("flip"):
                raise CaptionerError(f"--flip_average needs mirrored features, and the feature cache {cache_dir} "
                                     "has none (it was built without --augment_flip); pass a new --cache_dir to "
                                     "extract them with the plain ones")
            self.store = extract_features(images, model.encoder_name, image_size=model.image_size,
                                          cache_dir=cache_dir, weights=weights, flip=mirrored_too,
                                          device=str(model.device), progress=progress)
            expected = model.encoder_settings.get("weights_sha256")
            if expected and self.store.settings.get("weights_sha256") != expected:
                raise CaptionerError(f"the encoder weights differ from the ones {model.source} was trained on "
                                     f"(SHA-256 {expected[:12]}...); pass the same --encoder_weights")

    def row(self, image: Path) -> int | None:
        return (self.live or self.store).row(image)

    def features(self, rows: list[int]) -> torch.Tensor:
        uses_grid = self.model.decoder.uses_grid
        if self.live is not None:
            with torch.no_grad():
                return self.live.features(rows, uses_grid, train=False)
        plain = self.store.features(rows, uses_grid)
        if self.mirrored_too:
            mirrored = self.store.features(rows, uses_grid, np.ones(len(rows), dtype=bool))
            plain = torch.stack([plain, mirrored], 1)
        return plain.to(self.model.device)


def _trained_cache(model: TrainedModel) -> Path | None:
    cache = model.train_config.get("cache_dir")
    return Path(cache) if cache and Path(cache).is_dir() else None


def default_output_dir(checkpoint: Path, split: str, settings: DecodeSettings) -> Path:
    """A new folder beside the checkpoint, named from the split and decoding settings."""
    name = f"eval_{split}_{settings.strategy}"
    if settings.strategy == "beam":
        name += f"{settings.beam_size}"
        if settings.length_penalty:
            name += f"_lp{settings.length_penalty:g}"
        if settings.no_repeat_ngram:
            name += f"_norepeat{settings.no_repeat_ngram}"
    elif settings.strategy == "sample":
        name += f"_t{settings.temperature:g}_k{settings.top_k}_p{settings.top_p:g}"
    if settings.flip_average:
        name += "_flip"
    folder, attempt = checkpoint.parent / name, 1
    while folder.exists():
        attempt += 1
        folder = checkpoint.parent / f"{name}_{attempt}"
    return folder


def write_evaluation(folder: Path, model: TrainedModel, split: str, settings: DecodeSettings,
                     captions: dict[str, str], references: dict[str, list[str]], scores: Scores, seconds: float,
                     skipped: int, dataset_type: str, images: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    results = [{"image_id": image_id, "caption": caption} for image_id, caption in captions.items()]
    atomic_write_text(folder / "captions.json", json.dumps(results, indent=1))
    atomic_write_text(folder / "references.json", json.dumps(references, indent=1))
    atomic_write_text(folder / "metrics.json", json.dumps(scores.overall, indent=2))
    atomic_write_text(folder / "per_image.json", json.dumps(scores.per_image, indent=1))
    atomic_write_text(folder / "images.json", json.dumps(images, indent=1))  # where each image is, for reviewing
    about = {"checkpoint": str(model.source.resolve()), "split": split, "images": len(captions),
             "images_skipped": skipped, "decoding": asdict(settings), "tokenizer": scores.tokenizer,
             "comparable_with_papers": scores.comparable, "seconds": round(seconds, 1),
             "dataset_type": dataset_type, "encoder": model.encoder_name,
             "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(folder / "evaluation.json", json.dumps(about, indent=2))
