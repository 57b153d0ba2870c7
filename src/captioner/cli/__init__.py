"""The `captioner` command."""

from captioner.cli.command import main

__all__ = ["main"]
