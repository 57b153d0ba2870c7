"""ONNX files of a trained model, for runtimes without PyTorch: the encoder, the decoder's start (initial
state from the features) and one decoder step. A caller runs start once and step once per word, choosing
words as captioner/decoding/strategies.py does.

    encoder.onnx        pixels (B, 3, S, S) -> features (B, H*W, C)   (round to float16 as the cache does)
    decoder_start.onnx  features -> state.* tensors (names in config.json under "onnx")
    decoder_step.onnx   tokens (B,), state.* -> logits (B, V), next.*[, attention (B, H*W)]
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from captioner.errors import CaptionerError
from captioner.io import atomic_write_text
from captioner.models.loading import TrainedModel


class _EncoderGrid(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder  # its forward, not the bare trunk: a tuned encoder rounds the grid below its blocks

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels).flatten(2).transpose(1, 2)


class _Start(nn.Module):
    def __init__(self, decoder: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.decoder, self.names = decoder, names

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.decoder.start(features)
        return tuple(state[name] for name in self.names)


class _Step(nn.Module):
    def __init__(self, decoder: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.decoder, self.names = decoder, names

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_state, alpha = self.decoder.step(tokens, dict(zip(self.names, state)))
        outputs = (logits, *(new_state[name] for name in self.names))
        return outputs + ((alpha,) if alpha is not None else ())


def check_exportable(model: TrainedModel) -> None:
    """A clear error, before anything is written, for a model --onnx cannot export or a missing exporter."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as error:
        raise CaptionerError("--onnx needs the onnx extras: pip install 'captioner[onnx]'") from error
    if model.decoder.config.decoder == "transformer":
        raise CaptionerError("--onnx does not export transformer decoders yet: their step's key/value cache grows by "
                             "one position per word, which the exported step's fixed state shapes cannot hold; "
                             "export without --onnx (the bundle loads it) or use an lstm/gru/attention model")


def export_onnx(model: TrainedModel, folder: Path) -> dict:
    """Write the three ONNX files and record their input/output names in config.json; returns that record."""
    check_exportable(model)
    decoder = model.decoder.float().cpu().eval()
    size = model.image_size
    pixels = torch.randn(2, 3, size, size)
    grid = _EncoderGrid(model.encoder.float().cpu().eval())
    with torch.no_grad():
        features = grid(pixels)
        example = features if decoder.uses_grid else features.mean(1)
        names = sorted(decoder.start(example))
    tokens = torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        state = _Start(decoder, names)(example)
    batch = torch.export.Dim("batch", min=1, max=4096)
    state_shapes = {name: {0: batch} for name in names}
    inputs = [f"state.{name}" for name in names]  # ONNX names must differ from each other and from outputs
    step_outputs = ["logits", *(f"next.{name}" for name in names)] + (["attention"] if decoder.uses_grid else [])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each pass
        warnings.simplefilter("ignore")
        torch.onnx.export(grid, (pixels,), str(folder / "encoder.onnx"), input_names=["pixels"],
                          output_names=["features"], dynamic_shapes={"pixels": {0: batch}}, dynamo=True, external_data=False)
        torch.onnx.export(_Start(decoder, names), (example,), str(folder / "decoder_start.onnx"),
                          input_names=["features"], output_names=inputs, dynamic_shapes={"features": {0: batch}},
                          dynamo=True, external_data=False)
        torch.onnx.export(_Step(decoder, names), (tokens, *state), str(folder / "decoder_step.onnx"),
                          input_names=["tokens", *inputs], output_names=step_outputs,
                          dynamic_shapes={"tokens": {0: batch}, "state": tuple(state_shapes[n] for n in names)},
                          dynamo=True, external_data=False)
    record = {"encoder": {"inputs": ["pixels"], "outputs": ["features"]},
              "decoder_start": {"inputs": ["features"], "outputs": inputs},
              "decoder_step": {"inputs": ["tokens", *inputs], "outputs": step_outputs},
              "note": "decoder_start takes the grid (B, H*W, C) for attention models and the pooled features "
                      "(B, C), the grid's mean over H*W, for lstm/gru; feed each step's next.* back as state.*"}
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["onnx"] = record
    atomic_write_text(config_path, json.dumps(config, indent=2))
    return record
