"""`captioner export`: a bundle folder that loads without the training code's pickles.

    model.safetensors   encoder trunk ("encoder.*") and decoder ("decoder.*") weights
    config.json         decoder architecture, encoder name and preprocessing, feature grid, provenance
    vocab.json          the vocabulary
    encoder.onnx, decoder_step.onnx   with --onnx: the encoder, and one decoder step (attention models)

`Captioner.load(folder)` reads it back and gives the checkpoint's captions exactly (the same weights, the
same preprocessing).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from captioner.data.vocab import Vocabulary
from captioner.models.decoders import Decoder, DecoderConfig, build_decoder
from captioner.devices import pick_device
from captioner.features.encoders import Encoder, build_architecture, get_spec
from captioner.errors import CaptionerError, first_line
from captioner.io import atomic_write_bytes, atomic_write_text
from captioner.models.loading import TrainedModel

BUNDLE_FORMAT, BUNDLE_VERSION = "captioner-bundle", 1


def export_bundle(model: TrainedModel, encoder: Encoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.trunk.state_dict().items()}
    tensors |= {f"decoder.{k}": v.detach().cpu().contiguous() for k, v in model.decoder.state_dict().items()}
    spec = encoder.spec
    config = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "decoder": model.decoder.config.to_dict(),
        "encoder": {"name": model.encoder_name, "image_size": model.image_size,
                    "grid": list(model.encoder_settings["grid"]), "channels": spec.channels,
                    "weights_sha256": model.encoder_settings.get("weights_sha256"),
                    "fine_tuned": model.encoder_state is not None},
        "preprocessing": {"description": spec.transform_description(model.image_size), "resize": "bilinear, squash",
                          "size": model.image_size, "mean": list(spec.mean), "std": list(spec.std),
                          "features": "float16-rounded grid (H*W, C); pooled = mean of the grid"},
        "source_checkpoint": str(model.source),
        "trained_on": {key: model.train_config.get(key) for key in ("dataset_type", "epochs", "preset", "decoding")},
    }
    atomic_write_bytes(folder / "model.safetensors", save(tensors))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
    atomic_write_text(folder / "vocab.json", json.dumps(model.vocab.to_dict()))


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def bundle_config(folder: Path) -> dict:
    """The bundle's config.json, checked to be one this captioner reads."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise CaptionerError(f"{folder} is not a readable captioner bundle ({error})") from error
    if config.get("format") != BUNDLE_FORMAT or config.get("version") != BUNDLE_VERSION:
        raise CaptionerError(f"{folder}/config.json is not a captioner bundle of version {BUNDLE_VERSION}")
    return config


def load_bundle(folder: Path, device: str | torch.device | None = None) -> tuple[TrainedModel, Encoder]:
    config = bundle_config(folder)
    try:
        vocab_data = json.loads((folder / "vocab.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as error:
        raise CaptionerError(f"{folder} is not a readable captioner bundle ({first_line(error)})") from error
    run_device = device if isinstance(device, torch.device) else pick_device(device)
    settings = config["encoder"]
    decoder = _load_decoder(DecoderConfig(**config["decoder"]), tensors, folder)
    encoder = build_architecture(settings["name"], settings.get("weights_sha256") or "bundle")
    try:
        encoder.trunk.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")})
    except RuntimeError as error:
        raise CaptionerError(f"{folder}/model.safetensors: its encoder weights do not fit the {settings['name']} "
                             "encoder that config.json names (edited or mixed files?); export the model again"
                             ) from error
    model = TrainedModel(decoder.to(run_device).eval(), Vocabulary.from_dict(vocab_data, f"{folder}/vocab.json"),
                         settings["name"], {**settings, "transform": get_spec(settings["name"]).transform_description(
                             settings["image_size"])}, None, config.get("trained_on", {}), folder, run_device)
    return model, encoder


def _load_decoder(config: DecoderConfig, tensors: dict[str, torch.Tensor], folder: Path) -> Decoder:
    decoder = build_decoder(config)
    try:
        decoder.load_state_dict({k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")})
    except RuntimeError as error:
        raise CaptionerError(f"{folder}/model.safetensors does not match its config.json: "
                             f"{first_line(error)}") from error
    return decoder
