"""`captioner export`: a bundle folder that loads without the training code's pickles.

    model.safetensors   encoder trunk ("encoder.*") and decoder ("decoder.*") weights
    config.json         decoder architecture, encoder name and preprocessing, feature grid, provenance
    vocab.json          the vocabulary
    concepts.json       the concepts the concept head tags images with (models that have one)
    the text-image embedding search ranks with ("embedding.*" weights, its config in config.json), when trained
    encoder.onnx, decoder_start.onnx, decoder_step.onnx   with --onnx (models/onnx.py)

`load_model(folder)` (models/loading.py) reads it back and gives the checkpoint's captions exactly (the same
weights, the same preprocessing).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save

from captioner.io import atomic_write_bytes, atomic_write_text
from captioner.models.loading import BUNDLE_FORMAT, BUNDLE_VERSION, TrainedModel


def export_bundle(model: TrainedModel, folder: Path) -> None:
    """Write `model` (loaded with its encoder) as a bundle."""
    encoder = model.encoder
    if encoder is None:
        raise ValueError("export_bundle needs the model loaded with its encoder (load_model(..., with_encoder=True))")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.trunk.state_dict().items()}
    # each tensor a copy of its own: the transformer's output layer shares the embedding's weights, and
    # safetensors refuses tensors that share memory (loading ties them again: both keys get the same values)
    tensors |= {f"decoder.{k}": v.detach().cpu().clone().contiguous() for k, v in model.decoder.state_dict().items()}
    if model.embedding is not None:
        tensors |= {f"embedding.{k}": v.detach().cpu().contiguous() for k, v in model.embedding.state_dict().items()}
    spec = encoder.spec
    config = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "decoder": model.decoder.config.to_dict(),
        "encoder": {"name": model.encoder_name, "image_size": model.image_size,
                    "grid": list(model.encoder_settings["grid"]), "channels": spec.channels,
                    "weights_sha256": model.encoder_settings.get("weights_sha256"),
                    "fine_tuned": model.encoder_state is not None or bool(model.encoder_settings.get("fine_tuned")),
                    "tuned_blocks": encoder.tuned_blocks},
        "preprocessing": {"description": spec.transform_description(model.image_size), "resize": "bilinear, squash",
                          "size": model.image_size, "mean": list(spec.mean), "std": list(spec.std),
                          "features": "float16-rounded grid (H*W, C); pooled = mean of the grid"},
        "embedding": model.embedding.config.to_dict() if model.embedding is not None else None,
        "source_checkpoint": str(model.source),
        "trained_on": {key: model.train_config.get(key) for key in ("dataset_type", "epochs", "preset", "decoding")},
    }
    atomic_write_bytes(folder / "model.safetensors", save(tensors))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
    atomic_write_text(folder / "vocab.json", json.dumps(model.vocab.to_dict()))
    if model.concepts is not None:
        atomic_write_text(folder / "concepts.json", json.dumps(model.concepts.to_dict()))
