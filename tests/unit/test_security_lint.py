"""Ruff's security rules (bandit's) over the code that ships and the tooling around it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_security_rules_find_nothing_in_the_repository():
    # Given the repository, with its per-file exceptions in pyproject.toml (test tooling may use seeded random,
    # fake tokens and asserts; the shipped code may not)
    ruff = Path(sys.executable).with_name("ruff")

    # When ruff's security rules (S) run over it
    done = subprocess.run([str(ruff), "check", "--select", "S", "--output-format", "concise", str(ROOT)],
                          capture_output=True, text=True, timeout=120)

    # Then there is nothing to fix
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
