"""A synthetic captioning dataset the project draws itself, so everything runs with no download.

Each image holds one to three coloured shapes in distinct cells of a 3x3 grid; its five captions state what
is drawn and where ("a small red circle above a blue square"). Captions depend on colour, shape, size and
position, so a model has to look at the image to get them right. Written in the Karpathy JSON format and
read back by the ordinary reader.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from captioner.data.layouts import load_karpathy
from captioner.data.records import Dataset, LoadReport
from captioner.errors import CaptionerError

COLORS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220), "yellow": (240, 200, 20),
          "purple": (148, 60, 189)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.10, "large": 0.16}  # half-width as a share of the image side
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
IMAGE_SIZE = 128
DEFAULT_NUM_IMAGES = 3000
GENERATOR_VERSION = 1
MANIFEST = "shapes_manifest.json"
CAPTIONS_FILE = "dataset_shapes.json"


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    row: int
    column: int

    def phrase(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.kind}" if with_size else f"{self.color} {self.kind}"

    def location(self) -> str:
        if (self.row, self.column) == (1, 1):
            return "in the center"
        if self.row == 1:
            return f"on the {COLUMNS[self.column]}"
        if self.column == 1:
            return f"at the {ROWS[self.row]}"
        return f"in the {ROWS[self.row]} {COLUMNS[self.column]} corner"


def relation(a: Shape, b: Shape) -> tuple[str, str]:
    """Where `a` is relative to `b`, and the inverse, along the axis on which they are farther apart."""
    d_row, d_col = a.row - b.row, a.column - b.column
    if abs(d_row) >= abs(d_col):
        return ("above", "below") if d_row < 0 else ("below", "above")
    return ("to the left of", "to the right of") if d_col < 0 else ("to the right of", "to the left of")


def random_scene(rng: random.Random) -> list[Shape]:
    cells = rng.sample(range(9), rng.choice((1, 2, 2, 3, 3)))
    shapes = [Shape(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES)), cell // 3, cell % 3)
              for cell in cells]
    return sorted(shapes, key=lambda shape: (shape.row, shape.column))  # reading order


def describe(shapes: list[Shape], rng: random.Random) -> list[str]:
    """Five different true captions of a scene."""
    if len(shapes) == 1:
        (a,) = shapes
        options = [f"a {a.phrase()}", f"a {a.phrase()} {a.location()}", f"there is a {a.phrase(False)} {a.location()}",
                   f"one {a.phrase()} on a white background", f"a single {a.phrase(False)}",
                   f"a {a.phrase(False)} {a.location()}"]
    elif len(shapes) == 2:
        a, b = shapes
        ab, ba = relation(a, b)
        options = [f"a {a.phrase()} {ab} a {b.phrase()}", f"a {b.phrase()} {ba} a {a.phrase()}",
                   f"a {a.phrase()} and a {b.phrase()}", f"two shapes a {a.phrase(False)} and a {b.phrase(False)}",
                   f"a {a.phrase(False)} {ab} a {b.phrase(False)}", f"a {b.phrase(False)} and a {a.phrase(False)}"]
    else:
        a, b, c = shapes
        ab, _ = relation(a, b)
        options = [f"a {a.phrase()} a {b.phrase()} and a {c.phrase()}",
                   f"three shapes a {a.phrase(False)} a {b.phrase(False)} and a {c.phrase(False)}",
                   f"a {a.phrase()} {ab} a {b.phrase()} and a {c.phrase()}",
                   f"three shapes including a {a.phrase()}",
                   f"a {c.phrase(False)} a {b.phrase(False)} and a {a.phrase(False)}",
                   f"three shapes a {a.phrase()} a {b.phrase()} and a {c.phrase()}"]
    return rng.sample(options, 5)


def draw(shapes: list[Shape], rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    background = tuple(rng.randint(235, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    canvas = ImageDraw.Draw(image)
    cell = size / 3
    for shape in shapes:
        cx = (shape.column + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cy = (shape.row + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        r = SIZES[shape.size] * size
        box = (cx - r, cy - r, cx + r, cy + r)
        color = COLORS[shape.color]
        if shape.kind == "circle":
            canvas.ellipse(box, fill=color)
        elif shape.kind == "square":
            canvas.rectangle(box, fill=color)
        else:
            canvas.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return image


def generate_shapes(folder: Path, num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0) -> Path:
    """Draw the dataset into `folder` (atomically: a half-made folder is never left behind)."""
    if num_images < 10:
        raise CaptionerError(f"the shapes dataset needs at least 10 images, got {num_images}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        (staging / "Images").mkdir()
        # mkdtemp's folder is 0700; the dataset gets a plain mkdir's mode (the umask's), as its Images/ has
        os.chmod(staging, stat.S_IMODE((staging / "Images").stat().st_mode))
        rng = random.Random(seed)
        entries = []
        held_out = max(1, num_images // 10)
        for index in range(num_images):
            shapes = random_scene(rng)
            name = f"shapes_{index:05d}.png"
            draw(shapes, rng).save(staging / "Images" / name, optimize=False)
            split = "test" if index < held_out else "val" if index < 2 * held_out else "train"
            entries.append({"filename": name, "imgid": index, "split": split,
                            "sentences": [{"raw": text} for text in describe(shapes, rng)]})
        (staging / CAPTIONS_FILE).write_text(json.dumps({"dataset": "shapes", "images": entries}))
        manifest = {"generator_version": GENERATOR_VERSION, "seed": seed, "num_images": num_images,
                    "image_size": IMAGE_SIZE}
        (staging / MANIFEST).write_text(json.dumps(manifest))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def default_shapes_dir(seed: int, num_images: int) -> Path:
    cache = Path(os.environ.get("CAPTIONER_CACHE", Path.home() / ".cache" / "captioner"))
    return cache / f"shapes_seed{seed}_n{num_images}"


def is_generated(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("generator_version") == GENERATOR_VERSION and (folder / CAPTIONS_FILE).is_file()


def load_shapes(data_dir: Path | str | None, seed: int = 0, num_images: int = DEFAULT_NUM_IMAGES) -> Dataset:
    """Read the shapes dataset in `data_dir`, drawing it first if the folder does not hold one yet."""
    folder = Path(data_dir).expanduser() if data_dir else default_shapes_dir(seed, num_images)
    if not is_generated(folder):
        if folder.is_dir() and any(folder.iterdir()):
            raise CaptionerError(f"{folder} is not empty and holds no shapes dataset; give an empty or new --data_dir")
        generate_shapes(folder, num_images, seed)
    return load_karpathy(folder / CAPTIONS_FILE, folder, LoadReport(), name="shapes")
