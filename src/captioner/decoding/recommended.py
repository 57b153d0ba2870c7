"""The decoding a model's training preset recommends: stored with every model trained from a preset, used by
`captioner caption/evaluate --recommended`, `Captioner.recommended_decoding` and the web page."""

from __future__ import annotations

from pathlib import Path

from captioner.decoding.settings import RECOMMENDABLE
from captioner.errors import CaptionerError
from captioner.models.loading import trained_settings

# How each preset's models caption best. flickr8k_best: beam 5, length penalty 1.15, each word's probability
# averaged over the image and its mirror image, and no word pair twice (chosen on dev over beams 2-5 and length
# penalties 0.7-1.3: with the blocks learning in the cross-entropy epochs, beam 5 at 1.15 lifts CIDEr, BLEU-4,
# METEOR and ROUGE-L over beam 3 at 1 for each of three models; the block also keeps out the repeated phrases of
# the self-critical model, such as "a woman and a woman are walking down the street").
DECODING: dict[str, dict[str, object]] = {
    "flickr8k_best": {"strategy": "beam", "beam_size": 5, "length_penalty": 1.15, "flip_average": True,
                      "no_repeat_ngram": 2},
}


def recommended_in(train_config: dict, source: Path) -> dict[str, object]:
    """The decoding a model's training settings recommend: the one its preset stored with it, or, for a model
    trained from a preset before presets stored theirs, the preset's current one; {} without a preset."""
    decoding = train_config.get("decoding") or DECODING.get(train_config.get("preset"), {})
    unknown = sorted(set(decoding) - set(RECOMMENDABLE))
    if unknown:
        raise CaptionerError(f"{source} recommends decoding options this captioner does not know: {', '.join(unknown)}")
    return dict(decoding)


def recommended_decoding(path: Path | str) -> dict[str, object]:
    """The decoding a checkpoint or exported bundle recommends; a clear error when it has none."""
    decoding = recommended_in(trained_settings(path), Path(path))
    if not decoding:
        raise CaptionerError(f"{path} was not trained with a preset, so it carries no recommended decoding; leave "
                             "out --recommended and choose the decoding flags")
    return decoding
