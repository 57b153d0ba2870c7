"""Show and tell (Vinyals et al.): an LSTM or GRU over the pooled image vector."""

from __future__ import annotations

import torch
from torch import nn

from captioner.models.concept_input import ConceptMemory, per_row
from captioner.models.decoder import Decoder, DecoderConfig, State


class ShowTell(Decoder):
    """Vinyals et al.: the pooled image vector is the first input of an LSTM/GRU (or its initial state).

    Reading concepts, each step's input is the word plus the concept vector ("project"), or plus what the word
    reads from the concept memory ("attend": the input attention of You et al.); the image input too gets the
    concept vector (or the memory's sum)."""

    per_image_state = ("concept_vector", "concept_memory")

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        rnn = nn.LSTM if config.decoder == "lstm" else nn.GRU
        self.is_lstm = config.decoder == "lstm"
        self.embed = nn.Embedding(config.vocab_size, config.embed_size, padding_idx=0)
        self.image_project = nn.Linear(config.feature_dim, config.embed_size)
        if config.image_init == "state":
            self.init_h = nn.Linear(config.feature_dim, config.num_layers * config.hidden_size)
            self.init_c = nn.Linear(config.feature_dim, config.num_layers * config.hidden_size) if self.is_lstm else None
        self.rnn = rnn(config.embed_size, config.hidden_size, config.num_layers, batch_first=True,
                       dropout=config.drop_prob if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.drop_prob)
        self.output = nn.Linear(config.hidden_size, config.vocab_size)
        self._add_concept_input(config.embed_size)
        if config.concept_input == "attend":
            self.concept_query = nn.Linear(config.embed_size, config.embed_size, bias=False)
        self._add_concept_head(config)

    def _with_concepts(self, words: torch.Tensor, state: State) -> torch.Tensor:
        """Inputs (B, T, E) of B rows -> the same plus what they read from their images' concepts."""
        if "concept_vector" in state:
            return words + per_row(state["concept_vector"], words.shape[0]).unsqueeze(1)
        if "concept_memory" in state:
            memory = state["concept_memory"]
            rows, steps, size = words.shape
            query = self.concept_query(words).reshape(memory.shape[0], -1, size)  # (I, R*T, E)
            return words + ConceptMemory.read(memory, query).reshape(rows, steps, size)
        return words

    def _initial(self, pooled: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor | None:
        if self.config.image_init == "input":
            return None
        layers, batch = self.config.num_layers, pooled.shape[0]
        h = torch.tanh(self.init_h(pooled)).view(batch, layers, -1).transpose(0, 1).contiguous()
        if not self.is_lstm:
            return h
        c = torch.tanh(self.init_c(pooled)).view(batch, layers, -1).transpose(0, 1).contiguous()
        return h, c

    def _image_step(self, pooled: torch.Tensor, concepts: State):
        """Feed the image as the first input; its output is not a word, so it is discarded."""
        image = self.dropout(self.image_project(pooled))  # (B, E)
        if "concept_vector" in concepts:
            image = image + concepts["concept_vector"]
        elif "concept_memory" in concepts:
            image = image + ConceptMemory.summary(concepts["concept_memory"])
        _, hidden = self.rnn(image.unsqueeze(1))
        return hidden

    def _begin(self, features: torch.Tensor):
        """The prepared features' initial hidden state and concept entries."""
        concepts = self._concept_state(features, features.dtype)
        hidden = self._initial(features) if self.config.image_init == "state" else self._image_step(features, concepts)
        return hidden, concepts

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, None]:
        """features (B, C) pooled; captions (B, T) starting with <start> -> logits (B, T-1, V)."""
        hidden, concepts = self._begin(self.prepare(features))
        words = self._with_concepts(self.dropout(self.embed(captions[:, :-1])), concepts)  # (B, T-1, E)
        outputs, _ = self.rnn(words, hidden)  # (B, T-1, H)
        return self.output(self.dropout(outputs)), None

    def start(self, features: torch.Tensor) -> State:
        hidden, concepts = self._begin(self.prepare(features))
        if self.is_lstm:
            return {"h": hidden[0].transpose(0, 1), "c": hidden[1].transpose(0, 1), **concepts}  # (B, layers, H)
        return {"h": hidden.transpose(0, 1), **concepts}

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, None]:
        h = state["h"].transpose(0, 1).contiguous()
        hidden = (h, state["c"].transpose(0, 1).contiguous()) if self.is_lstm else h
        output, hidden = self.rnn(self._with_concepts(self.embed(tokens).unsqueeze(1), state), hidden)
        logits = self.output(output.squeeze(1)).float()
        concepts = {name: state[name] for name in self.per_image_state if name in state}
        if self.is_lstm:
            return logits, {"h": hidden[0].transpose(0, 1), "c": hidden[1].transpose(0, 1), **concepts}, None
        return logits, {"h": hidden.transpose(0, 1), **concepts}, None
