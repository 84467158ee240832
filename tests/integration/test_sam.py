"""The SAM template lints offline and builds: `sam validate --lint` and `sam build`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAM = Path(sys.executable).parent / "sam"
PYENV_PYTHON = "3.12.1"  # the interpreter pyenv gives for python3.12 on the dev and CI machines

pytestmark = pytest.mark.sam


def run_sam(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the venv's `sam` at the project root, offline-friendly (no telemetry, a fixed region)."""
    full_env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1", **(env or {})}
    return subprocess.run(
        [str(SAM), *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def python312_env() -> dict[str, str] | None:
    """An environment where `python3.12` runs (sam build needs it on PATH), or None when there is none."""
    env = {**os.environ, "PYENV_VERSION": PYENV_PYTHON}
    if not shutil.which("python3.12", path=env.get("PATH")):
        return None
    try:
        probe = subprocess.run(["python3.12", "--version"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return env if probe.returncode == 0 and probe.stdout.startswith("Python 3.12") else None


def outcome(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def test_template_validate_lint_passes():
    # Given the project's template.yaml and no AWS credentials (--lint runs cfn-lint offline)
    # When
    result = run_sam("validate", "--lint", "--template-file", "template.yaml")

    # Then
    assert result.returncode == 0, outcome(result)


def test_build_lays_out_layer_and_sender(tmp_path):
    # Given a python3.12 interpreter for the python3.12 build method
    env = python312_env()
    if env is None:
        pytest.skip("sam build needs python3.12 on PATH (tried PATH and pyenv PYENV_VERSION=3.12.1)")
    build_dir = tmp_path / "build"

    # When
    started = time.monotonic()
    result = run_sam(
        "build", "--template-file", "template.yaml", "--build-dir", str(build_dir), "--no-cached", env=env
    )
    elapsed = time.monotonic() - started
    print(f"sam build took {elapsed:.1f} s")

    # Then
    assert result.returncode == 0, outcome(result)
    assert (build_dir / "template.yaml").is_file()
    layer = build_dir / "SharedLayer" / "python"
    assert (layer / "sendonce" / "sender.py").is_file(), sorted(p.name for p in layer.iterdir())
    assert (layer / "psycopg").is_dir(), sorted(p.name for p in layer.iterdir())
    assert (build_dir / "SenderFunction" / "app.py").is_file()

    # And every handler imports on Python 3.12 from the layer plus what the Lambda runtime ships (boto3)
    runtime = _lambda_runtime_packages(tmp_path / "runtime")
    functions = sorted(p for p in build_dir.iterdir() if (p / "app.py").is_file())
    assert {p.name for p in functions} >= {
        "SenderFunction", "CampaignsApiFunction", "ResetStuckFunction", "RecomputeCountersFunction", "DlqHandlerFunction",
        "WebhookFunction",
    }
    for function in functions:
        path = os.pathsep.join([str(function), str(layer), str(runtime)])
        probe = subprocess.run(
            ["python3.12", "-I", "-c", IMPORT_HANDLER, path], env=env, capture_output=True, text=True, timeout=60
        )
        assert probe.returncode == 0, f"{function.name}: {outcome(probe)}"


IMPORT_HANDLER = "import sys; sys.path[:0] = sys.argv[1].split(':'); import app; assert callable(app.lambda_handler)"


def _lambda_runtime_packages(folder: Path) -> Path:
    """A folder holding what the python3.12 Lambda runtime provides besides the standard library."""
    import boto3

    site = Path(boto3.__file__).resolve().parents[1]
    folder.mkdir()
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py"):
        (folder / name).symlink_to(site / name)
    return folder
