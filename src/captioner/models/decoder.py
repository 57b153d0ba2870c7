"""What every caption decoder is: its settings (DecoderConfig) and its interface (Decoder).

Every decoder shares one step interface, so every decoding strategy works with every decoder:

    state = decoder.start(features)                 # features: pooled (B, C) or grid (B, L, C)
    logits, state, alpha = decoder.step(tokens, state)   # tokens (B,) -> logits (B, V); alpha (B, L) or None
    state = decoder.with_rows_per_image(state, K)   # K rows (beams, samples) per image
    state = decoder.select(state, rows, images)     # keep / reorder rows (beam search)

`forward(features, captions)` is the teacher-forced pass used in training: logits for every position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from captioner.models.concept_head import ConceptHead
from captioner.models.concept_input import ConceptMemory, ConceptVector, concept_probabilities

State = dict[str, torch.Tensor]  # rows on dim 0 (images x their beams); per_image_state entries: images


@dataclass
class DecoderConfig:
    """Constructor arguments, stored in checkpoints so a model is rebuilt from the file alone."""

    decoder: str = "attention"
    vocab_size: int = 0
    feature_dim: int = 1280
    embed_size: int = 512
    hidden_size: int = 512
    attention_dim: int = 512
    num_layers: int = 1
    drop_prob: float = 0.5
    image_init: str = "input"  # show-and-tell: image as first "input" or as the initial "state"
    deep_output: bool = False  # attention: words come from h, the attended context and the previous word
    embed_dropout: float = 0.0  # attention: dropout on the word embeddings in training
    num_concepts: int = 0  # a concept head (the tags) with this many concepts; 0: none (models made before it)
    concept_input: str = ""  # how the captions read the head's concepts (concept_input.py); "": they do not
    concept_top_k: int = 20  # concept_input "attend": the likeliest concepts attended to
    num_heads: int = 8  # transformer: attention heads of each layer

    def to_dict(self) -> dict:
        return asdict(self)


class Decoder(nn.Module):
    """What decoding strategies rely on; `concept_logits` gives the tags, where the model has a concept head."""

    uses_grid: bool = False
    # State entries that never change after start(): the image's own data (its features). They keep one row
    # per image, shared by all of the image's rows of changing state (its beams or samples), so several rows
    # per image cost no copies of the features.
    per_image_state: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.concept_head: ConceptHead | None = None

    def _add_concept_head(self, config: DecoderConfig) -> None:
        """The head's weights are drawn from a random stream of their own, so the rest of the run (dropout
        masks, sampling) draws what it would without a head."""
        if not config.num_concepts:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + 1)
            self.concept_head = ConceptHead(config.feature_dim, config.num_concepts)

    def caption_parameters(self) -> list[nn.Parameter]:
        """The parameters that write captions: all but the concept head's."""
        return [p for name, p in self.named_parameters() if not name.startswith("concept_head.")]

    def concept_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of P(concept | image) from the features the decoder reads."""
        if self.concept_head is None:
            raise ValueError("this model has no concept head")
        return self.concept_head(features)

    def _concept_state(self, features: torch.Tensor, dtype: torch.dtype) -> State:
        """The per-image state entry the captions read the concepts from (see concept_input.py)."""
        if not self.config.concept_input:
            return {}
        probabilities = concept_probabilities(self.concept_head, features)
        if self.config.concept_input == "project":
            return {"concept_vector": self.concept_vector(probabilities, dtype)}
        return {"concept_memory": self.concept_memory(probabilities, dtype)}

    def _add_concept_input(self, size: int) -> None:
        """The concepts' own embedding, made after every other layer so that a model without them draws its
        initial weights as before."""
        config = self.config
        if config.concept_input == "project":
            self.concept_vector = ConceptVector(config.num_concepts, size)
        elif config.concept_input == "attend":
            self.concept_memory = ConceptMemory(config.num_concepts, size, config.concept_top_k)

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        """Features arrive as stored (float16 from the cache); cast them once to the precision matmuls run in:
        the autocast dtype when autocast is on, else the parameters' own."""
        device = features.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.output.weight.dtype
        return features.to(dtype)

    def start(self, features: torch.Tensor) -> State:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        raise NotImplementedError

    def with_rows_per_image(self, state: State, count: int) -> State:
        """`count` rows of changing state per image (image by image, its rows together), from start()'s one."""
        return {name: value if name in self.per_image_state else value.repeat_interleave(count, dim=0)
                for name, value in state.items()}

    def select(self, state: State, rows: torch.Tensor, images: torch.Tensor | None = None) -> State:
        """Keep (or reorder) these rows of changing state and these images' own entries; by default the same
        index for both, as when every image has one row."""
        if images is None:
            shared = [value for name, value in state.items() if name in self.per_image_state]
            changing = [value for name, value in state.items() if name not in self.per_image_state]
            if shared and changing and shared[0].shape[0] != changing[0].shape[0]:
                raise ValueError("this state has several rows per image: pass the images to keep as well")
            images = rows
        return {name: value.index_select(0, images if name in self.per_image_state else rows)
                for name, value in state.items()}

    def reorder_beams(self, state: State, index: torch.Tensor) -> State:
        """select() for an index that only moves rows among the rows of the same image: the image's own
        entries stay as they are."""
        return {name: value if name in self.per_image_state else value.index_select(0, index)
                for name, value in state.items()}
