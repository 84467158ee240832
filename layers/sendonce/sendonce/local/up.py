"""`sendonce local up`: the whole local stack, kept running, for trying every command and the HTTP API by hand."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from sendonce.local.stack import LocalStack


def local_up(say: Callable[[str], None], senders: int = 2, until: Callable[[], bool] = lambda: False) -> None:
    """Start the stack, `say` the shell lines that point at it, and keep it running until Ctrl-C (or `until()`)."""
    with LocalStack(senders=senders) as stack:
        say(f"# sendonce local stack ({stack.database}); paste these lines into another shell:")
        for name, value in stack.environ().items():
            say(f"export {name}={shlex.quote(value)}")
        say("# then, for example:")
        say("#   sendonce campaign create --name demo --template order_update --language en_US \\")
        say("#       --phone-number-id 106540352242922 --contacts contacts.csv")
        say('#   curl -s "$SENDONCE_API_URL/campaigns"        (the HTTP API, unsigned locally)')
        say(f"# the fake Graph API answers at {stack.graph.url} and posts Meta's statuses to the webhook")
        say("# Ctrl-C stops everything and deletes what it made.")
        while not until():
            stack.supervise()
            time.sleep(0.5)
