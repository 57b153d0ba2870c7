"""Long stages say what they are doing in a log too: a start line and a line every half minute."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import captioner.progress as progress_module
from captioner.progress import LogProgress, progress


def test_a_log_gets_a_start_line_and_lines_now_and_then(monkeypatch, capsys) -> None:
    clock = iter([0.0, 0.0, 10.0, 31.0, 40.0, 62.0, 70.0])
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    bar = LogProgress(total=6, desc="extracting efficientnet_lite0", unit="img")
    for _ in range(5):
        bar.update()
    bar.set_postfix(loss="3.1")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "extracting efficientnet_lite0: started, 6 img"
    assert len(lines) == 3 and lines[1].startswith("extracting efficientnet_lite0: 3/6 img (")  # after 31 s
    assert "min left" in lines[1] and lines[2].startswith("extracting efficientnet_lite0: 5/6 img")


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert isinstance(progress(range(3), desc="epoch 1"), LogProgress)
    assert list(progress(range(3), desc="epoch 1")) == [0, 1, 2]
    assert not isinstance(progress(range(3), enabled=False), LogProgress)


def test_extraction_into_a_log_file_says_it_started(tmp_path: Path) -> None:
    """`captioner extract ... > log 2>&1` used to stay empty until the end."""
    from captioner.data.shapes import generate_shapes

    data = generate_shapes(tmp_path / "shapes", num_images=20, seed=1)
    with open(tmp_path / "log", "w") as log:
        result = subprocess.run([sys.executable, "-m", "captioner", "extract", "--dataset_type", "shapes", "--data_dir",
                                 str(data), "--encoder", "tiny_random", "--cache_dir", str(tmp_path / "cache")],
                                stdout=log, stderr=subprocess.STDOUT)
    assert result.returncode == 0
    assert "extracting tiny_random: started, 20 img" in (tmp_path / "log").read_text()


