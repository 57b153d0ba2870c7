"""Shared test helpers: tiny images written on the fly, and the real Flickr8k copy when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

REAL_FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"

needs_real_flickr8k = pytest.mark.skipif(
    not (REAL_FLICKR8K / "Flickr8k.token.txt").is_file(), reason=f"real Flickr8k not found at {REAL_FLICKR8K}"
)


def write_image(path: Path, size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# what tiny_checkpoint recommends (as presets.DECODING does for a preset's models); no mirrored features in its cache
TINY_DECODING = {"strategy": "beam", "beam_size": 2, "length_penalty": 1.0, "no_repeat_ngram": 2}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """best.pt of a small attention model trained on 80 synthetic images (seconds); its shapes data sits at
    tiny_checkpoint.parents[2] / "shapes". Shared by the tests of everything that uses a trained model. Like a
    preset's model it carries a recommended decoding, TINY_DECODING, and a text-image embedding."""
    from captioner.data.shapes import generate_shapes
    from captioner.training.config import TrainConfig
    from captioner.training.setup import build_trainer

    root = tmp_path_factory.mktemp("trained")
    data = generate_shapes(root / "shapes", num_images=80, seed=5)
    config = TrainConfig(dataset_type="shapes", data_dir=str(data), encoder="tiny_random", cache_dir=str(root / "cache"),
                         decoder="attention", embed_size=16, hidden_size=16, attention_dim=16, epochs=2,
                         batch_size=16, learning_rate=3e-3, output_dir=str(root / "runs"), freq_threshold=1,
                         decoding=TINY_DECODING, embedding_epochs=3)
    return build_trainer(config, ["captioner"]).run() / "best.pt"


@pytest.fixture(scope="session")
def tiny_transformer_checkpoint(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    """best.pt of a small transformer decoder trained on tiny_checkpoint's shapes data (seconds)."""
    from captioner.training.config import TrainConfig
    from captioner.training.setup import build_trainer

    root = tmp_path_factory.mktemp("transformer")
    config = TrainConfig(dataset_type="shapes", data_dir=str(tiny_checkpoint.parents[2] / "shapes"),
                         encoder="tiny_random", cache_dir=str(root / "cache"), decoder="transformer", hidden_size=16,
                         num_heads=4, num_layers=2, epochs=2, batch_size=16, learning_rate=3e-3,
                         output_dir=str(root / "runs"), freq_threshold=1)
    return build_trainer(config, ["captioner"]).run() / "best.pt"
