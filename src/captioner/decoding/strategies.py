"""Turn image features into captions, batched over images: every image of the batch decodes at once.

Three strategies share the decoders' step interface, so each works with every decoder:
greedy, beam search (images x beams in one batch), and sampling (temperature, top-k, top-p).
The decoder runs in the reduced precision it was trained in where that is fast (bf16 on AMX CPUs and CUDA):
its matmuls run several times faster than in fp32. Logits are turned into log-probabilities in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from captioner.data.vocab import Vocabulary
from captioner.decoding.settings import DecodeSettings
from captioner.models.decoders import Decoder
from captioner.devices import autocast
from captioner.models.ensemble import Averaged

@dataclass
class Decoded:
    """Token ids (without <start>/<end>), their summed log-probability, and per-step attention if any."""

    tokens: list[int]
    log_prob: float
    attention: torch.Tensor | None = None  # (steps, L): one row per emitted word (and <end> when emitted)
    score: float | None = None  # what the hypotheses were ranked by (beam search: with the length penalty)


def decode(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary,
           settings: DecodeSettings) -> list[list[Decoded]]:
    """Captions of every image: a list (best first, `num_captions` long at most) per image."""
    if settings.flip_average:
        if features.dim() < 3 or features.shape[1] != 2:
            raise ValueError(f"flip_average needs features (B, 2, ...): each image and its mirror image; got "
                             f"{tuple(features.shape)}")
        decoder = Averaged([decoder, decoder])
    with autocast(features.device, settings.amp):
        if settings.strategy == "greedy":
            return [[result] for result in greedy(decoder, features, vocab, settings.max_length)]
        if settings.strategy == "beam":
            return beam_search(decoder, features, vocab, settings.beam_size, settings.max_length,
                               settings.length_penalty, settings.no_repeat_ngram, settings.num_captions)
        return sample(decoder, features, vocab, settings.num_captions, settings.max_length, settings.temperature,
                      settings.top_k, settings.top_p, settings.seed)


def word_log_probs(logits: torch.Tensor, vocab: Vocabulary, allow_unknown: bool = False) -> torch.Tensor:
    """Log-probabilities of the next word in fp32; <pad> and <start> are never a next word, and neither is <unk>
    unless allowed: "a woman sitting on a <unk>" helps no reader of alt text and matches no reference (self-critical
    sampling allows it, so that its reward teaches the model to avoid it)."""
    banned = [vocab.pad_id, vocab.start_id] if allow_unknown else [vocab.pad_id, vocab.start_id, vocab.unk_id]
    never = torch.tensor(banned, device=logits.device)
    return torch.log_softmax(logits.float(), dim=-1).index_fill(1, never, float("-inf"))  # not in place: autograd


@torch.no_grad()
def greedy(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, max_length: int = 30) -> list[Decoded]:
    """The most likely word at every step."""
    return _word_by_word(decoder, features, vocab, max_length, lambda log_probs: log_probs.argmax(-1))


def _word_by_word(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, max_length: int,
                  choose) -> list[Decoded]:
    """Decode every image one word per step, `choose` picking each next word from the log-probabilities;
    a caption is done at <end> (later steps feed it <end> and add nothing to its score)."""
    batch, device = features.shape[0], features.device
    state = decoder.start(features)
    tokens = torch.full((batch,), vocab.start_id, dtype=torch.long, device=device)
    words = torch.full((batch, max_length), vocab.end_id, dtype=torch.long, device=device)
    scores, lengths = torch.zeros(batch, device=device), torch.full((batch,), max_length, device=device)
    attention: torch.Tensor | None = None  # (B, max_length, L)
    # Rows still writing; a row that has ended is fed <end> and ignored until it leaves the batch
    # (see _worth_compacting).
    rows = torch.arange(batch, device=device)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_length):
        logits, state, alpha = decoder.step(tokens, state)
        log_probs = word_log_probs(logits, vocab)
        tokens = torch.where(ended, torch.full_like(ended, vocab.end_id, dtype=torch.long), choose(log_probs))
        writing = rows[~ended]
        picked = log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        scores[writing] += picked[~ended]
        words[writing, step] = tokens[~ended]
        if alpha is not None:
            if attention is None:
                attention = alpha.new_zeros(batch, max_length, alpha.shape[1])
            attention[writing, step] = alpha[~ended].to(attention.dtype)
        now_ended = ~ended & (tokens == vocab.end_id)
        lengths[rows[now_ended]] = step + 1
        ended |= now_ended
        if bool(ended.all()):
            break
        count = int(ended.sum())
        if _worth_compacting(count, len(rows)):
            stay = (~ended).nonzero().squeeze(1)
            state, tokens, rows = decoder.select(state, stay), tokens[stay], rows[stay]
            ended = ended[stay]
    results = []
    for row, (sequence, length) in enumerate(zip(words.tolist(), lengths.int().tolist())):
        ended_here = sequence[length - 1] == vocab.end_id
        score = float(scores[row])
        results.append(Decoded(sequence[:length - 1] if ended_here else sequence[:length], score,
                               attention[row, :length].cpu() if attention is not None else None, score))
    return results


@torch.no_grad()
def beam_search(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, beam_size: int = 3,
                max_length: int = 30, length_penalty: float = 0.0, no_repeat_ngram: int = 0,
                num_captions: int = 1) -> list[list[Decoded]]:
    """Beam search over images x beams at once.

    Each step scores every (beam, word) continuation, keeps the best 2K over the flattened beam x vocabulary
    scores, sets aside those that end the caption, and continues with the best K that do not; the decoder
    state follows its beam by index. An image is done once it has K finished captions and no live beam can
    still beat them; an image with no finished caption at the length limit gets its best live beams.
    """
    batch, K, device = features.shape[0], beam_size, features.device
    state = decoder.with_rows_per_image(decoder.start(features), K)
    tokens = torch.full((batch * K,), vocab.start_id, dtype=torch.long, device=device)
    # only the first beam of each image is live at the start, so its K copies do not fill the beam with twins
    scores = torch.full((batch, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = torch.empty(batch * K, 0, dtype=torch.long, device=device)  # words so far, per beam
    attention: torch.Tensor | None = None  # (B*K, steps, L)
    finished: list[list[tuple[float, Decoded]]] = [[] for _ in range(batch)]
    # The rows computed are those of images still searching: `images` maps them back to the batch; images
    # that are done leave it (see _worth_compacting).
    images = list(range(batch))

    def rank(log_prob: float, length: int) -> float:
        return log_prob / (max(length, 1) ** length_penalty) if length_penalty else log_prob

    for step in range(max_length):
        live = len(images)
        offsets = (torch.arange(live, device=device) * K).unsqueeze(1)  # (B, 1): first beam row of each image
        logits, state, alpha = decoder.step(tokens, state)
        log_probs = word_log_probs(logits, vocab)  # (B*K, V)
        if no_repeat_ngram:
            log_probs = _block_repeated_ngrams(log_probs, history, no_repeat_ngram)
        vocab_size = log_probs.shape[1]
        candidates = (scores.unsqueeze(2) + log_probs.view(live, K, vocab_size)).view(live, K * vocab_size)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # (B, 2K)
        beam_of, word_of = top_index // vocab_size, top_index % vocab_size
        steps_attention = None
        if alpha is not None:
            steps_attention = alpha.unsqueeze(1) if attention is None else torch.cat([attention, alpha.unsqueeze(1)], 1)
        # set aside candidates that end a caption (CPU side: a handful per image)
        is_end = (word_of == vocab.end_id) & torch.isfinite(top_scores)
        for position_of_image, position in is_end.nonzero().tolist():
            if position >= K:  # only ends that rank among the K best count (as in a beam of K)
                continue
            row = int(offsets[position_of_image, 0] + beam_of[position_of_image, position])
            score = float(top_scores[position_of_image, position])
            words = history[row].tolist()
            weights = steps_attention[row].cpu() if steps_attention is not None else None
            finished[images[position_of_image]].append((rank(score, len(words) + 1), Decoded(words, score, weights)))
        # continue with the K best candidates that do not end
        keep = (~is_end).float().masked_fill(~torch.isfinite(top_scores), 0.5)  # ends last, dead beams after
        order = keep.argsort(dim=1, descending=True, stable=True)[:, :K]  # stable: best scores first
        scores = top_scores.gather(1, order).masked_fill(is_end.gather(1, order), float("-inf"))
        rows = (offsets + beam_of.gather(1, order)).view(-1)  # (B*K,) beam each new beam extends
        tokens = word_of.gather(1, order).view(-1)
        state = decoder.reorder_beams(state, rows)
        history = torch.cat([history[rows], tokens.unsqueeze(1)], 1)
        if steps_attention is not None:
            attention = steps_attention[rows]
        now_done = _finished_enough([finished[i] for i in images], scores, K, step + 1, rank, device)
        if bool(now_done.all()):
            images = []
            break
        if _worth_compacting(int(now_done.sum()), live):
            stay = (~now_done).nonzero().squeeze(1)
            stay_rows = (stay.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)
            state = decoder.select(state, stay_rows, stay)
            tokens, history, scores = tokens[stay_rows], history[stay_rows], scores[stay]
            attention = attention[stay_rows] if attention is not None else None
            images = [images[i] for i in stay.tolist()]
        else:
            scores[now_done] = float("-inf")  # done, but still in the batch: no more hypotheses from it
    for position_of_image, image in enumerate(images):  # length limit reached: the best unfinished beams too
        if len(finished[image]) >= num_captions:
            continue
        for beam in range(K):
            row, score = position_of_image * K + beam, float(scores[position_of_image, beam])
            if score == float("-inf"):
                continue
            weights = attention[row].cpu() if attention is not None else None
            finished[image].append((rank(score, history.shape[1]), Decoded(history[row].tolist(), score, weights)))
    results = []
    for hypotheses in finished:
        hypotheses.sort(key=lambda item: item[0], reverse=True)
        results.append([_with_score(decoded, ranked) for ranked, decoded in hypotheses[:num_captions]])
    return results


def _worth_compacting(done: int, live: int) -> bool:
    """Whether finished rows should leave the batch now: at once when few remain, else once a quarter of
    them are done (leaving copies the remaining rows' state, image features included)."""
    return done > 0 and (live <= 4 or 4 * done >= live)


def _with_score(decoded: Decoded, score: float) -> Decoded:
    decoded.score = score
    return decoded


def _finished_enough(finished: list[list[tuple[float, Decoded]]], scores: torch.Tensor, K: int, length: int,
                     rank, device: torch.device) -> torch.Tensor:
    """Images whose K-th best finished caption already beats every live beam. Log-probabilities only fall as
    words are added, so with no length penalty a live beam can never overtake it (with one, this is the usual
    approximation of judging it at its current length)."""
    best_live = scores.max(1).values.tolist()
    result = []
    for image, hypotheses in enumerate(finished):
        if len(hypotheses) < K:
            result.append(False)
            continue
        kth = sorted((ranked for ranked, _ in hypotheses), reverse=True)[K - 1]
        result.append(best_live[image] == float("-inf") or rank(best_live[image], length + 1) <= kth)
    return torch.tensor(result, dtype=torch.bool, device=device)


def _block_repeated_ngrams(log_probs: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """Forbid each beam the words that would repeat one of its n-grams."""
    length = history.shape[1]
    if length < n:  # no complete n-gram yet
        return log_probs
    if n == 1:
        return log_probs.scatter(1, history, float("-inf"))
    grams = history.unfold(1, n, 1)  # (N, length-n+1, n)
    prefix = history[:, length - n + 1:]  # (N, n-1): the words the next one would extend
    matches = (grams[:, :, :-1] == prefix.unsqueeze(1)).all(2)  # (N, G)
    banned = torch.where(matches, grams[:, :, -1], torch.full_like(grams[:, :, -1], -1))
    mask = torch.zeros_like(log_probs, dtype=torch.bool)
    valid = banned >= 0
    mask.scatter_(1, banned.clamp(min=0), valid)
    return log_probs.masked_fill(mask, float("-inf"))


@torch.no_grad()
def sample(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, num_captions: int = 1,
           max_length: int = 30, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           seed: int | None = None, rounds: int = 5) -> list[list[Decoded]]:
    """Up to `num_captions` distinct sampled captions per image, most likely first. Draws in rounds of
    2 x num_captions samples per image until enough distinct ones are found; an image whose distribution is
    too peaked to give that many distinct captions in `rounds` rounds gets fewer."""
    generator = torch.Generator(device=features.device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    batch, draws = features.shape[0], 2 * num_captions
    found: list[dict[tuple[int, ...], Decoded]] = [{} for _ in range(batch)]
    for _ in range(rounds):
        pending = [image for image in range(batch) if len(found[image]) < num_captions]
        if not pending:
            break
        index = torch.tensor(pending, device=features.device).repeat_interleave(draws)
        for position, decoded in enumerate(_sample_once(decoder, features[index], vocab, max_length, temperature,
                                                        top_k, top_p, generator)):
            image = pending[position // draws]
            found[image].setdefault(tuple(decoded.tokens), decoded)
    results = []
    for distinct in found:
        ordered = sorted(distinct.values(), key=lambda d: d.log_prob, reverse=True)[:num_captions]
        results.append([_with_score(d, d.log_prob) for d in ordered])
    return results


def _sample_once(decoder: Decoder, features: torch.Tensor, vocab: Vocabulary, max_length: int, temperature: float,
                 top_k: int, top_p: float, generator: torch.Generator) -> list[Decoded]:
    """One sampled caption per row; scores are the model's log-probabilities, not the tempered ones."""
    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        filtered = _filter(log_probs / temperature, top_k, top_p)
        return torch.multinomial(torch.softmax(filtered, -1), 1, generator=generator).squeeze(1)

    return _word_by_word(decoder, features, vocab, max_length, choose)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top-k words and the smallest set reaching probability top_p; the rest get -inf."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, -1) >= top_p  # words after the set has reached top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits
