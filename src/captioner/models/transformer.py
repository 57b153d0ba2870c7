"""A Transformer decoder (Vaswani et al.) over the feature grid: causal self-attention over the words so far and
cross-attention over the projected grid (and the predicted concepts, as extra memory tokens).

Teacher forcing runs every position of a caption at once; decoding runs one position per step with a key/value
cache of the words so far, so it joins the step interface of decoder.py and every decoding strategy works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from captioner.models.decoder import Decoder, DecoderConfig, State


def sinusoidal_positions(start: int, count: int, width: int, device: torch.device) -> torch.Tensor:
    """(count, width) position codes for positions start..start+count-1: no learned table, so no length limit."""
    positions = torch.arange(start, start + count, device=device, dtype=torch.float32).unsqueeze(1)
    rates = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    codes = torch.zeros(count, width, device=device)
    codes[:, 0::2] = torch.sin(positions * rates)
    codes[:, 1::2] = torch.cos(positions * rates[: width // 2])
    return codes


def _per_image(query: torch.Tensor, images: int) -> torch.Tensor:
    """Queries (R, h, T, d) of R rows -> (I, h, r*T, d): each image's r rows (beams, samples) as more query
    positions over the same memory, so the memory is never copied per row."""
    rows, heads, steps, size = query.shape
    if rows == images:
        return query
    return query.view(images, rows // images, heads, steps, size).transpose(1, 2).reshape(images, heads, -1, size)


def _per_row(values: torch.Tensor, rows: int) -> torch.Tensor:
    """The inverse of _per_image: (I, h, r*T, d) -> (R, h, T, d)."""
    images, heads, _, size = values.shape
    if rows == images:
        return values
    return values.view(images, heads, rows // images, -1, size).transpose(1, 2).reshape(rows, heads, -1, size)


class DecoderLayer(nn.Module):
    """Pre-norm: self-attention, cross-attention and feed-forward blocks, each added to the residual stream."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the model width ({width}) must be a multiple of the number of heads ({heads})")
        self.heads = heads
        self.self_norm, self.cross_norm, self.feed_norm = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross_query = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.feed_in, self.feed_out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.drop_prob = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, h, T, D/h)."""
        batch, steps, width = x.shape
        return x.view(batch, steps, self.heads, width // self.heads).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        batch, heads, steps, size = x.shape
        return x.transpose(1, 2).reshape(batch, steps, heads * size)

    def memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory's keys and values (I, h, M, d) for this layer's cross-attention: computed once per image."""
        keys, values = self.cross_kv(memory).chunk(2, dim=-1)
        return self._split(keys), self._split(values)

    def forward(self, x: torch.Tensor, cross: tuple[torch.Tensor, torch.Tensor],
                past: tuple[torch.Tensor, torch.Tensor] | None = None, weights: bool = False, drop: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """x (R, T, D). Without `past`, the T positions attend causally to each other (teacher forcing); with it
        (the cached keys and values (R, h, t, d) of earlier positions), the new positions attend to those and
        themselves. Returns x, this layer's keys and values so far, and, if asked, the cross-attention weights
        averaged over heads (R, T, M). Dropout only where `drop` says: the teacher-forced pass in training."""
        def dropout(values: torch.Tensor) -> torch.Tensor:
            return F.dropout(values, self.drop_prob, training=drop)

        query, key, value = (self._split(part) for part in self.self_qkv(self.self_norm(x)).chunk(3, dim=-1))
        if past is not None:
            key, value = torch.cat([past[0], key], 2), torch.cat([past[1], value], 2)
        causal = past is None and x.shape[1] > 1
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=causal)
        x = x + dropout(self.self_out(self._merge(attended)))
        rows, (memory_keys, memory_values) = x.shape[0], cross
        query = _per_image(self._split(self.cross_query(self.cross_norm(x))), memory_keys.shape[0])
        alpha = None
        if weights:  # written out: the fused kernel does not return its weights
            scores = query.float() @ memory_keys.float().transpose(-1, -2) / math.sqrt(query.shape[-1])
            probabilities = torch.softmax(scores, dim=-1)
            attended = probabilities.to(memory_values.dtype) @ memory_values
            alpha = _per_row(probabilities, rows).mean(1)  # (R, T, M)
        else:
            attended = F.scaled_dot_product_attention(query, memory_keys, memory_values)
        x = x + dropout(self.cross_out(self._merge(_per_row(attended, rows))))
        x = x + dropout(self.feed_out(dropout(F.gelu(self.feed_in(self.feed_norm(x))))))
        return x, (key, value), alpha


class Transformer(Decoder):
    """`num_layers` pre-norm decoder layers of width `hidden_size` with `num_heads` heads, sinusoidal positions,
    output weights tied to the word embeddings. The memory is the grid projected to the model width (plus, with
    --use_concepts, the concept vector or the likeliest concepts as extra tokens).

    State, per layer n: the memory's keys and values `memory_keys{n}`, `memory_values{n}` (I, h, M, d), one row
    per image, and the self-attention cache of the words so far `self_keys{n}`, `self_values{n}` (R, h, t, d), one
    row per beam or sample, which grows by one position per step. One entry per layer, so that a step extends each
    layer's cache once instead of also restacking all layers."""

    uses_grid = True

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.width = width = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, width, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=width ** -0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.feature_project = nn.Sequential(nn.Linear(config.feature_dim, width), nn.ReLU(), nn.LayerNorm(width))
        self.layers = nn.ModuleList(DecoderLayer(width, config.num_heads, config.drop_prob)
                                    for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, config.vocab_size)
        self.output.weight = self.embed.weight
        self.per_image_state = tuple(f"memory_{part}{n}" for n in range(config.num_layers)
                                     for part in ("keys", "values"))
        self._add_concept_input(width)
        self._add_concept_head(config)

    def _memory(self, features: torch.Tensor) -> torch.Tensor:
        """(B, L, C) prepared features -> memory tokens (B, L [+ concepts], D)."""
        memory = self.feature_project(features)
        concepts = self._concept_state(features, memory.dtype)
        if "concept_vector" in concepts:
            memory = torch.cat([memory, concepts["concept_vector"].unsqueeze(1).to(memory.dtype)], 1)
        elif "concept_memory" in concepts:  # its values: the embeddings scaled by their probability
            memory = torch.cat([memory, concepts["concept_memory"][:, :, 1].to(memory.dtype)], 1)
        return memory

    def _concept_tokens(self) -> int:
        """How many memory tokens, after the grid's, are concepts."""
        if self.config.concept_input == "project":
            return 1
        return self.concept_memory.top_k if self.config.concept_input == "attend" else 0

    def _words(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Tokens (R, T) at positions start.. -> the layers' input (R, T, D)."""
        words = self.embed(tokens) * math.sqrt(self.width)
        return words + sinusoidal_positions(start, tokens.shape[1], self.width, tokens.device).to(words.dtype)

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, None]:
        """features (B, L, C); captions (B, T) -> logits (B, T-1, V); every position at once, causally masked.
        No attention weights: the doubly stochastic penalty of soft attention does not apply here. Dropout
        belongs to this pass only: step() (decoding, and self-critical sampling) reads the whole model."""
        drop, p = self.training, self.config.drop_prob
        memory = F.dropout(self._memory(self.prepare(features)), p, training=drop)
        x = F.dropout(self._words(captions[:, :-1], 0), p, training=drop)  # the residual stream stays fp32
        for layer in self.layers:
            x, _, _ = layer(x, layer.memory(memory), drop=drop)
        return self.output(self.final_norm(x)), None

    def start(self, features: torch.Tensor) -> State:
        features = self.prepare(features)
        memory = self._memory(features)
        state: State = {}
        for n, layer in enumerate(self.layers):
            keys, values = layer.memory(memory)
            empty = keys[:, :, :0]  # (B, h, 0, d): no words yet
            state.update({f"memory_keys{n}": keys, f"memory_values{n}": values,
                          f"self_keys{n}": empty, f"self_values{n}": empty})
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """tokens (R,) -> logits (R, V), the state with this position cached, and the last layer's attention over
        the grid regions (R, L), averaged over heads."""
        x = self._words(tokens.unsqueeze(1), state["self_keys0"].shape[2])
        state, last = dict(state), len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            x, (state[f"self_keys{n}"], state[f"self_values{n}"]), weights = layer(
                x, (state[f"memory_keys{n}"], state[f"memory_values{n}"]),
                (state[f"self_keys{n}"], state[f"self_values{n}"]), weights=n == last)
        alpha = weights[:, 0, : weights.shape[2] - self._concept_tokens()]  # the grid regions come first
        alpha = alpha / alpha.sum(1, keepdim=True)  # over the grid alone, as the other attention models
        return self.output(self.final_norm(x[:, 0])).float(), state, alpha
