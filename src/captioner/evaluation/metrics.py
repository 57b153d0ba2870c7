"""Caption metrics as papers report them: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D from the coco-caption scorers
(pycocoevalcap) after its PTB tokenizer, plus WER. Scores are x100.

The scorers are called one by one. `COCOEvalCap.evaluate` is never used and SPICE never constructed: SPICE
downloads Stanford CoreNLP at run time. The PTB tokenizer and METEOR need Java; without it, BLEU, ROUGE-L and
CIDEr-D are computed on a simple tokenizer instead, METEOR is left out, and the result says it is not
comparable with published numbers.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
from collections.abc import Hashable
from dataclasses import dataclass, field

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "WER")
EMPTY = "<empty>"  # stands in for an empty caption: the scorers cannot take zero words


@dataclass
class Scores:
    overall: dict[str, float]  # metric -> score x100 (WER: percent of reference words)
    per_image: dict[Hashable, dict[str, float]] = field(default_factory=dict)  # BLEU-4, CIDEr, WER x100
    tokenizer: str = "ptb"
    comparable: bool = True  # False: simple tokenizer (no Java), not comparable with papers

    def table(self) -> str:
        names = [name for name in METRIC_NAMES if name in self.overall]
        header = " | ".join(f"{name:>7}" for name in names)
        values = " | ".join(f"{self.overall[name]:>7.2f}" for name in names)
        note = "" if self.comparable else "\n(simple tokenizer, no Java: not comparable with published scores)"
        return f"{header}\n{values}{note}"


def java_available() -> bool:
    return shutil.which("java") is not None


def score_captions(references: dict[Hashable, list[str]], hypotheses: dict[Hashable, str],
                   use_java: bool | None = None) -> Scores:
    """Score one caption per image against that image's references (raw text; tokenized here)."""
    missing = [key for key in hypotheses if not references.get(key)]
    if missing:
        raise ValueError(f"{len(missing)} captioned images have no references, e.g. {missing[0]!r}")
    use_java = java_available() if use_java is None else use_java
    keys = list(hypotheses)
    if use_java:
        refs, hyps = ptb_tokenize(references, keys), ptb_tokenize({k: [hypotheses[k]] for k in keys}, keys)
    else:
        refs = {k: [simple_tokenize(text) for text in references[k]] for k in keys}
        hyps = {k: [simple_tokenize(hypotheses[k])] for k in keys}
    hyps = {k: [v[0] or EMPTY] for k, v in hyps.items()}
    overall, per_image = {}, {k: {} for k in keys}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their internals
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        bleu, bleu_each = Bleu(4).compute_score(refs, hyps, verbose=0)
        for n in range(4):
            overall[f"BLEU-{n + 1}"] = 100 * bleu[n]
        for key, value in zip(keys, bleu_each[3]):
            per_image[key]["BLEU-4"] = 100 * value
        if use_java:
            overall["METEOR"] = 100 * _meteor(refs, hyps)
        overall["ROUGE-L"] = 100 * Rouge().compute_score(refs, hyps)[0]
        cider, cider_each = Cider().compute_score(refs, hyps)
        overall["CIDEr"] = 100 * cider
        for key, value in zip(keys, cider_each):
            per_image[key]["CIDEr"] = 100 * float(value)
    overall["WER"], each_wer = word_error_rate(refs, hyps)
    for key in keys:
        per_image[key]["WER"] = each_wer[key]
    return Scores(overall, per_image, "ptb" if use_java else "simple", comparable=use_java)


def ptb_tokenize(captions: dict[Hashable, list[str]], keys: list[Hashable]) -> dict[Hashable, list[str]]:
    """pycocoevalcap's PTB tokenizer (Stanford CoreNLP 3.4.1 in Java, lowercased, punctuation removed)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # one sentence per line: a caption holding a newline would shift every later caption
    with _quiet_stderr():  # the Java tokenizer reports its speed on stderr
        tokenized = PTBTokenizer().tokenize({k: [{"caption": " ".join(text.split())} for text in captions[k]]
                                             for k in keys})
    return {k: tokenized.get(k, [""] * len(captions[k])) for k in keys}


@contextlib.contextmanager
def _quiet_stderr():
    """Silence a child process's stderr (it writes to our file descriptor 2, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _meteor(refs: dict[Hashable, list[str]], hyps: dict[Hashable, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return float(scorer.compute_score(refs, hyps)[0])
    finally:
        with contextlib.suppress(Exception):
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()


_PUNCTUATION = re.compile(r"[^\w\s']|_")


def simple_tokenize(text: str) -> str:
    """Close to the PTB tokenizer on captions: lowercase, punctuation dropped, "dog's" -> "dog 's"."""
    text = _PUNCTUATION.sub(" ", text.lower())
    text = re.sub(r"(\w)('s|'re|'ve|'ll|'d|n't)\b", r"\1 \2", text)
    return " ".join(word for word in text.replace("' ", " ").split() if word != "'")


def word_error_rate(refs: dict[Hashable, list[str]], hyps: dict[Hashable, list[str]]
                    ) -> tuple[float, dict[Hashable, float]]:
    """WER x100 against the closest reference of each image (fewest edits relative to its length); the corpus
    figure is the summed edits over the summed lengths of those references."""
    edits_total, length_total, each = 0, 0, {}
    for key, (hypothesis,) in hyps.items():
        words = [] if hypothesis == EMPTY else hypothesis.split()
        best = min(((_edit_distance(words, ref.split()), max(len(ref.split()), 1)) for ref in refs[key]),
                   key=lambda pair: pair[0] / pair[1])
        edits_total += best[0]
        length_total += best[1]
        each[key] = 100 * best[0] / best[1]
    return 100 * edits_total / max(length_total, 1), each


def _edit_distance(a: list[str], b: list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]
