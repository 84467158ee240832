"""benchmarks/coordination.py (issue 14) runs end to end: --quick --json, N = 1 and 4. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_reports_both_connection_counts_and_every_row_sent_once():
    # Given the benchmark in its smoke mode (it prefers a private cluster; DATABASE_URL is its fallback)
    env = dict(os.environ)

    # When it runs
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "coordination.py"), "--quick", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )

    # Then it exits 0 (no correctness violation) with one JSON object holding runs for 1 and 4 connections
    assert done.returncode == 0, done.stderr[-3000:]
    output = json.loads(done.stdout)
    runs = {r["connections"]: r for r in output["runs"]}
    assert set(runs) == {1, 4}
    for run in runs.values():
        assert run["claims_per_second"] > 0
        assert abs(run["messages_per_second"] - run["claims_per_second"] * output["batch"]) < 1
        assert run["claim_p50_ms"] is not None and run["finalize_p50_ms"] is not None
        assert run["correct"] is True
    assert output["correct"] is True and output["saturation"]["connections"] in (1, 4)
