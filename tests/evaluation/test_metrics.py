from __future__ import annotations

import contextlib
import io

import pytest

from captioner.evaluation.metrics import java_available, score_captions, simple_tokenize, word_error_rate

REFERENCES = {
    "1.jpg": ["A dog runs across the grass.", "A brown dog is running on a lawn", "The dog's running outside!"],
    "2.jpg": ["Two men are talking on a street.", "Two people talk", "Men chatting in the city"],
    "3.jpg": ["A child jumps into a pool.", "A kid is jumping into the water", "A boy leaps into a swimming pool"],
}
CAPTIONS = {"1.jpg": "a dog runs on the grass", "2.jpg": "two men talking on the street", "3.jpg": "a dog"}
needs_java = pytest.mark.skipif(not java_available(), reason="Java is not installed")


@needs_java
def test_scores_equal_the_coco_caption_scorers_run_by_hand() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    scores = score_captions(REFERENCES, CAPTIONS)
    tokenizer = PTBTokenizer()
    with contextlib.redirect_stdout(io.StringIO()):
        refs = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
        hyps = tokenizer.tokenize({k: [{"caption": v}] for k, v in CAPTIONS.items()})
        bleu, _ = Bleu(4).compute_score(refs, hyps)
        expected = {"BLEU-1": bleu[0], "BLEU-4": bleu[3], "METEOR": Meteor().compute_score(refs, hyps)[0],
                    "ROUGE-L": Rouge().compute_score(refs, hyps)[0], "CIDEr": Cider().compute_score(refs, hyps)[0]}
    for name, value in expected.items():
        assert scores.overall[name] == pytest.approx(100 * value, abs=1e-9), name
    assert scores.comparable and scores.tokenizer == "ptb"
    assert set(scores.per_image) == set(CAPTIONS) and scores.per_image["3.jpg"]["CIDEr"] < scores.per_image["1.jpg"]["CIDEr"]


def test_without_java_the_scores_say_they_are_not_comparable() -> None:
    scores = score_captions(REFERENCES, CAPTIONS, use_java=False)
    assert not scores.comparable and "METEOR" not in scores.overall
    assert 0 < scores.overall["BLEU-4"] < 100 and scores.overall["CIDEr"] > 0
    assert "not comparable" in scores.table()


@pytest.mark.parametrize("use_java", [pytest.param(True, marks=needs_java), False])
def test_an_empty_caption_scores_zero_instead_of_failing(use_java: bool) -> None:
    scores = score_captions(REFERENCES, {**CAPTIONS, "2.jpg": ""}, use_java=use_java)
    assert scores.per_image["2.jpg"]["CIDEr"] == 0 and scores.per_image["2.jpg"]["WER"] == 100


def test_a_caption_without_references_is_an_error() -> None:
    with pytest.raises(ValueError, match="no references"):
        score_captions(REFERENCES, {"9.jpg": "a dog"}, use_java=False)


def test_simple_tokenizer_follows_ptb_on_captions() -> None:
    assert simple_tokenize("The dog's running, fast!") == "the dog 's running fast"


def test_word_error_rate_uses_the_closest_reference() -> None:
    overall, each = word_error_rate({"a": ["a dog runs", "a big dog runs fast"]}, {"a": ["a dog runs fast"]})
    assert each["a"] == pytest.approx(20)  # one edit of 5 words beats one edit of 3
    assert overall == pytest.approx(20)
