"""Attention pictures: where an attention model looked for each word of its caption (an AttentionTrace from
decoding/trace.py).

basic    the caption, then one panel per word: the image with that step's attention as a smoothed heatmap.
advanced the same panels, plus each word's probability, how spread out each step's attention is (entropy,
         against the uniform maximum), and the regions attended most over the whole caption.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from captioner.decoding.trace import AttentionTrace
from captioner.io import atomic_write_bytes


def heatmap(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) attention grid upsampled smoothly to the image (width, height), scaled to 0..1."""
    scaled = attention / max(float(attention.max()), 1e-12)
    image = Image.fromarray((scaled * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(size) / (4 * max(attention.shape))))
    values = np.asarray(image, dtype=np.float32) / 255.0
    return values / max(float(values.max()), 1e-6)


def _panel(axis, image: Image.Image, attention: np.ndarray | None, title: str, color: str = "black") -> None:
    axis.imshow(image)
    if attention is not None:
        axis.imshow(heatmap(attention, image.size), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    axis.set_title(title, fontsize=13, color=color)
    axis.axis("off")


def _figure_bytes(figure) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def basic_picture(image: Image.Image, trace: AttentionTrace) -> bytes:
    """PNG: the photo with the caption, then one heatmap per word (brighter = looked at more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(trace.words) + 1
    columns = min(5, panels)
    rows = math.ceil(panels / columns)
    aspect = image.height / image.width  # panels as tall as the photo is, so no blank bands between rows
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, (3.2 * aspect + 0.5) * rows + 0.9),
                                squeeze=False)
    caption = " ".join(trace.words[:-1])
    _panel(axes[0][0], image, None, "the photo")
    for step, word in enumerate(trace.words, 1):
        _panel(axes[step // columns][step % columns], image, trace.attention[step - 1], f"{step}. {word}")
    for index in range(panels, rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(f"\u201c{caption}\u201d\nwhere the model looked for each word (bright = more attention)",
                    fontsize=15)
    return _figure_bytes(figure)


def advanced_picture(image: Image.Image, trace: AttentionTrace) -> bytes:
    """PNG: per-word heatmaps, word probabilities, attention entropy per step, and the overall focus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(trace.words)
    columns = min(8, steps)
    word_rows = math.ceil(steps / columns)
    aspect = image.height / image.width
    panel = 3.0 * aspect + 0.45  # a word panel's height: the photo's shape plus its title
    figure = plt.figure(figsize=(3.0 * max(columns, 4), panel * word_rows + 8.0))
    grid = figure.add_gridspec(word_rows + 2, max(columns, 4), height_ratios=[panel] * word_rows + [3.6, 4.4])
    for step, word in enumerate(trace.words):
        axis = figure.add_subplot(grid[step // columns, step % columns])
        confident = trace.probabilities[step] >= 0.5
        _panel(axis, image, trace.attention[step], f"{word}  ({trace.probabilities[step]:.0%})",
               "black" if confident else "firebrick")
    positions = np.arange(steps)
    width = max(columns, 4)
    bars = figure.add_subplot(grid[word_rows, : width // 2])
    bars.bar(positions, trace.probabilities, color=["#3b7dd8" if p >= 0.5 else "#d8603b" for p in trace.probabilities])
    bars.set_xticks(positions, trace.words, rotation=45, ha="right")
    bars.set(ylim=(0, 1), ylabel="probability", title="How sure the model was of each word (orange: under 50%)")
    bars.grid(axis="y", alpha=0.3)
    entropy = figure.add_subplot(grid[word_rows, width // 2:])
    uniform = math.log(trace.attention[0].size)
    entropy.plot(positions, trace.entropy, "o-", color="#6a3bd8", label="attention entropy")
    entropy.axhline(uniform, color="gray", linestyle="--", label="evenly spread (maximum)")
    entropy.set_xticks(positions, trace.words, rotation=45, ha="right")
    entropy.set(ylim=(0, uniform * 1.1), ylabel="entropy (nats)",
                title="How focused each step was (low = a few regions)")
    entropy.legend(loc="lower right", fontsize=9)
    entropy.grid(alpha=0.3)
    overall = trace.attention.sum(0)
    focus = figure.add_subplot(grid[word_rows + 1, : width // 2])
    _panel(focus, image, overall, "Regions attended most over the whole caption")
    _mark_top_regions(focus, overall, image.size)
    photo = figure.add_subplot(grid[word_rows + 1, width // 2:])
    _panel(photo, image, None, "The photo")
    figure.suptitle(f"\u201c{' '.join(trace.words[:-1])}\u201d", fontsize=16)
    figure.tight_layout(rect=(0, 0, 1, 0.97))  # leave the top for the caption
    return _figure_bytes(figure)


def _mark_top_regions(axis, attention: np.ndarray, size: tuple[int, int], count: int = 3) -> None:
    """Outline the `count` grid cells with the most attention, numbered by rank."""
    from matplotlib.patches import Rectangle

    rows, columns = attention.shape
    cell_w, cell_h = size[0] / columns, size[1] / rows
    for rank, index in enumerate(np.argsort(attention.ravel())[::-1][:count], 1):
        row, column = divmod(int(index), columns)
        axis.add_patch(Rectangle((column * cell_w, row * cell_h), cell_w, cell_h, fill=False, edgecolor="cyan",
                                 linewidth=2))
        axis.text(column * cell_w + 4, row * cell_h + 4, str(rank), color="cyan", fontsize=12, va="top",
                  fontweight="bold")


def save_picture(path: Path, image: Image.Image, trace: AttentionTrace, advanced: bool = False) -> None:
    atomic_write_bytes(path, advanced_picture(image, trace) if advanced else basic_picture(image, trace))
