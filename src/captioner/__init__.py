"""captioner: turn photos into sentences with a pretrained CNN encoder and an RNN decoder."""

__version__ = "0.1.0"
