"""How to decode: DecodeSettings is the one definition of every decoding option. Its fields give the command
line's flags (caption, evaluate, visualize), the Python API's keyword arguments, the web server's form fields
and what a preset may recommend, so adding an option is one edit here (and its use in strategies.py)."""

from __future__ import annotations

from dataclasses import dataclass

from captioner.options import check, option, specs

STRATEGIES = ("greedy", "beam", "sample")

# below it, logits / temperature overflow float32 and sampling fails; at it, sampling is all but greedy
MIN_TEMPERATURE = 0.01


@dataclass
class DecodeSettings:
    strategy: str = option("beam", "default: beam", choices=STRATEGIES, recommendable=True)
    beam_size: int = option(3, "default 3 (larger is often worse)", low=1, recommendable=True)
    max_length: int = option(30, "longest caption in words", low=1, recommendable=True)
    length_penalty: float = option(0.0, "beam: rank by log-probability / length**P (default 0: the plain sum)",
                                   low=0, recommendable=True)
    no_repeat_ngram: int = option(0, "beam: never repeat an n-gram of this size", low=0, recommendable=True)
    temperature: float = option(1.0, "sample: softmax temperature", low=MIN_TEMPERATURE, recommendable=True)
    top_k: int = option(0, "sample: only the K most likely words (0: all)", low=0, recommendable=True)
    top_p: float = option(1.0, "sample: nucleus probability mass", above=0, high=1, recommendable=True)
    num_captions: int = option(1, "captions per image (best beams, or distinct samples)", low=1)
    seed: int | None = option(None, "sample: seed for repeatable captions (the same images in the same order and "
                                    "batches)", flag="--sample_seed")
    # run the decoder in the reduced precision it was trained in, where that is fast (bf16)
    amp: bool = option(True, "bf16 where the CPU or GPU makes it fast", cli=False)
    # each word's probability averaged over the image and its mirror image: features (B, 2, ...), the plain view
    # first; twice the decoding work, and on Flickr8k dev 0.2-1.0 more BLEU-4 and 0.7-1.6 more CIDEr
    flip_average: bool = option(False, "average each word's probability over the image and its mirror image (twice "
                                       "the decoding work; evaluate reads the mirrored features from the cache; not "
                                       "for visualize)", negatable=True, recommendable=True)

    def __post_init__(self) -> None:
        check(self)
        if self.strategy == "greedy" and self.num_captions > 1:
            raise ValueError(f"greedy decoding writes one caption per image, not {self.num_captions}; for several, "
                             "use beam search (num_captions up to beam_size) or sampling")
        if self.strategy == "beam" and self.num_captions > self.beam_size:
            raise ValueError(f"num_captions {self.num_captions} needs beam_size >= {self.num_captions}")

    def describe(self) -> str:
        """One line for logs and reports: "beam 3, length penalty 1, no 2-gram twice, averaged with the mirror
        images"."""
        beam = self.strategy == "beam"
        told = [f"beam {self.beam_size}" if beam else self.strategy]
        if beam and self.length_penalty:
            told.append(f"length penalty {self.length_penalty:g}")
        if beam and self.no_repeat_ngram:
            told.append(f"no {self.no_repeat_ngram}-gram twice")
        if self.flip_average:
            told.append("averaged with the mirror images")
        return ", ".join(told)


# what a preset may recommend: each a decoding flag of `caption` and `evaluate` and a keyword of caption()
RECOMMENDABLE = tuple(spec.name for spec in specs(DecodeSettings) if spec.recommendable)


def settings_from(options: dict[str, object]) -> DecodeSettings:
    """DecodeSettings from keyword options, naming any that is not a decoding option."""
    known = {spec.name for spec in specs(DecodeSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown decoding option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
    return DecodeSettings(**options)
