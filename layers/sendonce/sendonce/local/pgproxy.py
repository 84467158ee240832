"""A PostgreSQL wire-protocol proxy that counts statements and drops connections on purpose.

Test tooling for fault injection: psycopg clients connect to `PgFaultProxy.dsn` instead of the server, the
proxy forwards every byte both ways and parses message boundaries on the way. It numbers *statements*
(client round trips: a simple `Query`, or the extended-protocol messages up to and including `Sync`, plus any
COPY data that follows) globally across all its connections, records their SQL text, and can cut the
connection at a chosen statement, at one of three points:

- ``before``: the statement's first message arrives and is not forwarded; the server never sees it.
- ``after_send``: the whole statement reaches the server and runs there, but the server's answer is withheld
  and the connection is cut when its ReadyForQuery arrives (the ambiguous window: did it commit?).
- ``after_reply``: the client gets the full answer, then the connection is cut before anything else.

A cut closes both the client and the upstream socket, so psycopg sees a lost server (`OperationalError`) and
the server sees a vanished client (it rolls back any open transaction). With ``outage=True`` the proxy also
drops every other connection and refuses new ones until `PgFaultProxy.heal()`.

The proxy refuses SSL and GSS encryption (it must read the protocol), so its DSN says ``sslmode=disable``;
it talks plaintext to the upstream server, over TCP or a Unix socket.
"""

from __future__ import annotations

import logging
import random
import selectors
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["WHENS", "Fault", "PgFaultProxy", "Statement"]

log = logging.getLogger(__name__)

WHENS = ("before", "after_send", "after_reply")

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_RECV_SIZE = 256 * 1024
_INT32 = struct.Struct("!I")

# Client messages whose body the proxy reads (Parse, Query, Bind, Close); every other body is passed through.
_CLIENT_BODIES = frozenset(b"PQBC")
# Server messages read whole (ReadyForQuery is one byte of body; reading it whole keeps the cut simple).
_SERVER_BODIES = frozenset(b"Z")
# Client messages that end a statement (a round trip answered by one ReadyForQuery).
_STATEMENT_ENDS = frozenset(b"SQF")
# Server messages forwarded even while a statement's answer is withheld: COPY would never finish without the
# Copy{In,Out,Both}Response, and authentication / parameter status are connection state, not the answer.
_ALWAYS_FORWARD = frozenset(b"GHWRSKv")
_COPY_RESPONSES = frozenset(b"GHW")

# Pump actions.
_FORWARD, _DROP, _CUT, _FORWARD_THEN_CUT = range(4)


@dataclass(eq=True)
class Statement:
    """One client round trip through the proxy.

    Attributes
    ----------
    number
        Global 1-based sequence number across all proxied connections since the last `PgFaultProxy.reset()`.
    connection
        The proxied connection's id (1-based, in accept order, never reused by one proxy).
    sql
        The SQL text (from Parse or Query; from the earlier Parse for a prepared statement). A round trip
        carrying several different texts (a pipeline) joins them with ``"; "``.
    kind
        ``"simple"`` (Query), ``"extended"`` (Parse/Bind/Execute/.../Sync), ``"copy"`` (the server asked for
        COPY data in it) or ``"function"`` (FunctionCall).
    """

    number: int
    connection: int
    sql: str
    kind: str


@dataclass(frozen=True)
class Fault:
    """A planned cut: at global statement `at`, at point `when` (one of `WHENS`)."""

    at: int
    when: str
    outage: bool = False
    on_fault: Callable[[Statement], None] | None = field(default=None, compare=False, repr=False)


class _Flight:
    """A statement in progress on one connection, with the fault it carries."""

    __slots__ = ("fault", "generation", "injected", "statement", "texts")

    def __init__(self, statement: Statement, fault: Fault | None, generation: int):
        self.statement = statement
        self.fault = fault
        self.generation = generation
        self.injected = False  # the fault came from `inject` (not chaos mode)
        self.texts: list[str] = []

    def add_text(self, text: str) -> None:
        """Remember one more SQL text of this round trip."""
        if text not in self.texts:
            self.texts.append(text)
            self.statement.sql = "; ".join(self.texts)


