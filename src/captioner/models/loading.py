"""A trained model read back from its checkpoint: the decoder, its vocabulary, and how its features were made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from captioner.models.checkpoint import load_checkpoint
from captioner.data.vocab import Vocabulary
from captioner.models.decoders import Decoder, DecoderConfig, build_decoder
from captioner.devices import pick_device
from captioner.errors import CaptionerError, first_line


@dataclass
class TrainedModel:
    decoder: Decoder
    vocab: Vocabulary
    encoder_name: str
    encoder_settings: dict  # image_size, weights_sha256, transform, grid: what features the decoder expects
    encoder_state: dict | None  # weights of a fine-tuned encoder; None when it was frozen
    train_config: dict  # every training setting (dataset, encoder weights file, ...)
    source: Path
    device: torch.device

    @property
    def image_size(self) -> int:
        return int(self.encoder_settings["image_size"])

    @property
    def recommended_decoding(self) -> dict[str, object]:
        """How its training preset's models caption best (see presets.DECODING), or {} without a preset."""
        return recommended_in(self.train_config, self.source)


def load_trained(path: Path | str, device: str | torch.device | None = None) -> TrainedModel:
    """The model of a checkpoint in eval mode on `device` (default: CUDA when present)."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    run_device = device if isinstance(device, torch.device) else pick_device(device)
    try:
        config = DecoderConfig(**checkpoint["model_config"])
        decoder = build_decoder(config)
        decoder.load_state_dict(checkpoint["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CaptionerError(f"checkpoint {path} does not hold a model this captioner can rebuild: "
                             f"{first_line(error)}") from error
    vocab = Vocabulary.from_dict(checkpoint["vocab"], f"checkpoint {path}")
    return TrainedModel(decoder.to(run_device).eval(), vocab, checkpoint["encoder"], checkpoint["encoder_settings"],
                        checkpoint.get("encoder_state"), checkpoint.get("train_config", {}), path, run_device)


def recommended_in(train_config: dict, source: Path) -> dict[str, object]:
    """The decoding a model's training settings recommend: the one its preset stored with it, or, for a model
    trained from a preset before presets stored theirs (session 11), the preset's current one."""
    from captioner.training.presets import DECODING, RECOMMENDABLE

    decoding = train_config.get("decoding") or DECODING.get(train_config.get("preset"), {})
    unknown = sorted(set(decoding) - set(RECOMMENDABLE))
    if unknown:
        raise CaptionerError(f"{source} recommends decoding options this captioner does not know: {', '.join(unknown)}")
    return dict(decoding)


def recommended_decoding(path: Path | str) -> dict[str, object]:
    """The decoding a checkpoint or exported bundle recommends; a clear error when it has none."""
    from captioner.models.bundle import bundle_config, is_bundle

    path = Path(path)  # only the settings are read: the command loads the model itself
    settings = (bundle_config(path).get("trained_on", {}) if is_bundle(path)
                else load_checkpoint(path, mmap=True).get("train_config", {}))
    decoding = recommended_in(settings, path)
    if not decoding:
        raise CaptionerError(f"{path} was not trained with a preset, so it carries no recommended decoding; leave "
                             "out --recommended and choose the decoding flags")
    return decoding
