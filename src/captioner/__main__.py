"""`python -m captioner` is the same as the `captioner` command (and what torchrun launches)."""

from captioner.cli.command import main

raise SystemExit(main())