class PgFaultProxy:
    """A fault-injecting PostgreSQL proxy on 127.0.0.1; use as a context manager or `start()` / `stop()`.

    Parameters
    ----------
    dsn
        The upstream server, as a libpq DSN or URI. Its host may be a TCP host or a Unix-socket directory.
    """

    def __init__(self, dsn: str):
        self.upstream_dsn = dsn
        params = conninfo_to_dict(dsn)
        host = str(params.get("hostaddr") or params.get("host") or "localhost").split(",")[0]
        port = int(str(params.get("port") or 5432).split(",")[0])
        if host.startswith("/"):
            self._family, self._address = socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
        else:
            self._family, self._address = socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port)
        self._lock = threading.Lock()
        self._statements: list[Statement] = []
        self._count = 0
        self._generation = 0
        self._armed: Fault | None = None
        self._fired: Statement | None = None
        self._chaos_rate = 0.0
        self._chaos_random = random.Random(0)
        self._faults: list[Fault] = []
        self._outage = False
        self._next_connection = 0
        self._connections: set[_Connection] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> PgFaultProxy:
        """Listen on 127.0.0.1 on a free port and accept connections in a background thread.

        Returns
        -------
        PgFaultProxy
            The proxy itself.
        """
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self._listener = listener
        self._wake = socket.socketpair()
        self._stopping = False
        self._accept_thread = threading.Thread(target=self._accept_loop, name="pgproxy-accept", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, close every live connection and join the proxy's threads.

        Parameters
        ----------
        timeout
            Longest wait for each thread (threads are daemons: one stuck in an `on_fault` callback is left).
        """
        self._stopping = True
        if self._wake is not None:
            try:
                self._wake[1].send(b"x")
            except OSError:
                pass
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
            self._accept_thread = None
        for sock in (self._listener, *(self._wake or ())):
            if sock is not None:
                sock.close()
        self._listener = None
        self._wake = None
        self._close_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def __enter__(self) -> PgFaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the proxy listens on (127.0.0.1)."""
        assert self._listener is not None, "start() first"
        return self._listener.getsockname()[1]

    @property
    def dsn(self) -> str:
        """The upstream DSN pointed at the proxy: host=127.0.0.1, port=<proxy port>, sslmode=disable.

        User, password, dbname and the other parameters are kept; a hostaddr is dropped (it would bypass us).
        """
        params = conninfo_to_dict(self.upstream_dsn)
        params.pop("hostaddr", None)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable")
        return make_conninfo("", **params)

    # -- observation and control ---------------------------------------------------------------------------

    @property
    def statements(self) -> list[Statement]:
        """A snapshot of the statements seen since the last `reset()`, in number order.

        A statement is listed from its first message on; its `sql` and `kind` are complete once the client
        has sent all of it (Sync or Query) and the server has answered (COPY).
        """
        with self._lock:
            return list(self._statements)

    @property
    def count(self) -> int:
        """How many statements were numbered since the last `reset()`."""
        return self._count

    @property
    def fired(self) -> Statement | None:
        """The statement the `inject`-ed fault cut at, or None while it has not fired."""
        return self._fired

    @property
    def faults(self) -> list[Fault]:
        """A snapshot of the faults chaos mode decided on since the last `reset()`, in statement order."""
        with self._lock:
            return list(self._faults)

    @property
    def in_outage(self) -> bool:
        """True while new connections are refused (after an `outage=True` cut, until `heal()`)."""
        return self._outage

    def inject(
        self, at: int, when: str, outage: bool = False, on_fault: Callable[[Statement], None] | None = None
    ) -> Fault:
        """Arm one cut at global statement number `at` (replacing any fault armed before and not yet met).

        Parameters
        ----------
        at
            The statement number, counted from the last `reset()` (1-based).
        when
            ``"before"`` (the statement never reaches the server), ``"after_send"`` (it runs, the answer is
            lost) or ``"after_reply"`` (the answer arrives, then the connection is gone).
        outage
            After the cut, close every live connection and refuse new ones until `heal()`.
        on_fault
            Called in the proxy thread with the `Statement` just before the cut (a test may kill a process).

        Returns
        -------
        Fault
            The armed fault.
        """
        if when not in WHENS:
            raise ValueError(f"when must be one of {WHENS}, not {when!r}")
        if at < 1:
            raise ValueError("statement numbers start at 1")
        fault = Fault(at, when, outage, on_fault)
        with self._lock:
            self._armed = fault
            self._fired = None
        return fault

    def chaos(self, rate: float, seed: int) -> None:
        """Cut statements at random: each one, with probability `rate`, at a uniformly chosen point.

        Parameters
        ----------
        rate
            Probability per statement (0 turns chaos mode off).
        seed
            Seed of the `random.Random` consulted once per statement, in statement-number order, so a seed
            gives the same decisions for the same statement sequence. Decisions are appended to `faults`
            (which only `reset()` clears).
        """
        if not 0 <= rate <= 1:
            raise ValueError("rate must be between 0 and 1")
        with self._lock:
            self._chaos_rate = float(rate)
            self._chaos_random = random.Random(seed)

    def heal(self) -> None:
        """End an outage: accept new connections again."""
        self._outage = False

    def reset(self) -> None:
        """Forget the statements and restart numbering; disarm any fault (chaos included) and heal."""
        with self._lock:
            self._statements = []
            self._count = 0
            self._generation += 1
            self._armed = None
            self._fired = None
            self._chaos_rate = 0.0
            self._faults = []
        self._outage = False

    # -- internals: accepting --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        """Accept clients until `stop()`; refuse them during an outage."""
        assert self._listener is not None and self._wake is not None
        listener, wake = self._listener, self._wake[0]
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not self._stopping:
                try:
                    events = selector.select()
                    if self._stopping or any(key.fileobj is wake for key, _ in events):
                        return
                    client, _ = listener.accept()
                except OSError:
                    if self._stopping:
                        return
                    continue
                if self._outage:
                    client.close()
                    continue
                self._spawn(self._serve, client, name="pgproxy-conn")

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> threading.Thread:
        """Start a daemon thread tracked for `stop()`."""

        def run() -> None:
            try:
                target(*args)
            except BaseException:  # noqa: BLE001 - nothing may escape a proxy thread
                log.debug("pgproxy thread failed", exc_info=True)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _serve(self, client: socket.socket) -> None:
        """Connect upstream and relay one client connection until either side goes."""
        try:
            upstream = socket.socket(self._family, socket.SOCK_STREAM)
        except OSError:
            client.close()
            raise
        with self._lock:
            self._next_connection += 1
            conn = _Connection(self, self._next_connection, client, upstream)
            self._connections.add(conn)
        try:
            if self._stopping or self._outage:
                return
            upstream.settimeout(10)
            upstream.connect(self._address)
            upstream.settimeout(None)
            for sock in (client, upstream):
                if sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.run()
        except OSError:
            log.debug("pgproxy connection %d ended", conn.id, exc_info=True)
        finally:
            conn.cut()
            conn.join()
            client.close()
            upstream.close()
            with self._lock:
                self._connections.discard(conn)

    def _close_all(self, last: _Connection | None = None) -> None:
        """Cut every live connection (`last` after all the others)."""
        with self._lock:
            connections = sorted(self._connections, key=lambda conn: conn is last)
        for conn in connections:
            conn.cut()

    # -- internals: statements and faults ------------------------------------------------------------------

    def _begin(self, conn_id: int, kind: str) -> _Flight:
        """Number a new statement, record it and decide its fault."""
        with self._lock:
            self._count += 1
            statement = Statement(self._count, conn_id, "", kind)
            self._statements.append(statement)
            flight = _Flight(statement, None, self._generation)
            armed = self._armed
            if armed is not None and armed.at == statement.number:
                flight.fault, flight.injected = armed, True
                self._armed = None
            if self._chaos_rate > 0:
                # One draw per statement, even when an injected fault wins, so the sequence stays seeded.
                draw = self._chaos_random.random()
                if draw < self._chaos_rate and flight.fault is None:
                    when = WHENS[min(len(WHENS) - 1, int(draw / self._chaos_rate * len(WHENS)))]
                    flight.fault = Fault(statement.number, when)
                    self._faults.append(flight.fault)
            return flight

    def _live_fault(self, flight: _Flight) -> Fault | None:
        """The flight's fault, unless a `reset()` disarmed it since the statement began."""
        fault = flight.fault
        if fault is None or flight.generation != self._generation:
            return None
        return fault

    def _mark_fired(self, flight: _Flight) -> None:
        """Record an injected fault as fired (the cut itself follows)."""
        with self._lock:
            if flight.generation == self._generation and flight.injected:
                self._fired = flight.statement

    def _fire(self, flight: _Flight) -> None:
        """Record the fault as fired, start the outage, call `on_fault`: what happens just before a cut."""
        fault = flight.fault
        assert fault is not None
        with self._lock:
            if flight.generation != self._generation:
                return
            if flight.injected:
                self._fired = flight.statement
            if fault.outage:
                self._outage = True
        if fault.on_fault is not None:
            try:
                fault.on_fault(flight.statement)
            except Exception:
                log.exception("pgproxy on_fault callback failed")


class _Connection:
    """One proxied client connection: the client→server pump here, the server→client pump in a thread."""

    def __init__(self, proxy: PgFaultProxy, conn_id: int, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.id = conn_id
        self.client = client
        self.upstream = upstream
        self.ready = False  # the server sent its first ReadyForQuery (startup and authentication are over)
        self.closing = False  # a cut is under way: nothing more is forwarded
        self.current: _Flight | None = None  # the statement the client is sending
        self.in_flight: deque[_Flight] = deque()  # statements awaiting their ReadyForQuery, oldest first
        self.copy: _Flight | None = None  # the statement in COPY mode
        self.prepared: dict[str, str] = {}  # prepared statement name -> SQL text
        self._cut_lock = threading.Lock()
        self._cut = False
        self._server_thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Handle the startup packet(s), then relay both directions until the connection ends."""
        while True:
            packet = self._read_startup()
            if packet is None:
                return
            code = _INT32.unpack_from(packet, 4)[0] if len(packet) >= 8 else 0
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                self.client.sendall(b"N")
                continue
            self.upstream.sendall(packet)
            break
        if code == _CANCEL_REQUEST:
            self._server_thread = self.proxy._spawn(self._pump_raw, name="pgproxy-cancel")
            self._pump_raw_client()
            return
        self._server_thread = self.proxy._spawn(self._server_pump, name="pgproxy-server")
        self._pump(self.client, self.upstream, _CLIENT_BODIES, self._on_client)

    def cut(self) -> None:
        """Shut both sockets down (idempotent); the pumps wake up and end."""
        with self._cut_lock:
            if self._cut:
                return
            self._cut = True
            self.closing = True
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the server→client pump."""
        thread = self._server_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _read_startup(self) -> bytes | None:
        """Read one untyped startup-phase packet (int32 length, then the rest) from the client."""
        head = self._recv_exactly(self.client, 4)
        if head is None:
            return None
        length = _INT32.unpack(head)[0]
        if not 8 <= length <= 10_000:
            return None
        rest = self._recv_exactly(self.client, length - 4)
        return None if rest is None else head + rest

    @staticmethod
    def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
        """Read exactly `size` bytes, or None at end of stream."""
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def _pump_raw(self) -> None:
        """Copy server bytes to the client verbatim (cancel requests)."""
        try:
            while chunk := self.upstream.recv(_RECV_SIZE):
                self.client.sendall(chunk)
        except OSError:
            pass
        finally:
            self.cut()

    def _pump_raw_client(self) -> None:
        """Copy client bytes to the server verbatim (cancel requests)."""
        while chunk := self.client.recv(_RECV_SIZE):
            self.upstream.sendall(chunk)

    def _server_pump(self) -> None:
        """Relay server→client messages."""
        try:
            self._pump(self.upstream, self.client, _SERVER_BODIES, self._on_server)
        except OSError:
            pass
        finally:
            self.cut()

    # -- the framing loop -----------------------------------------------------------------------------------

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        bodies: frozenset[int],
        on_message: Callable[[int, memoryview | None], tuple[int, _Flight | None]],
    ) -> None:
        """Read typed messages from `src`, ask `on_message` what to do with each, forward to `dst`."""
        pending = bytearray()  # bytes of an incomplete header or of an incomplete message read whole
        skip = 0  # bytes left of a message passed through (or dropped) without being read whole
        skip_forward = True
        while True:
            chunk = src.recv(_RECV_SIZE)
            if not chunk:
                return
            data = memoryview(chunk)
            if skip:
                n = min(skip, len(data))
                if skip_forward:
                    dst.sendall(data[:n])
                skip -= n
                data = data[n:]
                if not data:
                    continue
            if pending:
                pending += data
                data = memoryview(pending)
            size = len(data)
            pos = out = 0  # `out`: start of the bytes not yet forwarded
            while size - pos >= 5:
                kind = data[pos]
                length = _INT32.unpack_from(data, pos + 1)[0]
                if length < 4:  # not the PostgreSQL protocol: give up on this connection
                    return
                end = pos + 1 + length
                whole = kind in bodies
                if whole and end > size:
                    break
                action, flight = on_message(kind, data[pos + 5 : end] if whole else None)
                if action == _FORWARD:
                    if end > size:
                        skip, skip_forward, pos = end - size, True, size
                        break
                    pos = end
                    continue
                if out < pos:
                    dst.sendall(data[out:pos])
                if action == _DROP:
                    if end > size:
                        skip, skip_forward, pos = end - size, False, size
                        out = size
                        break
                    pos = out = end
                    continue
                if action == _FORWARD_THEN_CUT:
                    # Recorded as fired before the client can have its answer: a caller that returns at once
                    # (its last statement) must find it fired.
                    self.proxy._mark_fired(flight)
                    dst.sendall(data[pos:end])
                assert flight is not None
                self._cut_at(flight)
                return
            if out < pos:
                dst.sendall(data[out:pos])
            pending = bytearray(data[pos:]) if pos < size else bytearray()

    def _cut_at(self, flight: _Flight) -> None:
        """Fire the flight's fault and cut this connection; for an outage, every other one first."""
        self.closing = True
        self.proxy._fire(flight)
        if flight.fault is not None and flight.fault.outage:
            self.proxy._close_all(last=self)
        self.cut()

    # -- message handlers -----------------------------------------------------------------------------------

    def _on_client(self, kind: int, body: memoryview | None) -> tuple[int, _Flight | None]:
        """Decide the fate of one client message; track statements."""
        if self.closing:
            return _DROP, None
        if not self.ready or kind == 0x58:  # 'X' Terminate, or authentication during startup
            return _FORWARD, None
        copy = self.copy
        if copy is not None:  # CopyData / CopyDone / CopyFail (and libpq's trailing Sync) of that statement
            return _FORWARD, None
        flight = self.current
        if flight is None:
            if kind == 0x48:  # a Flush between round trips (psycopg sends Sync, Flush after a pipeline)
                return _FORWARD, None
            kinds = {0x51: "simple", 0x46: "function"}
            flight = self.proxy._begin(self.id, kinds.get(kind, "extended"))
            self.current = flight
            self.in_flight.append(flight)
            fault = self.proxy._live_fault(flight)
            if fault is not None and fault.when == "before":
                self._note(flight, kind, body)
                self.closing = True
                return _CUT, flight
        self._note(flight, kind, body)
        if kind in _STATEMENT_ENDS:
            self.current = None
        return _FORWARD, None

    def _note(self, flight: _Flight, kind: int, body: memoryview | None) -> None:
        """Collect the SQL text of a Parse, Query or Bind; forget closed prepared statements."""
        if body is None:
            return
        if kind == 0x50:  # 'P' Parse: name \0 query \0 ...
            raw = bytes(body)
            name, _, rest = raw.partition(b"\0")
            text = rest.partition(b"\0")[0].decode("utf-8", "replace")
            self.prepared[name.decode("utf-8", "replace")] = text
            flight.add_text(text)
        elif kind == 0x51:  # 'Q' Query: query \0
            flight.add_text(bytes(body).partition(b"\0")[0].decode("utf-8", "replace"))
        elif kind == 0x42:  # 'B' Bind: portal \0 statement \0 ...
            raw = bytes(body[:1024]) if len(body) > 1024 else bytes(body)
            name = raw.partition(b"\0")[2].partition(b"\0")[0].decode("utf-8", "replace")
            text = self.prepared.get(name)
            if text is not None:
                flight.add_text(text)
        elif kind == 0x43 and len(body) and body[0] == 0x53:  # 'C' Close of a prepared statement
            self.prepared.pop(bytes(body[1:]).partition(b"\0")[0].decode("utf-8", "replace"), None)

    def _on_server(self, kind: int, body: memoryview | None) -> tuple[int, _Flight | None]:
        """Decide the fate of one server message; end round trips at ReadyForQuery."""
        if self.closing:
            return _DROP, None
        if kind == 0x5A:  # 'Z' ReadyForQuery
            if not self.ready:
                self.ready = True
                return _FORWARD, None
            if not self.in_flight:
                return _FORWARD, None
            flight = self.in_flight.popleft()
            if self.copy is flight:
                self.copy = None
            fault = self.proxy._live_fault(flight)
            if fault is not None and fault.when == "after_send":
                self.closing = True
                return _CUT, flight
            if fault is not None and fault.when == "after_reply":
                self.closing = True  # the client may answer Z at once: nothing of its next statement passes
                return _FORWARD_THEN_CUT, flight
            return _FORWARD, None
        head = self.in_flight[0] if self.in_flight else None
        if head is None:
            return _FORWARD, None
        if kind in _COPY_RESPONSES:
            head.statement.kind = "copy"
            if kind != 0x48:  # CopyOut needs nothing from the client
                self.copy = head
            return _FORWARD, None
        if kind not in _ALWAYS_FORWARD:
            fault = self.proxy._live_fault(head)
            if fault is not None and fault.when == "after_send":
                return _DROP, None
        return _FORWARD, None
