"""The evaluation folder, written by `captioner evaluate` and read by the review page, in one place.

    captions.json     the captions, in the COCO results format
    references.json   each image's reference captions
    metrics.json      the scores, x100 (and under "tags", the concept head's tag scores: tags.py)
    per_image.json    BLEU-4, CIDEr and WER of each image, for reviewing
    images.json       image id -> file
    evaluation.json   what was run (checkpoint, decoding, tokenizer, ...)
    ratings.sqlite    human ratings given on the review page (ratings.py)

Re-scoring captions.json against references.json with pycocoevalcap gives the numbers in metrics.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from captioner.decoding.settings import DecodeSettings
from captioner.errors import CaptionerError
from captioner.evaluation.metrics import Scores
from captioner.evaluation.ratings import DATABASE as RATINGS_FILE
from captioner.io import atomic_write_text
from captioner.models.loading import TrainedModel

NEEDED = ("captions.json", "references.json", "per_image.json", "images.json")
__all__ = ["RATINGS_FILE", "Evaluation", "default_output_dir", "find_evaluation", "write_evaluation"]


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
                     skipped: int, dataset_type: str, images: dict[str, str], tags: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    results = [{"image_id": image_id, "caption": caption} for image_id, caption in captions.items()]
    atomic_write_text(folder / "captions.json", json.dumps(results, indent=1))
    atomic_write_text(folder / "references.json", json.dumps(references, indent=1))
    atomic_write_text(folder / "metrics.json", json.dumps({**scores.overall, **({"tags": tags} if tags else {})},
                                                          indent=2))
    atomic_write_text(folder / "per_image.json", json.dumps(scores.per_image, indent=1))
    atomic_write_text(folder / "images.json", json.dumps(images, indent=1))  # where each image is, for reviewing
    about = {"checkpoint": str(model.source.resolve()), "split": split, "images": len(captions),
             "images_skipped": skipped, "decoding": asdict(settings), "tokenizer": scores.tokenizer,
             "comparable_with_papers": scores.comparable, "seconds": round(seconds, 1),
             "dataset_type": dataset_type, "encoder": model.encoder_name,
             "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_text(folder / "evaluation.json", json.dumps(about, indent=2))


def find_evaluation(path: Path) -> Path:
    """`path` itself when it is an evaluation folder, else the newest evaluation folder inside it (a run)."""
    if all((path / name).is_file() for name in NEEDED):
        return path
    candidates = [p for p in path.glob("*/") if all((p / name).is_file() for name in NEEDED)] if path.is_dir() else []
    if not candidates:
        raise CaptionerError(f"{path} is neither an evaluation folder nor a run holding one; run "
                             "`captioner evaluate --model_path RUN/best.pt` first")
    return max(candidates, key=lambda p: (p / "captions.json").stat().st_mtime)


@dataclass
class Evaluation:
    folder: Path
    items: list[dict]  # one per image: index, image_id, caption, references, scores
    paths: list[Path]  # image file of each item, by index: the client names images by index, never by path
    about: dict

    @classmethod
    def load(cls, path: Path) -> Evaluation:
        folder = find_evaluation(path)
        try:
            captions = {c["image_id"]: c["caption"] for c in json.loads((folder / "captions.json").read_text())}
            references = json.loads((folder / "references.json").read_text())
            per_image = json.loads((folder / "per_image.json").read_text())
            images = json.loads((folder / "images.json").read_text())
            about_file = folder / "evaluation.json"
            about = json.loads(about_file.read_text()) if about_file.is_file() else {}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CaptionerError(f"{folder}: the evaluation files cannot be read ({error})") from error
        items, paths = [], []
        for index, (image_id, caption) in enumerate(captions.items()):
            scores = per_image.get(image_id, {})
            items.append({"index": index, "image_id": image_id, "caption": caption,
                          "references": references.get(image_id, []),
                          "bleu4": scores.get("BLEU-4"), "cider": scores.get("CIDEr")})
            paths.append(Path(images.get(image_id, "")))
        return cls(folder, items, paths, about)
