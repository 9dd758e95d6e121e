"""bench.peers.baseline's pure parts: the server it starts for a revision, and its report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.peers import baseline


def test_the_baseline_server_runs_the_service_of_the_revisions_tree(tmp_path: Path):
    tree = tmp_path / "tree"
    (tree / "service").mkdir(parents=True)
    (tree / "service" / "__init__.py").write_text("")
    (tree / "service" / "__main__.py").write_text("import sys; print('old tree', sys.argv[0])")
    server = baseline.server_from(tree, Path("model.onnx"), None)
    assert server.env["SWIN_MODEL_PATH"] == "model.onnx"
    out = subprocess.run(server.cmd, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.startswith("old tree") and sys.executable == server.cmd[0]


def test_the_report_gives_each_round_and_the_median_ratio():
    rounds = [
        {
            "round": 1,
            "order": ["base", "head"],
            "ratio": 0.9,
            "runs": {"base": {"throughput_rps": 10.0}, "head": {"throughput_rps": 9.0}},
        },
        {
            "round": 2,
            "order": ["head", "base"],
            "ratio": 1.1,
            "runs": {"base": {"throughput_rps": 10.0}, "head": {"throughput_rps": 11.0}},
        },
    ]
    result = {
        "rev": "v1",
        "commit": "0123456789abcdef",
        "started_at": "today",
        "rounds": rounds,
        "ratio_median": 1.0,
        "ratio_range": [0.9, 1.1],
        "machine": {"cpus": 2, "cpu_model": "Some CPU", "cpu_features": ["AVX2"]},
    }
    text = baseline.render_markdown(result)
    assert "| 2 | head then base | 10.00 | 11.00 | 1.100 |" in text
    assert "**head / base: 1.000**" in text and "0123456789" in text and "Some CPU; AVX2" in text
