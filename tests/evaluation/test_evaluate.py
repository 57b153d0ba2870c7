"""captioner evaluate on the small model trained for the tests."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.cli.command import main
from captioner.evaluation.metrics import METRIC_NAMES, java_available


def test_evaluate_writes_the_folder_and_the_scores_can_be_recomputed(tiny_checkpoint: Path, capsys) -> None:
    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--beam_size", "2"]) == 0
    folder = tiny_checkpoint.parent / "eval_test_beam2"
    assert "evaluation folder" in capsys.readouterr().out
    captions = json.loads((folder / "captions.json").read_text())
    references = json.loads((folder / "references.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    about = json.loads((folder / "evaluation.json").read_text())
    assert len(captions) == about["images"] == len(references) > 0
    assert set(captions[0]) == {"image_id", "caption"} and captions[0]["image_id"] in references
    assert set(metrics) - {"tags"} == (set(METRIC_NAMES) if java_available() else set(METRIC_NAMES) - {"METEOR"})
    assert "mAP" in metrics["tags"]["present in >= 2 references"]["head"]  # the tags, scored beside the captions
    assert about["decoding"]["beam_size"] == 2 and about["split"] == "test"
    if java_available():  # by hand, as a reader of the README would
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        with contextlib.redirect_stdout(io.StringIO()):
            tokenizer = PTBTokenizer()
            refs = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
            hyps = tokenizer.tokenize({c["image_id"]: [{"caption": c["caption"]}] for c in captions})
            bleu, _ = Bleu(4).compute_score(refs, hyps)
            cider, _ = Cider().compute_score(refs, hyps)
        assert metrics["BLEU-4"] == pytest.approx(100 * bleu[3], abs=1e-9)
        assert metrics["CIDEr"] == pytest.approx(100 * cider, abs=1e-9)


def test_a_second_evaluation_gets_a_new_folder_and_train_mode_test_is_evaluate(tiny_checkpoint: Path) -> None:
    assert main(["train", "--mode", "test", "--model_path", str(tiny_checkpoint), "--strategy", "greedy",
                 "--max_images", "5"]) == 0
    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--strategy", "greedy", "--max_images", "5"]) == 0
    assert (tiny_checkpoint.parent / "eval_test_greedy").is_dir() and (tiny_checkpoint.parent / "eval_test_greedy_2").is_dir()
    about = json.loads((tiny_checkpoint.parent / "eval_test_greedy_2" / "evaluation.json").read_text())
    assert about["images"] == 5


def test_an_evaluation_folder_with_human_ratings_is_not_written_over(tiny_checkpoint: Path, tmp_path: Path,
                                                                      capsys) -> None:
    folder = tmp_path / "reviewed"
    arguments = ["evaluate", "--model_path", str(tiny_checkpoint), "--max_images", "5", "--output_dir", str(folder)]
    assert main([*arguments, "--strategy", "greedy"]) == 0
    (folder / "ratings.sqlite").write_bytes(b"ratings of the greedy captions")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert main([*arguments, "--beam_size", "2"]) == 2
    assert "holds human ratings of its captions (ratings.sqlite)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_bad_checkpoints_are_one_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--model_path", str(tmp_path / "broken.pt")]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--model_path", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_flip_average_decodes_each_image_with_its_mirror_image(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """--flip_average: the decoder averaged over the cached plain and mirrored features of each image; a cache
    without mirrored features is a clear error, not a silent plain evaluation."""
    from captioner.decoding.strategies import decode
    from captioner.decoding.settings import DecodeSettings
    from captioner.models.ensemble import Averaged
    from captioner.evaluation.evaluate import model_features, split_records
    from captioner.models.loading import load_model

    cache = tmp_path / "mirrored_cache"
    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--strategy", "greedy", "--max_images", "6",
                 "--flip_average", "--cache_dir", str(cache)]) == 0
    assert "averaged with the mirror images" in capsys.readouterr().out
    folder = tiny_checkpoint.parent / "eval_test_greedy_flip"
    about = json.loads((folder / "evaluation.json").read_text())
    assert about["decoding"]["flip_average"] is True
    written = {c["image_id"]: c["caption"] for c in json.loads((folder / "captions.json").read_text())}

    model = load_model(tiny_checkpoint)
    records, _ = split_records(model, "test", None, None, None, 6)
    plain = model_features(model, [r.image for r in records], cache, None, progress=False)
    rows = [plain.row(r.image) for r in records]
    views = torch.stack([plain.features(rows, True), plain.features(rows, True, flip=np.ones(6, bool))], 1)
    assert not torch.equal(views[:, 0], views[:, 1])  # the mirror image really is another view
    by_hand = decode(Averaged([model.decoder, model.decoder]), views, model.vocab, DecodeSettings("greedy"))
    assert [written[r.image_id] for r in records] == [" ".join(model.vocab.decode(d[0].tokens)) for d in by_hand]

    assert main(["evaluate", "--model_path", str(tiny_checkpoint), "--strategy", "greedy", "--max_images", "6",
                 "--flip_average"]) == 2  # the training cache holds no mirrored features
    error = capsys.readouterr().err
    assert "--flip_average needs mirrored features" in error and "pass a new --cache_dir" in error


def test_evaluation_folders_are_named_from_every_decoding_setting(tmp_path: Path) -> None:
    from captioner.decoding.settings import DecodeSettings
    from captioner.evaluation.evaluate import default_output_dir

    checkpoint = tmp_path / "best.pt"
    names = {default_output_dir(checkpoint, "dev", settings).name: settings for settings in [
        DecodeSettings("beam", 3, length_penalty=1.0, flip_average=True),
        DecodeSettings("sample", temperature=0.7, top_k=5, flip_average=True),
        DecodeSettings("sample", temperature=0.7, top_k=5)]}
    assert set(names) == {"eval_dev_beam3_lp1_flip", "eval_dev_sample_t0.7_k5_p1_flip", "eval_dev_sample_t0.7_k5_p1"}


def test_recommended_decodes_as_the_checkpoint_says_and_explicit_flags_win(tiny_checkpoint: Path, tmp_path: Path,
                                                                           capsys) -> None:
    from tests.conftest import TINY_DECODING

    def decoding_of(folder: Path) -> dict:
        return json.loads((folder / "evaluation.json").read_text())["decoding"]

    common = ["--model_path", str(tiny_checkpoint), "--max_images", "6", "--output_dir"]
    assert main(["evaluate", "--recommended", *common, str(tmp_path / "recommended")]) == 0
    assert "beam 2, length penalty 1, no 2-gram twice" in capsys.readouterr().out
    assert {k: decoding_of(tmp_path / "recommended")[k] for k in TINY_DECODING} == TINY_DECODING
    assert main(["evaluate", *common, str(tmp_path / "explicit"), "--beam_size", "2", "--length_penalty", "1",
                 "--no_repeat_ngram", "2"]) == 0
    assert ((tmp_path / "recommended" / "captions.json").read_text()
            == (tmp_path / "explicit" / "captions.json").read_text())
    # a flag given explicitly wins over the recommendation, in both spellings of evaluate
    assert main(["train", "--mode", "test", "--recommended", "--length_penalty", "0", *common, str(tmp_path / "lp0")]) == 0
    assert decoding_of(tmp_path / "lp0")["length_penalty"] == 0 and decoding_of(tmp_path / "lp0")["beam_size"] == 2


def test_recommended_without_a_preset_is_a_clear_error(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    del checkpoint["train_config"]["decoding"]
    torch.save(checkpoint, tmp_path / "plain.pt")
    assert main(["evaluate", "--recommended", "--model_path", str(tmp_path / "plain.pt")]) == 2
    assert "was not trained with a preset, so it carries no recommended decoding" in capsys.readouterr().err
    assert main(["caption", "--recommended", "--model_path", str(tmp_path / "plain.pt"), "x.png"]) == 2
