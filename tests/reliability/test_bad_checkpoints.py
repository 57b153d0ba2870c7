"""A damaged or foreign checkpoint is one clear error in every command that reads one: no traceback, the
path named, nothing overwritten."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from captioner.models.checkpoint import load_checkpoint, save_checkpoint
from captioner.cli.command import main


def damaged_checkpoints(good: Path, folder: Path) -> dict[str, Path]:
    data = good.read_bytes()
    variants = {"truncated": data[: len(data) // 3], "zeroed": bytes(len(data)), "empty": b"",
                "a PNG": b"\x89PNG\r\n\x1a\n" + bytes(64)}
    paths = {}
    for name, content in variants.items():
        path = folder / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(content)
        paths[name] = path
    torch.save({"state_dict": {"w": torch.zeros(2)}}, folder / "foreign.pt")
    paths["another program's"] = folder / "foreign.pt"
    return paths


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


COMMANDS = {
    "evaluate": lambda ck, tmp: ["evaluate", "--model_path", str(ck)],
    "caption": lambda ck, tmp: ["caption", str(tmp / "photo.png"), "--model_path", str(ck)],
    "visualize": lambda ck, tmp: ["visualize", str(tmp / "photo.png"), "--model_path", str(ck)],
    "export": lambda ck, tmp: ["export", "--model_path", str(ck), "--output", str(tmp / "bundle")],
    "serve": lambda ck, tmp: ["serve", "--model_path", str(ck), "--port", "1"],
    "train --resume": lambda ck, tmp: ["train", "--resume", str(ck), "--output_dir", str(tmp / "runs")],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_checkpoints_are_one_clear_error(command: str, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from tests.conftest import write_image

    write_image(tmp_path / "photo.png")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for kind, path in damaged_checkpoints(tiny_checkpoint, damaged).items():
        before = fingerprint(tmp_path)
        code = main(COMMANDS[command](path, tmp_path))
        captured = capsys.readouterr()
        assert code == 2, (kind, captured.err)
        assert "Traceback" not in captured.err + captured.out
        assert captured.err.startswith("captioner: error:") and str(path) in captured.err, (kind, captured.err)
        assert fingerprint(tmp_path) == before, f"{command} changed files after a {kind} checkpoint"


@pytest.mark.parametrize("change, message", [
    ({"vocab": "zebra"}, "vocab_size"),
    ({"encoder": "resnet34_random"}, "trained on resnet34_random features"),
    ({"model_config": "decoder=gru"}, "decoder"),
])
def test_a_checkpoint_from_another_setup_cannot_be_resumed(change: dict, message: str, tiny_checkpoint: Path,
                                                           tmp_path: Path, capsys) -> None:
    from captioner.models.decoders import DecoderConfig, build_decoder

    checkpoint = load_checkpoint(tiny_checkpoint)
    if change.get("vocab") == "zebra":
        from captioner.data.vocab import Vocabulary

        change = {"vocab": Vocabulary.build([["zebra"]], freq_threshold=1).to_dict()}
    if change.get("model_config") == "decoder=gru":
        config = DecoderConfig(**{**checkpoint["model_config"], "decoder": "gru"})
        change = {"model_config": config.to_dict(), "model": build_decoder(config).state_dict()}
    other = tmp_path / "other.pt"
    save_checkpoint(other, {**checkpoint, **change})
    shapes = tiny_checkpoint.parents[2] / "shapes"
    code = main(["train", "--dataset_type", "shapes", "--data_dir", str(shapes), "--encoder", "tiny_random",
                 "--cache_dir", str(tiny_checkpoint.parents[2] / "cache"), "--embed_size", "16", "--hidden_size", "16",
                 "--attention_dim", "16", "--freq_threshold", "1", "--resume", str(other), "--epochs", "4",
                 "--output_dir", str(tmp_path / "runs")])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


class NotPlain:  # what an unsafe pickle holds
    pass


def test_what_is_wrong_is_said_in_our_words_and_pytorchs_text_only_with_verbose(tiny_checkpoint: Path, tmp_path: Path,
                                                                                capsys) -> None:
    expected = {"truncated": "cut short", "zeroed": "only zero bytes", "empty": "empty", "a PNG": "a PNG image",
                "another program's": "is not a captioner checkpoint"}
    for kind, path in damaged_checkpoints(tiny_checkpoint, tmp_path).items():
        assert main(["evaluate", "--model_path", str(path)]) == 2
        err = capsys.readouterr().err
        assert expected[kind] in err and "weights_only" not in err and "PyTorch 2.6" not in err, (kind, err)
    torch.save({"format": "captioner-checkpoint", "thing": NotPlain()}, tmp_path / "pickled.pt")
    assert main(["evaluate", "--model_path", str(tmp_path / "pickled.pt")]) == 2
    assert "other than tensors and plain values" in capsys.readouterr().err
    assert main(["evaluate", "--model_path", str(tmp_path / "a_PNG.pt"), "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "beneath it: UnpicklingError" in err and "Traceback" in err  # PyTorch's own words, when asked for
