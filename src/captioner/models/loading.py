"""The one place that turns a file into a trained model: a checkpoint (`best.pt`) or an exported bundle folder.

    model = load_model("runs/RUN/best.pt")                 # decoder, vocabulary, how its features were made
    model = load_model("bundle/", with_encoder=True)       # ... and the encoder, to caption images
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from captioner.data.concepts import ConceptVocabulary
from captioner.data.vocab import Vocabulary
from captioner.devices import pick_device
from captioner.errors import CaptionerError, first_line
from captioner.features.encoders import Encoder, build_architecture, create_encoder, get_spec
from captioner.models.checkpoint import load_checkpoint
from captioner.models.decoders import Decoder, DecoderConfig, build_decoder
from captioner.models.embedding import Embedding, EmbeddingConfig, build_embedding

BUNDLE_FORMAT, BUNDLE_VERSION = "captioner-bundle", 1


@dataclass
class TrainedModel:
    decoder: Decoder
    vocab: Vocabulary
    encoder_name: str
    encoder_settings: dict  # image_size, weights_sha256, transform, grid: what features the decoder expects
    encoder_state: dict | None  # weights of a fine-tuned encoder; None when it was frozen
    train_config: dict  # every training setting (dataset, encoder weights file, preset, decoding, ...)
    source: Path
    device: torch.device
    encoder: Encoder | None = None  # loaded with with_encoder=True
    concepts: ConceptVocabulary | None = None  # what the concept head tags images with; None without a head
    embedding: Embedding | None = None  # the text-image embedding search ranks with (--embedding_epochs)
    tuned: dict | None = None  # a checkpoint's tuned encoder blocks (--tune_encoder_epochs); None: registry weights

    @property
    def image_size(self) -> int:
        return int(self.encoder_settings["image_size"])


def load_model(path: Path | str, device: str | torch.device | None = None, *, with_encoder: bool = False,
               encoder_weights: Path | str | None = None) -> TrainedModel:
    """The model of a checkpoint or bundle in eval mode on `device` (default: CUDA when present); with the
    encoder too when asked (a checkpoint's frozen encoder comes from its registry weights, or
    `encoder_weights`, checked to be the ones it was trained on)."""
    path = Path(path)
    run_device = device if isinstance(device, torch.device) else pick_device(device)
    if is_bundle(path):
        return _load_bundle(path, run_device)
    model = _load_checkpoint_model(path, run_device)
    if with_encoder:
        model.encoder = _registry_encoder(model, encoder_weights)
    return model


def _load_checkpoint_model(path: Path, device: torch.device) -> TrainedModel:
    checkpoint = load_checkpoint(path)
    try:
        decoder = build_decoder(DecoderConfig(**checkpoint["model_config"]))
        decoder.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CaptionerError(f"checkpoint {path} does not hold a model this captioner can rebuild: "
                             f"{first_line(error)}") from error
    vocab = Vocabulary.from_dict(checkpoint["vocab"], f"checkpoint {path}")
    saved = checkpoint.get("concepts")
    concepts = ConceptVocabulary.from_dict(saved, f"checkpoint {path}") if saved else None
    embedding = _embedding(checkpoint.get("embedding"), path)
    return TrainedModel(decoder.to(device).eval(), vocab, checkpoint["encoder"], checkpoint["encoder_settings"],
                        checkpoint.get("encoder_state"), checkpoint.get("train_config", {}), path, device,
                        concepts=concepts, embedding=embedding.to(device) if embedding is not None else None,
                        tuned=checkpoint.get("tuned_encoder"))


def _embedding(saved: dict | None, source: Path) -> Embedding | None:
    """The embedding saved as {"config": ..., "state": ...}; None for models trained without one."""
    if not saved:
        return None
    try:
        return build_embedding(EmbeddingConfig(**saved["config"]), saved["state"]).eval()
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CaptionerError(f"{source}: its text-image embedding does not load: {first_line(error)}") from error


def _registry_encoder(model: TrainedModel, encoder_weights: Path | str | None) -> Encoder:
    weights = encoder_weights or model.train_config.get("encoder_weights")
    if model.tuned is not None:
        return tuned_encoder(model.encoder_name, Path(weights) if weights else None, model.tuned, model.source)
    encoder = create_encoder(model.encoder_name, Path(weights) if weights else None)
    if model.encoder_state is not None:
        encoder.load_state_dict(model.encoder_state)
        return encoder
    expected = model.encoder_settings.get("weights_sha256")
    if expected and encoder.weights_sha256 != expected:
        raise CaptionerError(f"the {model.encoder_name} weights differ from the ones {model.source} was trained on; "
                             "pass the same encoder_weights")
    return encoder


def tuned_encoder(name: str, weights: Path | None, tuned: dict, source: Path | str = "the checkpoint") -> Encoder:
    """The registry encoder with a checkpoint's tuned blocks in place of its own, checked to be the ones tuned."""
    encoder = create_encoder(name, weights)
    if encoder.weights_sha256 != tuned["base_sha256"]:
        raise CaptionerError(f"{source} tuned other {name} weights than these (SHA-256 "
                             f"{tuned['base_sha256'][:12]}...); pass the --encoder_weights it was trained with")
    _, top = encoder.split(tuned["blocks"])
    try:
        top.load_state_dict(tuned["state"])
    except RuntimeError as error:
        raise CaptionerError(f"{source}: its tuned encoder blocks do not fit {name}: {first_line(error)}") from error
    encoder.tuned_blocks, encoder.weights_sha256 = tuned["blocks"], tuned["weights_sha256"]
    return encoder


