"""A short stage after the captions (--embedding_epochs) that trains the text-image embedding search ranks a
library with: on the cached features, a few seconds an epoch, with an optimizer and random numbers of its own.

Each batch holds distinct photos with one of their captions drawn at random, so no photo is its own negative.
A sentence-reading text side gets every caption's sentence vector once, before the first epoch (the encoder
is frozen), and its epochs then cost about a second.
The epoch kept is the one whose dev retrieval (R@1 + R@5 + R@10, each dev caption finding its photo among the
dev photos) is best. An ensemble's members train one after the other, alike but for their random numbers.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from captioner.features.source import FeatureSource
from captioner.models.embedding import Embedding, EmbeddingEnsemble, TextImageEmbedding, pad
from captioner.training.batches import CaptionExamples

PHOTOS_PER_BATCH = 128
EMBEDDED_AT_ONCE = 500


def captions_by_photo(examples: CaptionExamples) -> dict[int, list[int]]:
    """Feature row -> the indices of its examples that hold a word."""
    grouped: dict[int, list[int]] = defaultdict(list)
    for index, (row, caption) in enumerate(zip(examples.rows.tolist(), examples.captions)):
        if len(caption) > 2:
            grouped[row].append(index)
    return dict(grouped)


class TextInputs:
    """What the embedding's text side reads for any of the examples: word ids, or sentence vectors computed
    once for all of them."""

    def __init__(self, model: Embedding, examples: CaptionExamples, device: torch.device) -> None:
        self.examples, self.device, self.vectors = examples, device, None
        if model.config.text == "sentence":
            if examples.words is None:
                raise ValueError("sentence vectors need the examples' words")
            self.vectors = model.text_inputs(examples.words, None, torch.device("cpu"))

    def __call__(self, indices: list[int]) -> torch.Tensor:
        if self.vectors is not None:
            return self.vectors[torch.as_tensor(indices, dtype=torch.long)].to(self.device)
        return pad([self.examples.captions[i][1:-1] for i in indices]).to(self.device)


def train_embedding(model: Embedding, features: FeatureSource, train: CaptionExamples, dev: CaptionExamples,
                    epochs: int, learning_rate: float, *, use_grid: bool, flip: bool, seed: int, device: torch.device,
                    log: Callable[[str], None], photos_per_batch: int = PHOTOS_PER_BATCH) -> list[dict]:
    """Train `model` (each member of an ensemble in turn) for `epochs`, leave each with the weights of its best
    dev epoch; one history entry per epoch (and member), then one for the whole ensemble."""
    members = list(model.members) if isinstance(model, EmbeddingEnsemble) else [model]
    started = time.perf_counter()
    texts, dev_texts = TextInputs(members[0], train, device), TextInputs(members[0], dev, device)
    if model.config.text == "sentence":
        log(f"Embedding: {model.config.sentence_model} read {len(train) + len(dev)} captions in "
            f"{time.perf_counter() - started:.0f} s")
    history, photos = [], captions_by_photo(train)
    for number, member in enumerate(members):
        name = f"Embedding {number + 1}/{len(members)}" if len(members) > 1 else "Embedding"
        entries = _train_member(member, features, photos, dev, texts, dev_texts, epochs, learning_rate,
                                use_grid=use_grid, flip=flip, seed=seed * 7919 + 2 + number, device=device,
                                log=lambda line, name=name: log(f"{name} {line}"), photos_per_batch=photos_per_batch)
        history += [{"member": number + 1, **entry} if len(members) > 1 else entry for entry in entries]
    if len(members) > 1:
        scores = retrieval_scores(model, features, dev, use_grid, device, both_views=flip, texts=dev_texts)
        history.append({"ensemble": len(members), **scores})
        log(f"Embedding, {len(members)} members together: dev R@1 {scores['R@1']:.1f} R@5 {scores['R@5']:.1f} "
            f"R@10 {scores['R@10']:.1f}")
    model.eval()
    return history


def _train_member(model: TextImageEmbedding, features: FeatureSource, photos: dict[int, list[int]],
                  dev: CaptionExamples, texts: TextInputs, dev_texts: TextInputs, epochs: int, learning_rate: float,
                  *, use_grid: bool, flip: bool, seed: int, device: torch.device, log: Callable[[str], None],
                  photos_per_batch: int) -> list[dict]:
    """`photos`: each training photo's caption indices, as captions_by_photo() gives them."""
    rows = np.asarray(sorted(photos))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * -(-len(rows) // photos_per_batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=max(steps, 1),
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state = [], -1.0, None
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        total = 0.0
        for start in range(0, len(order), photos_per_batch):
            batch_rows = order[start:start + photos_per_batch]
            picks = torch.randint(0, 1 << 30, (len(batch_rows),), generator=generator).tolist()
            captions = [photos[row][pick % len(photos[row])] for row, pick in zip(batch_rows.tolist(), picks)]
            mirrored = (torch.rand(len(batch_rows), generator=generator) < 0.5).numpy() if flip else None
            with torch.no_grad():
                batch = features.features(batch_rows, use_grid, flip=mirrored).to(device)
            loss = model.contrastive_loss(batch, texts(captions))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch_rows)
        scores = retrieval_scores(model, features, dev, use_grid, device, both_views=flip, texts=dev_texts)
        entry = {"epoch": epoch, "train_loss": total / len(order), **scores, "seconds": time.perf_counter() - started}
        history.append(entry)
        rsum = scores["R@1"] + scores["R@5"] + scores["R@10"]
        if rsum > best:
            best, best_state = rsum, {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(f"epoch {epoch}/{epochs}: train {entry['train_loss']:.3f} | dev R@1 {scores['R@1']:.1f} "
            f"R@5 {scores['R@5']:.1f} R@10 {scores['R@10']:.1f} | {entry['seconds']:.0f} s")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


@torch.no_grad()
def retrieval_scores(model: Embedding, features: FeatureSource, examples: CaptionExamples, use_grid: bool,
                     device: torch.device, both_views: bool = False, texts: TextInputs | None = None
                     ) -> dict[str, float]:
    """Text-to-image R@1/5/10 and median rank of the examples' captions among the examples' photos; each photo
    embedded with its mirror image when `both_views`, as a library does for models that flip-average."""
    model.eval()
    texts = texts or TextInputs(model, examples, device)
    photos = captions_by_photo(examples)
    rows = sorted(photos)

    def embedded(chunk: np.ndarray) -> torch.Tensor:
        if both_views:
            return model.embed_views(features.both_views(chunk, use_grid).to(device))
        return model.embed_images(features.features(chunk, use_grid).to(device))

    images = torch.cat([embedded(np.asarray(rows[i:i + EMBEDDED_AT_ONCE])) for i in range(0, len(rows), EMBEDDED_AT_ONCE)])
    queries = [(caption, index) for index, row in enumerate(rows) for caption in photos[row]]
    ranks = []
    for start in range(0, len(queries), EMBEDDED_AT_ONCE):
        chunk = queries[start:start + EMBEDDED_AT_ONCE]
        similarity = model.embed_text_input(texts([caption for caption, _ in chunk])) @ images.T
        answers = torch.tensor([index for _, index in chunk], device=device)
        mine = similarity.gather(1, answers.unsqueeze(1))
        ranks += (1 + (similarity > mine).sum(1)).tolist()
    ranks_array = np.asarray(ranks)
    return {"R@1": 100 * float((ranks_array <= 1).mean()), "R@5": 100 * float((ranks_array <= 5).mean()),
            "R@10": 100 * float((ranks_array <= 10).mean()), "median_rank": float(np.median(ranks_array))}
