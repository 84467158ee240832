"""The Lambda layer's lock: what `sam build` installs is pinned, hashed, and what requirements.in asks for."""

from __future__ import annotations

import re
from pathlib import Path

LAYER = Path(__file__).resolve().parents[2] / "layers" / "sendonce"


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_layer_lock_pins_and_hashes_every_requirement():
    # Given the layer's requirements and its lock
    wanted = [_name(line) for line in (LAYER / "requirements.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    lock = (LAYER / "requirements.txt").read_text()
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, flags=re.M))

    # Then every requirement is pinned to one version, and every pin carries hashes (pip then checks them all)
    assert set(wanted) <= {name.lower() for name in pinned}, set(wanted) - {name.lower() for name in pinned}
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.split("\n", 1)[1])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block.split("\n", 1)[0])
