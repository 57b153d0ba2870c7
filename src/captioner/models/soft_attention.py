"""Show, attend and tell (Xu et al.): an LSTM with soft attention over the feature grid."""

from __future__ import annotations

import torch
from torch import nn

from captioner.models.concept_input import ConceptMemory, per_row
from captioner.models.decoder import Decoder, DecoderConfig, State
from captioner.models.shared_linear import SharedWeight

ENERGY_CHUNK_ELEMENTS = 2**18  # fp32 attention energies computed at once when decoding on a CPU: 1 MB


class SoftAttention(Decoder):
    """Xu et al. (show, attend and tell), soft attention: additive attention over the feature grid, initial
    h/c from the mean feature, a gating scalar on the context, and attention weights returned every step.

    With `deep_output` the word is read from tanh(L_h h + L_z context + E previous word) instead of from h
    alone, as in Xu et al.'s own model: the output layer sees what was attended to directly.

    The LSTM cell is written out so that everything computed from the previous hidden state (attention query,
    gate, recurrent gates) is one matmul, and the word embeddings' share of the gates is one matmul for the
    whole caption; in training the recurrent weights' gradients are computed once per batch (SharedWeight).
    """

    uses_grid = True
    per_image_state = ("features", "projected", "concept_vector", "concept_gates", "concept_memory")

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        C, E, H, A = config.feature_dim, config.embed_size, config.hidden_size, config.attention_dim
        self.embed = nn.Embedding(config.vocab_size, E, padding_idx=0)
        self.feature_attention = nn.Linear(C, A)
        self.attention_score = nn.Linear(A, 1, bias=False)  # a bias would shift every score alike
        self.init_h = nn.Linear(C, H)
        self.init_c = nn.Linear(C, H)
        attends = config.concept_input == "attend"
        # attention query | gate | LSTM recurrent gates [| concept query]
        self.from_hidden = nn.Linear(H, A + C + 4 * H + (E if attends else 0))
        self.from_word = nn.Linear(E, 4 * H, bias=False)
        self.from_context = nn.Linear(C, 4 * H, bias=False)
        self.dropout = nn.Dropout(config.drop_prob)
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        self.deep_output = config.deep_output
        if self.deep_output:
            self.output_hidden = nn.Linear(H, E)
            self.output_context = nn.Linear(C, E, bias=False)
        self.output = nn.Linear(E if self.deep_output else H, config.vocab_size)
        self.splits = [A, C, 4 * H] + ([E] if attends else [])
        self._add_concept_input(E)
        if config.concept_input:  # the concepts' share of the initial h and c, of the gates, of the output layer
            self.concept_init = nn.Linear(E, 2 * H, bias=False)
            self.from_concepts = nn.Linear(E, 4 * H, bias=False)
            if self.deep_output:
                self.output_concepts = nn.Linear(E, E, bias=False)
        self._add_concept_head(config)

    def start(self, features: torch.Tensor) -> State:
        """features (B, L, C); the attention projection of the features is computed once here (doubled: see
        _attention_weights)."""
        mean = features.float().mean(1)
        features = self.prepare(features)  # cast once, not at every step
        state = {"features": features, "projected": 2 * self.feature_attention(features).float()}
        init_h, init_c = self.init_h(mean), self.init_c(mean)
        concepts = self._concept_state(features, features.dtype)
        if concepts:
            summary = concepts.get("concept_vector")
            if summary is None:
                summary = ConceptMemory.summary(concepts["concept_memory"])
            else:  # a constant share of every step's gates: computed once
                concepts["concept_gates"] = self.from_concepts(summary)
            from_h, from_c = self.concept_init(summary).chunk(2, dim=1)
            init_h, init_c = init_h + from_h, init_c + from_c
            state.update(concepts)
        return {**state, "h": torch.tanh(init_h), "c": torch.tanh(init_c)}

    def _cell(self, word_gates: torch.Tensor, state: State, from_hidden, from_context, from_concepts=None
              ) -> tuple[State, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One LSTM step; returns the new state, the attention weights, the (gated) context and what the step
        read of the concepts (None without them)."""
        query, gate, recurrent, *concept_query = from_hidden(state["h"]).split(self.splits, dim=1)
        projected, features = state["projected"], state["features"]  # one row per image: (I, L, A), (I, L, C)
        images, rows = projected.shape[0], query.shape[0]  # rows: images x their beams (or samples)
        # attention energies in fp32: a bf16 sigmoid over (I, R, L, A) is no faster on CPU and less accurate
        with torch.autocast(query.device.type, enabled=False):
            alpha = self._attention_weights(projected, 2 * query.float().view(images, rows // images, 1, -1))
        context = torch.bmm(alpha.to(features.dtype), features).view(rows, -1)  # (I*R, C)
        alpha = alpha.view(rows, -1)
        context = context * torch.sigmoid(gate)
        gates = word_gates + recurrent + from_context(context)  # (B, 4H), LSTM gate order i, f, g, o
        concepts = None
        if "concept_gates" in state:
            concepts = per_row(state["concept_vector"], rows)
            gates = gates + per_row(state["concept_gates"], rows)
        elif "concept_memory" in state:
            memory = state["concept_memory"]
            concepts = ConceptMemory.read(memory, concept_query[0].view(images, rows // images, -1)).view(rows, -1)
            gates = gates + from_concepts(concepts)
        i, f, g, o = gates.float().chunk(4, dim=1)
        c = torch.sigmoid(f) * state["c"] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return {**state, "h": h, "c": c}, alpha, context, concepts

    def _attention_weights(self, projected: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Doubled projections 2p (I, L, A) and queries 2q (I, R, 1, A) -> the soft attention weights (I, R, L),
        softmax over the regions of w . tanh(p + q).

        Computed as the softmax of 2w . sigmoid(2p + 2q): tanh(x) = 2 sigmoid(2x) - 1 and the softmax ignores
        the constant -w . 1, so the weights are the same, and the CPU's sigmoid is several times faster than its
        tanh (AVX-512, 2.7M values: 0.8 against 5 ms; the preset's training steps on a 2-core AMD EPYC: 137 ->
        168 captions/s).
        Decoding on a CPU computes them a few images at a time, so that they stay in the core's cache instead of
        making a round trip through memory (beam 3 on a 2-core CPU, ms per image: at batch 64, 2.3 in 1 MB
        pieces, 2.8 in 8 MB ones; at batch 100, 2.4 against 4.1 all at once)."""
        score = 2 * self.attention_score.weight.squeeze(0)
        if torch.is_grad_enabled() or projected.device.type != "cpu":
            return torch.softmax((projected.unsqueeze(1) + query).sigmoid_().matmul(score), dim=-1)
        per_chunk = max(1, ENERGY_CHUNK_ELEMENTS // (query.shape[1] * projected[0].numel()))
        scores = [(part.unsqueeze(1) + part_query).sigmoid_().matmul(score)
                  for part, part_query in zip(projected.split(per_chunk), query.split(per_chunk))]
        return torch.softmax(torch.cat(scores) if len(scores) > 1 else scores[0], dim=-1)

    def _logits(self, h: torch.Tensor, context: torch.Tensor, words: torch.Tensor, dropout: bool,
                concepts: torch.Tensor | None = None) -> torch.Tensor:
        """h (..., H), context (..., C), embedded previous words (..., E)[, concepts read (..., E)] -> logits
        (..., V). Dropout belongs to the teacher-forced pass only: step() (decoding, and self-critical sampling)
        reads the whole layer."""
        if self.deep_output:
            inputs = self.output_hidden(h) + self.output_context(context) + words
            if concepts is not None:
                inputs = inputs + self.output_concepts(concepts)
            h = torch.tanh(inputs)
        return self.output(self.dropout(h) if dropout else h)

    def forward(self, features: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, L, C); captions (B, T) -> logits (B, T-1, V) and attention weights (B, T-1, L)."""
        state = self.start(features)
        dtype = state["features"].dtype  # the compute precision
        words = self.embed_dropout(self.embed(captions[:, :-1]))  # (B, T-1, E)
        word_gates = self.from_word(words)  # (B, T-1, 4H): one matmul for all steps
        hidden_weight = SharedWeight(self.from_hidden.weight, dtype)
        context_weight = SharedWeight(self.from_context.weight, dtype)
        concept_weight = SharedWeight(self.from_concepts.weight, dtype) if "concept_memory" in state else None
        bias = self.from_hidden.bias.to(dtype)

        def from_hidden(h: torch.Tensor) -> torch.Tensor:
            return hidden_weight(h) + bias

        hiddens, alphas, contexts, concepts = [], [], [], []
        for step_gates in word_gates.unbind(1):
            state, alpha, context, read = self._cell(step_gates, state, from_hidden, context_weight, concept_weight)
            hiddens.append(state["h"])
            alphas.append(alpha)
            if self.deep_output:
                contexts.append(context)
                concepts.append(read)
        # (B, T-1, ...): one big output matmul instead of one per step
        hidden = torch.stack(hiddens, 1)
        context = torch.stack(contexts, 1) if self.deep_output else hidden
        read = None
        if self.deep_output and "concept_gates" in state:  # the same vector at every step
            read = state["concept_vector"].unsqueeze(1)
        elif self.deep_output and "concept_memory" in state:
            read = torch.stack(concepts, 1)
        return self._logits(hidden, context, words, dropout=True, concepts=read), torch.stack(alphas, 1)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        words = self.embed(tokens)
        state, alpha, context, read = self._cell(self.from_word(words), state, self.from_hidden, self.from_context,
                                                 getattr(self, "from_concepts", None))
        return self._logits(state["h"], context, words, dropout=False, concepts=read).float(), state, alpha
