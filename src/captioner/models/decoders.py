"""The caption decoders by name: show-and-tell (lstm | gru), show-attend-tell soft attention (attention) and a
Transformer (transformer).
Every one has the step interface of decoder.py, so every decoding strategy works with every decoder."""

from __future__ import annotations

from captioner.models.concept_input import CONCEPT_INPUTS
from captioner.models.decoder import Decoder, DecoderConfig, State
from captioner.models.show_tell import ShowTell
from captioner.models.soft_attention import SoftAttention
from captioner.models.transformer import Transformer

__all__ = ["DECODER_TYPES", "Decoder", "DecoderConfig", "State", "build_decoder"]

DECODER_TYPES = ("lstm", "gru", "attention", "transformer")


def build_decoder(config: DecoderConfig) -> Decoder:
    if config.decoder not in DECODER_TYPES:
        raise ValueError(f"unknown decoder {config.decoder!r}; choose one of {', '.join(DECODER_TYPES)}")
    if config.concept_input and config.concept_input not in CONCEPT_INPUTS:
        raise ValueError(f"unknown concept input {config.concept_input!r}; choose one of {', '.join(CONCEPT_INPUTS)}")
    if config.concept_input and not config.num_concepts:
        raise ValueError("reading concepts needs a concept head: num_concepts > 0")
    if config.decoder == "transformer":
        return Transformer(config)
    return SoftAttention(config) if config.decoder == "attention" else ShowTell(config)