def trained_settings(path: Path | str) -> dict:
    """What a checkpoint or bundle says of its training (dataset, preset, decoding), without loading its
    weights (milliseconds: the command loads the model itself)."""
    path = Path(path)
    if is_bundle(path):
        return bundle_config(path).get("trained_on", {})
    return load_checkpoint(path, mmap=True).get("train_config", {})


# ---------------------------------------------------------------- bundles (written by models/bundle.py)


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


def _load_bundle(folder: Path, device: torch.device) -> TrainedModel:
    """A bundle carries its encoder's weights, so its model always comes with the encoder."""
    config = bundle_config(folder)
    try:
        vocab_data = json.loads((folder / "vocab.json").read_text())
        concepts_file = folder / "concepts.json"
        concepts = (ConceptVocabulary.from_dict(json.loads(concepts_file.read_text()), str(concepts_file))
                    if concepts_file.is_file() else None)
        tensors = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as error:
        raise CaptionerError(f"{folder} is not a readable captioner bundle ({first_line(error)})") from error
    settings = config["encoder"]
    decoder = build_decoder(DecoderConfig(**config["decoder"]))
    try:
        decoder.load_state_dict(_prefixed(tensors, "decoder."))
    except RuntimeError as error:
        raise CaptionerError(f"{folder}/model.safetensors does not match its config.json: "
                             f"{first_line(error)}") from error
    encoder = build_architecture(settings["name"], settings.get("weights_sha256") or "bundle")
    encoder.tuned_blocks = int(settings.get("tuned_blocks") or 0)
    try:
        encoder.trunk.load_state_dict(_prefixed(tensors, "encoder."))
    except RuntimeError as error:
        raise CaptionerError(f"{folder}/model.safetensors: its encoder weights do not fit the {settings['name']} "
                             "encoder that config.json names (edited or mixed files?); export the model again"
                             ) from error
    encoder_settings = {**settings, "transform": get_spec(settings["name"]).transform_description(settings["image_size"])}
    embedding = (_embedding({"config": config["embedding"], "state": _prefixed(tensors, "embedding.")},
                            folder / "model.safetensors") if config.get("embedding") else None)
    return TrainedModel(decoder.to(device).eval(), Vocabulary.from_dict(vocab_data, f"{folder}/vocab.json"),
                        settings["name"], encoder_settings, None, config.get("trained_on", {}), folder, device,
                        encoder, concepts, embedding.to(device) if embedding is not None else None)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
