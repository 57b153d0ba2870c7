"""`python -m captioner` is the same as the `captioner` command (and what torchrun launches)."""

from captioner.cli import main

raise SystemExit(main())
