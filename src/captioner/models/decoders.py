"""Caption decoders: show-and-tell (LSTM | GRU) and show-attend-tell soft attention.

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
from captioner.models.concept_input import CONCEPT_INPUTS, ConceptMemory, ConceptVector, concept_probabilities, per_row
from captioner.models.shared_linear import SharedWeight

DECODER_TYPES = ("lstm", "gru", "attention")
ENERGY_CHUNK_ELEMENTS = 2**18  # fp32 attention energies computed at once when decoding on a CPU: 1 MB

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

    def _prepare(self, features: torch.Tensor) -> torch.Tensor:
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
        hidden, concepts = self._begin(self._prepare(features))
        words = self._with_concepts(self.dropout(self.embed(captions[:, :-1])), concepts)  # (B, T-1, E)
        outputs, _ = self.rnn(words, hidden)  # (B, T-1, H)
        return self.output(self.dropout(outputs)), None

    def start(self, features: torch.Tensor) -> State:
        hidden, concepts = self._begin(self._prepare(features))
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
        features = self._prepare(features)  # cast once, not at every step
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


def build_decoder(config: DecoderConfig) -> Decoder:
    if config.decoder not in DECODER_TYPES:
        raise ValueError(f"unknown decoder {config.decoder!r}; choose one of {', '.join(DECODER_TYPES)}")
    if config.concept_input and config.concept_input not in CONCEPT_INPUTS:
        raise ValueError(f"unknown concept input {config.concept_input!r}; choose one of {', '.join(CONCEPT_INPUTS)}")
    if config.concept_input and not config.num_concepts:
        raise ValueError("reading concepts needs a concept head: num_concepts > 0")
    return SoftAttention(config) if config.decoder == "attention" else ShowTell(config)
