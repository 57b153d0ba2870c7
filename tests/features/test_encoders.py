"""The encoders' weights are real: real photos are classified correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.features.encoders import ENCODERS, create_encoder, get_spec
from captioner.errors import CaptionerError

skimage_data = pytest.importorskip("skimage.data")

ESPRESSO, COFFEE_MUG, CUP = 967, 504, 968
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_pretrained_weights_recognise_real_photos(name: str) -> None:
    encoder = create_encoder(name)
    size = encoder.spec.image_size
    photos = torch.stack([encoder.spec.prepare(Image.fromarray(skimage_data.coffee()), size),
                          encoder.spec.prepare(Image.fromarray(skimage_data.chelsea()), size)])
    top5 = encoder.classify(photos).topk(5).indices.tolist()
    assert {ESPRESSO, COFFEE_MUG, CUP} & set(top5[0])
    assert CATS & set(top5[1])


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_prepare_normalizes_each_channel_with_the_encoders_mean_and_std(name: str) -> None:
    """Exactly torch's float32 (x / 255 - mean) / std, the formula the feature caches were built with: every
    value of every channel, so cached features and live captioning agree to the bit."""
    spec = get_spec(name)
    every_value = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=2)  # (16, 16, 3)
    image = Image.fromarray(every_value)
    prepared = spec.prepare(image, 16)  # same size: resizing keeps the values
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
    expected = (pixels / 255.0 - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    assert prepared.shape == (3, 16, 16) and prepared.dtype == torch.float32
    assert torch.equal(prepared, expected)
    flipped = spec.prepare(image, 16, flip=True)
    assert torch.equal(flipped, expected.flip(2))


def test_grid_shapes_of_the_registry() -> None:
    assert create_encoder("efficientnet_lite0").grid_shape(224) == (7, 7, 1280)
    assert create_encoder("tiny_random").grid_shape(64) == (4, 4, 64)
    assert get_spec("efficientnet_lite0").mean == (0.5, 0.5, 0.5)  # these weights expect [-1, 1] input
    assert {"resnet34", "resnet50", "resnet101", "inception_v3"} <= set(ENCODERS)


def test_torchvision_encoder_from_a_local_weights_file(tmp_path: Path) -> None:
    import torchvision

    weights = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), weights)
    encoder = create_encoder("resnet34", weights)
    assert encoder.grid_shape(224) == (7, 7, 512)
    assert encoder.weights_sha256 != "random"


def test_wrong_or_missing_weights_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CaptionerError, match="not a PyTorch weights file"):
        create_encoder("resnet50", tmp_path / "junk.pth")
    with pytest.raises(CaptionerError, match="does not exist"):
        create_encoder("resnet50", tmp_path / "missing.pth")
    import torchvision

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CaptionerError, match="does not hold resnet50 weights"):
        create_encoder("resnet50", tmp_path / "r34.pth")


def test_offline_torchvision_download_says_where_to_put_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(CaptionerError, match=r"put it at .*resnet101-cd907fc2.pth, or pass --encoder_weights"):
        create_encoder("resnet101")


def test_download_goes_into_a_created_hub_folder(tmp_path: Path, monkeypatch) -> None:
    """Bug: with no ~/.cache/torch/hub/checkpoints yet, the download failed on the missing folder before
    touching the network, and the error showed a confusing '.partial' path."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "fresh" / "hub"))
    targets = []

    def fake_download(url: str, destination: str, progress: bool = True) -> None:
        targets.append(Path(destination))
        assert Path(destination).parent.is_dir()
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(CaptionerError, match="network unreachable"):
        create_encoder("inception_v3")
    assert targets == [tmp_path / "fresh/hub/checkpoints/inception_v3_google-0cc3c7bd.pth"]


def test_random_test_encoders_have_the_same_weights_every_time() -> None:
    """Bug: *_random encoders drew fresh weights in each process, so a cache resumed by another process mixed
    rows from two different networks under one manifest."""
    first, second = (create_encoder("efficientnet_lite0_random").state_dict() for _ in range(2))
    assert all(torch.equal(first[name], second[name]) for name in first)
