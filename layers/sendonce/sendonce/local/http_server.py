"""The HTTP server every local stand-in runs on (SQS, DynamoDB, the Graph API, the API gateway)."""

from __future__ import annotations

import signal
import sys
from http.server import ThreadingHTTPServer


class LoopbackServer(ThreadingHTTPServer):
    """A threaded server for many clients at once, quiet about clients that went away."""

    daemon_threads = True
    block_on_close = False  # a long poll or a slow answer in progress must not hold up stop()
    # Many senders connect at once: the default backlog of 5 would refuse some of them.
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:
        # A sender process killed mid-request (the local run's chaos) resets its connections: that is the
        # point of the exercise, not an error of the server.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def serve_until_stdin_closes(server) -> None:
    """Run a started stand-in in a process of its own: print its URL, serve until stdin closes, then stop.

    The parent that started it holds the other end of stdin: when it exits, however it exits, so does this.
    Ctrl-C reaches the whole process group; the parent decides when its services stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()
