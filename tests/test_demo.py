"""The README's first command, `make demo` (a file of its own: the longest example, so that a
parallel test run starts it beside the others)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_examples import BIN, run


def test_the_demo_runs_to_its_summary_table(tmp_path: Path) -> None:
    """The README's first command (make demo runs exactly this), with its default training;
    everything it writes goes under --dir, nothing to the folder it was started in."""
    started_in = tmp_path / "started-in"
    started_in.mkdir()
    done = run(
        BIN / "reef-forensics",
        "demo",
        "--dir",
        tmp_path / "demo",
        "--json",
        tmp_path / "d.json",
        cwd=started_in,
        # a guard against a hang, not a speed test: 150 s alone on 2 cores, over 900 s beside
        # the long fault runs of a parallel CI run on the same 2 cores
        timeout=2400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(started_in.iterdir()) == []  # no ./mlruns of the evidence experiment
    assert "model        truth      verdict" in done.stdout
    rows = {r["model"]: r for r in json.loads((tmp_path / "d.json").read_text())["rows"]}
    assert set(rows) == {"fine-tuned", "pruned-30", "permuted", "merged", "unrelated"}
    for name, row in rows.items():
        assert row["verdict"] == row["truth"], (name, row)
        if row["verdict"] != "unrelated":
            assert row["report_valid"] is True and Path(row["report"]).is_file()
    assert "[8/8" in done.stderr  # the progress display
