from __future__ import annotations

from pathlib import Path

import pytest

from captioner.serve.background import ServerDidNotStart, running_server


def test_a_server_that_cannot_start_is_an_error_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(ServerDidNotStart, match="captioner serve stopped: .*missing.pt"):
        with running_server(tmp_path / "missing.pt"):
            pass
