"""An evaluation folder (from `captioner evaluate`) as the review page shows it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import CaptionerError

NEEDED = ("captions.json", "references.json", "per_image.json", "images.json")


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
