"""Run the project's Lambda handlers in-process, the way `sam local invoke` runs them in a container."""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[4]


class LocalContext:
    """The parts of the Lambda context object that sendonce and Powertools read."""

    def __init__(self, function_name: str, timeout_seconds: float = 30.0, memory_mb: int = 512):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self.timeout_seconds = timeout_seconds
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


@lru_cache(maxsize=None)
def load_handler(function: str) -> Callable[[dict, object], dict]:
    """Import `functions/<function>/app.py` and return its `lambda_handler`."""
    path = PROJECT_ROOT / "functions" / function / "app.py"
    if not path.is_file():
        raise FileNotFoundError(f"no handler at {path}")
    spec = importlib.util.spec_from_file_location(f"functions_{function}_app", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def invoke(function: str, event: dict, timeout_seconds: float = 30.0) -> dict:
    """Invoke a handler once with a fresh context, like one Lambda invocation."""
    return load_handler(function)(event, LocalContext(function, timeout_seconds))
