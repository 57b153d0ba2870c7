"""captioner: turn photos into sentences with a pretrained CNN encoder and an RNN decoder."""

__version__ = "0.1.0"

__all__ = ["Captioner", "__version__"]


def __getattr__(name: str):
    """`from captioner import Captioner` without importing torch for `captioner --help`."""
    if name == "Captioner":
        from captioner.api import Captioner

        return Captioner
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
