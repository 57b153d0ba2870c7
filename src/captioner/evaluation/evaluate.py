"""`captioner evaluate`: caption a split with a trained model and score it as papers do, into an evaluation
folder (folder.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captioner.data.formats import load_dataset
from captioner.data.records import ImageRecord
from captioner.data.visual_genome import DEFAULT_MIN_REGION_AREA
from captioner.decoding.settings import DecodeSettings
from captioner.decoding.strategies import decode
from captioner.devices import keep_freed_memory
from captioner.errors import CaptionerError
from captioner.evaluation.folder import RATINGS_FILE, default_output_dir, write_evaluation
from captioner.evaluation.metrics import Scores, score_captions
from captioner.evaluation.tags import tag_scores
from captioner.features.extract import extract_features
from captioner.features.live import LiveFeatures
from captioner.features.source import FeatureSource
from captioner.features.store import read_manifest
from captioner.models.loading import TrainedModel, tuned_encoder


@dataclass
class EvaluationResult:
    folder: Path
    scores: Scores
    captions: dict[str, str]  # image id -> caption
    seconds: float
    tags: dict | None = None  # tag_scores(): the concept head's tags and the caption's words, x100


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
    source = model_features(model, [r.image for r in records], cache_dir, encoder_weights, progress,
                            mirrored_too=settings.flip_average)
    usable = [r for r in records if source.row(r.image) is not None]
    if not usable:
        raise CaptionerError(f"none of the {len(records)} {split} images could be read by the encoder")
    captions: dict[str, str] = {}
    uses_grid = model.decoder.uses_grid
    tagging = model.decoder.concept_head is not None and model.concepts is not None
    probabilities = []
    for start in range(0, len(usable), batch_size):
        chunk = usable[start:start + batch_size]
        rows = [source.row(r.image) for r in chunk]
        with torch.no_grad():
            features = source.both_views(rows, uses_grid) if settings.flip_average else source.features(rows, uses_grid)
        features = features.to(model.device)
        for record, results in zip(chunk, decode(model.decoder, features, model.vocab, settings)):
            captions[record.image_id] = " ".join(model.vocab.decode(results[0].tokens))
        if tagging:
            with torch.no_grad():
                logits = model.decoder.concept_logits(features[:, 0] if settings.flip_average else features)
            probabilities.append(torch.sigmoid(logits).cpu().numpy())
    references = {r.image_id: list(r.captions) for r in usable}
    scores = score_captions(references, captions, use_java=use_java)
    tags = (tag_scores(model.concepts, np.concatenate(probabilities), [list(r.captions) for r in usable],
                       [captions[r.image_id] for r in usable]) if tagging else None)
    seconds = time.perf_counter() - started
    images = {r.image_id: str(r.image.resolve()) for r in usable}
    write_evaluation(folder, model, split, settings, captions, references, scores, seconds,
                     skipped=len(records) - len(usable), dataset_type=dataset_type, images=images, tags=tags)
    return EvaluationResult(folder, scores, captions, seconds, tags)


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
    dataset = load_dataset(dataset_type, data_dir, captions_file=captions_file, seed=trained.get("seed", 42),
                           min_region_area=trained.get("min_region_area", DEFAULT_MIN_REGION_AREA) if same_dataset
                           else DEFAULT_MIN_REGION_AREA)
    records = [r for r in dataset.split(split) if r.captions]
    if not records:
        raise CaptionerError(f"{dataset_type} has no {split} images with captions "
                             f"(splits: {dataset.split_sizes()})")
    return (records[:max_images] if max_images else records), dataset_type


def model_features(model: TrainedModel, images: list[Path], cache_dir: Path | None, encoder_weights: Path | None,
                   progress: bool = True, mirrored_too: bool = False) -> FeatureSource:
    """Features of these images as the model's decoder expects them: from the feature cache (built or extended
    as needed) for a frozen encoder, or computed with the model's fine-tuned encoder. `mirrored_too`: the cache
    must hold the mirrored images' features too (for --flip_average)."""
    weights = encoder_weights or model.train_config.get("encoder_weights")
    weights = Path(weights) if weights else None
    if model.encoder_state is not None or model.encoder_settings.get("fine_tuned"):
        live = LiveFeatures(images, model.encoder_name, weights, model.image_size, augment=False, fine_tune=False,
                            device=model.device, encoder=model.encoder)
        if model.encoder is None:
            live.encoder.load_state_dict(model.encoder_state)
        return live
    tuned = model.encoder if model.encoder is not None and model.encoder.tuned_blocks else None
    if model.tuned is not None:  # a checkpoint's tuned encoder, and its own cache where the training wrote it
        tuned = tuned or tuned_encoder(model.encoder_name, weights, model.tuned, model.source)
        written = Path(model.tuned["cache_dir"])
        cache_dir = cache_dir or (written if written.is_dir() else None)
    elif tuned is None:
        cache_dir = cache_dir or _trained_cache(model)
    manifest = read_manifest(Path(cache_dir)) if mirrored_too and cache_dir else None
    if manifest is not None and not manifest["settings"].get("flip"):
        raise CaptionerError(f"--flip_average needs mirrored features, and the feature cache {cache_dir} has none "
                             "(it was built without --augment_flip); pass a new --cache_dir to extract them with "
                             "the plain ones")
    store = extract_features(images, model.encoder_name, image_size=model.image_size, cache_dir=cache_dir,
                             weights=weights, flip=mirrored_too, device=str(model.device), progress=progress,
                             encoder=tuned)
    expected = model.encoder_settings.get("weights_sha256")
    if expected and store.settings.get("weights_sha256") != expected:
        raise CaptionerError(f"the encoder weights differ from the ones {model.source} was trained on "
                             f"(SHA-256 {expected[:12]}...); pass the same --encoder_weights")
    return store


def _trained_cache(model: TrainedModel) -> Path | None:
    cache = model.train_config.get("cache_dir")
    return Path(cache) if cache and Path(cache).is_dir() else None
