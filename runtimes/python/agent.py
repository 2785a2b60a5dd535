"""newt's in-container agent for Python functions.

The host starts one container per instance with this script as its command and talks
to it over the container's stdin/stdout. Every message, both ways, is a frame: a
4-byte big-endian unsigned length, then that many bytes of UTF-8 JSON (an object).

    host -> agent                                   agent -> host
    {"type":"ping"}                                 {"type":"pong"}
    {"type":"init","function":"dice",               {"type":"ready","logs":"..."}
     "handler":"main:handler","workdir":"/app",     or {"type":"error","error":"...",
     "env":{"K":"V"},"max_log_bytes":1048576,           "logs":"..."}
     "max_output_bytes":6291456,
     "max_frame_bytes":14745600,
     "bundle":"<optional base64 .tar.gz/.zip>",
     "egress_socket":"<optional: /run/newt/egress.sock>"}
    {"type":"run","id":"<call id>",                 {"type":"result","id":"...","ok":true,
     "input":"<raw input>","deadline_ms":<unix ms     "output":"<JSON>","logs":"..."}
     or null>}                                      or {"type":"result","id":"...",
                                                        "ok":false,"error":"...","logs":"..."}

`init` imports the handler once; each `run` calls it with the input parsed as JSON
(`None` for an empty input) and, if it takes two arguments, a `Context`. What the
handler prints to `sys.stdout` or `sys.stderr` during a call comes back as that call's
`logs`. Calls are sequential. End of stdin ends the agent (exit 0); a malformed frame
is a host bug: the agent says so on stderr and exits 2.

Replies are bounded by `init`'s limits, and the host treats a bigger frame as a broken
instance: a return value whose JSON is over `max_output_bytes` fails the call
("output exceeds the limit"), logs keep their first `max_log_bytes`, an error text its
first and last bytes up to 16 KiB, and a reply still over `max_frame_bytes` (logs full
of control characters, which JSON escapes to six bytes each) has its logs, then its
error, cut until it fits. Input or a return value nested deeper than Python's recursion
limit fails that call only ("nested too deeply").

An image built for one function has its code in `workdir` already. A runtime-level
instance (the bare runtime image, started before any function claims it, with a
read-only root) gets the code in `init` instead: `bundle` is a base64 .tar.gz or .zip
that the agent unpacks into `workdir`, which must then be writable (a tmpfs). The host
starts such an instance with `NEWT_RUNTIME_LEVEL=1`; the agent then imports what unpacking needs
while it waits, so loading a function costs no module imports.

A function with an `allow_outbound` list gets `egress_socket`: the unix socket of the
egress proxy newt runs for this instance on the host (the container itself has no
network). The agent then listens on a loopback port that pipes each connection to that
socket (`EgressForwarder`) and sets `HTTP_PROXY`, `HTTPS_PROXY`, `http_proxy` and
`https_proxy` to it, clearing `NO_PROXY`, before the handler is imported. The proxy
allows only what the list names and answers anything else with a 403 whose body says
why; a function without a list gets no socket, and no way out at all.

A function's requirements are installed by its image build, as the function's user, into
`workdir/.deps` (`pip3 install --target .deps`): when that folder exists, `init` puts it on
`sys.path` right after `workdir` itself, ahead of the image's own packages and the standard
library, and reads its `.pth` files as site-packages' are read.

Standard library only: it runs on Debian bookworm's python3 (3.11) and on 3.12.
"""

import io
import json
import os
import struct
import sys
import time
import traceback

#: Largest frame the agent accepts: anything bigger is a corrupt length prefix.
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Logs kept per call when `init` does not say (`max_log_bytes`).
DEFAULT_MAX_LOG_BYTES = 1024 * 1024
#: Largest return value, as JSON, when `init` does not say (`max_output_bytes`).
DEFAULT_MAX_OUTPUT_BYTES = 6 * 1024 * 1024
#: Room in a reply for all but output and logs; the host's bound when `init` does not
#: give `max_frame_bytes` is 2 * (max_output_bytes + max_log_bytes) + this.
FRAME_OVERHEAD = 64 * 1024
#: An error text (a traceback) keeps at most this many bytes: its head and its tail.
MAX_ERROR_BYTES = 16 * 1024
#: Exit status for a protocol violation by the host.
EXIT_PROTOCOL_ERROR = 2
#: Folder of `workdir` the image build installs the function's requirements into.
DEPS_DIR = ".deps"


class ProtocolError(Exception):
    """The host sent something that is not a valid frame or message."""


class Channel:
    """The frame channel to the host, on private duplicates of fds 0 and 1.

    The function shares this process, and so do the C extensions and subprocesses it
    starts: any of them may write straight to fd 1 (`os.write(1, ...)`, a child's
    inherited stdout) or read fd 0. A single stray byte on fd 1 would shift every
    later length prefix, so the frames move to fds only this object knows, and fds 0
    and 1 are pointed at /dev/null and at stderr, where stray bytes do no harm.
    `os.dup` makes non-inheritable fds, so subprocesses never see the channel.
    """

    def __init__(self):
        sys.stdout.flush()
        self._reader = os.fdopen(os.dup(0), "rb", buffering=0)
        self._writer = os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)

    def _read_exact(self, size):
        """Reads `size` bytes; `None` on end of input before the first byte."""
        chunks, remaining = [], size
        while remaining:
            chunk = self._reader.read(remaining)
            if not chunk:
                if remaining == size:
                    return None
                raise ProtocolError(f"input ended inside a frame ({size - remaining} of {size} bytes)")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def receive(self):
        """The next message as a dict, or `None` at end of input."""
        header = self._read_exact(4)
        if header is None:
            return None
        (length,) = struct.unpack(">I", header)
        if length > MAX_FRAME_BYTES:
            raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
        body = self._read_exact(length) if length else b""
        if body is None:
            raise ProtocolError(f"input ended before a {length}-byte frame body")
        try:
            message = json.loads(body.decode("utf-8"))
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError
            raise ProtocolError(f"frame is not UTF-8 JSON: {error}") from None
        if not isinstance(message, dict):
            raise ProtocolError(f"frame is JSON {type(message).__name__}, not an object")
        return message

    def send(self, message, max_bytes=None):
        """Sends `message`, cut to fit `max_bytes` when given (see `fit`)."""
        body = encode(message) if max_bytes is None else fit(message, max_bytes)
        data = struct.pack(">I", len(body)) + body
        view = memoryview(data)
        while view:  # a raw write to a pipe may be partial
            written = self._writer.write(view)
            view = view[written:]


def encode(value):
    """JSON as the host reads it: UTF-8, non-ASCII unescaped.

    ensure_ascii=False then errors="replace": a lone surrogate (which Python strings
    may hold) becomes "?" instead of a \\ud800 escape that strict JSON parsers such as
    serde_json reject.
    """
    return json.dumps(value, ensure_ascii=False).encode("utf-8", errors="replace")


def clip(text, limit, mark="error truncated"):
    """`text` cut to about `limit` UTF-8 bytes, keeping its head and its tail (where a
    traceback names the exception)."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    head, tail = limit // 4, limit - limit // 4
    cut = len(data) - head - tail
    # A cut may split a character: drop the partial bytes.
    return (data[:head].decode("utf-8", errors="ignore") + f"\n[{mark}: {cut} bytes]\n"
            + data[-tail:].decode("utf-8", errors="ignore"))


def fit(message, max_bytes):
    """The frame body of `message`, at most `max_bytes`: the host refuses bigger frames.

    The caps already bound a reply to about 2 * (output + logs) bytes, since JSON
    escapes ordinary text to at most twice its size; only control characters (six
    bytes as \\u0000) can push it further. Then the logs are cut, then the error, to
    the longest prefix that fits. The output is never cut: the agent refused it
    already if it was over `max_output_bytes`.
    """
    body = encode(message)
    for name, mark in (("logs", "\n[logs truncated]"), ("error", "\n[error truncated]")):
        text = message.get(name)
        if len(body) <= max_bytes or not isinstance(text, str) or not text:
            continue
        room = max_bytes - (len(body) - len(encode(text)))
        kept, over = 0, len(text)  # the longest prefix that fits is in [kept, over)
        while over - kept > 1:
            middle = (kept + over) // 2
            if len(encode(text[:middle] + mark)) <= room:
                kept = middle
            else:
                over = middle
        message = {**message, name: text[:kept] + mark if kept or len(encode(mark)) <= room else ""}
        body = encode(message)
    if len(body) > max_bytes:  # only with a host-chosen bound too small for any reply
        reply = {key: message[key] for key in ("type", "id") if key in message}
        if message.get("type") == "result":
            reply.update(ok=False, logs="")
        reply["error"] = f"the reply does not fit in the host's {max_bytes}-byte frame limit"
        body = encode(reply)
    return body


class LogBuffer(io.TextIOBase):
    """Collects text up to `limit` UTF-8 bytes, keeping the head."""

    def __init__(self, limit):
        super().__init__()
        self._limit = limit
        self._data = bytearray()
        self._truncated = False

    def writable(self):
        return True

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        room = self._limit - len(self._data)
        encoded = text.encode("utf-8", errors="replace")
        if len(encoded) > room:
            self._truncated = True
            encoded = encoded[: max(room, 0)]
        self._data += encoded
        return len(text)

    def text(self):
        # A cut may split a character: drop the partial bytes.
        logs = self._data.decode("utf-8", errors="ignore")
        return logs + "\n[logs truncated]" if self._truncated else logs


class Capture(io.TextIOBase):
    """Stands in for `sys.stdout` and `sys.stderr` for the agent's whole life.

    Writes go to the current `LogBuffer` during `init` and calls, and to the real
    stderr between them. Installing it once, rather than swapping streams per call
    with `contextlib.redirect_stdout`, keeps capture working for code that saved a
    reference to `sys.stderr` at import (a `logging.StreamHandler`, for one): that
    reference is this object, which always writes to the current call's logs.
    """

    def __init__(self, fallback):
        super().__init__()
        self._fallback = fallback
        self.sink = None

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "replace"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        # Code that needs a real fd (subprocess with stdout=sys.stdout, faulthandler)
        # gets stderr: its output reaches the container's stderr, not the call's logs.
        return 2

    def write(self, text):
        sink = self.sink if self.sink is not None else self._fallback
        return sink.write(text)

    def flush(self):
        if self.sink is None:
            self._fallback.flush()


class EgressForwarder:
    """A loopback TCP port that leads to newt's egress proxy.

    The container has no network (`network_mode: none`): its only way out is the
    proxy's unix socket, which the host bind-mounts when the function has an
    `allow_outbound` list. HTTP libraries take a proxy URL, not a socket path, so the
    agent listens on 127.0.0.1 inside the container and pipes each connection to the
    socket; `HTTP_PROXY`/`HTTPS_PROXY` point there. The proxy, on the host, decides
    what each request may reach (and answers 403 with the reason when it may not);
    this only moves bytes.

    One thread serves every connection with a selector: a thread per direction would
    spend the container's process limit (threads count against it) on open
    connections. Each direction buffers at most `BUFFER` bytes, reading again only
    once its buffer has drained; an end of input is passed on as a half-close once
    the bytes before it are written; a pair is closed when both directions ended or
    either end fails.
    """

    #: Bytes one direction of a connection holds before it stops reading.
    BUFFER = 64 * 1024
    #: Seconds connecting to the proxy's socket may take.
    CONNECT_TIMEOUT = 5

    def __init__(self, socket_path):
        import selectors
        import socket
        import threading

        self.socket_path = socket_path
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self.url = "http://127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._serve, name="newt-egress", daemon=True).start()

    def _serve(self):
        while True:
            for key, events in self._selector.select():
                if key.data is None:
                    self._accept()
                else:
                    key.data.handle(key.fileobj, events)

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of fds: the client waits in the backlog a moment
                time.sleep(0.05)
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # A unix socket connects at once or fails at once, unless the proxy's
                # backlog is full: bounded, so the loop never hangs on it.
                upstream.settimeout(self.CONNECT_TIMEOUT)
                upstream.connect(self.socket_path)
            except OSError as error:
                upstream.close()
                # The answer is written by a thread of its own: it waits for the
                # client's request, and the loop must not.
                threading.Thread(target=self._refuse, args=(client, error), daemon=True).start()
                continue
            _Pair(self._selector, client, upstream, self.BUFFER)

    def _refuse(self, client, error):
        """Answers 502 saying the proxy is unreachable, so the function sees why."""
        import socket

        body = ("newt egress: the proxy at %s is unreachable: %s\n" % (self.socket_path, error)).encode()
        head = ("HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Length: %d\r\nConnection: close\r\nX-Newt-Egress: unreachable\r\n\r\n"
                % len(body)).encode()
        try:
            client.setblocking(True)
            client.settimeout(2)
            client.sendall(head + body)
            client.shutdown(socket.SHUT_WR)
            # Read what the client sent, or closing would reset the connection
            # before it reads the answer.
            while client.recv(65536):
                pass
        except OSError:
            pass
        finally:
            client.close()


class _Pair:
    """A client connection and its proxy connection, copied both ways."""

    def __init__(self, selector, client, upstream, limit):
        self._selector = selector
        self._limit = limit
        self._peer = {client: upstream, upstream: client}
        #: Bytes waiting to be written to each socket.
        self._pending = {client: bytearray(), upstream: bytearray()}
        #: Whether each socket's peer has ended its input (passed on once pending is out).
        self._peer_ended = {client: False, upstream: False}
        #: Whether each socket's write side is shut.
        self._shut = {client: False, upstream: False}
        self._watched = set()
        self._closed = False
        for sock in (client, upstream):
            sock.setblocking(False)
            self._update(sock)

    def _interest(self, sock):
        import selectors

        events = 0
        peer = self._peer[sock]
        # Read while this socket has not ended and its peer's buffer has room.
        if not self._peer_ended[peer] and len(self._pending[peer]) < self._limit:
            events |= selectors.EVENT_READ
        if self._pending[sock]:
            events |= selectors.EVENT_WRITE
        return events

    def _update(self, sock):
        """Watches `sock` for what it waits on now (a selector takes no empty interest)."""
        events = self._interest(sock)
        if events and sock in self._watched:
            self._selector.modify(sock, events, self)
        elif events:
            self._selector.register(sock, events, self)
            self._watched.add(sock)
        elif sock in self._watched:
            self._selector.unregister(sock)
            self._watched.discard(sock)

    def handle(self, sock, events):
        import selectors
        import socket

        if self._closed:  # closed by an earlier event of the same batch
            return
        peer = self._peer[sock]
        try:
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(self._limit)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data:
                    self._pending[peer] += data
                elif data is not None:
                    self._peer_ended[peer] = True
            if events & selectors.EVENT_WRITE and self._pending[sock]:
                try:
                    sent = sock.send(self._pending[sock])
                except (BlockingIOError, InterruptedError):
                    sent = 0
                del self._pending[sock][:sent]
            for end in (sock, peer):
                if self._peer_ended[end] and not self._pending[end] and not self._shut[end]:
                    end.shutdown(socket.SHUT_WR)
                    self._shut[end] = True
        except OSError:  # reset, broken pipe: the exchange is over
            self.close()
            return
        if all(self._shut.values()):
            self.close()
            return
        self._update(sock)
        self._update(peer)

    def close(self):
        if self._closed:
            return
        self._closed = True
        for sock in self._peer:
            if sock in self._watched:
                self._selector.unregister(sock)
            sock.close()
        self._watched.clear()


class Context:
    """The second handler argument: facts about the current call."""

    def __init__(self, function_name, call_id, deadline_ms):
        self.function_name = function_name
        self.call_id = call_id
        #: Unix time in milliseconds by which the call must end, or None.
        self.deadline_ms = deadline_ms

    def remaining_ms(self):
        """Milliseconds left before the deadline (never negative), or None without one."""
        if self.deadline_ms is None:
            return None
        return max(0, int(self.deadline_ms - time.time() * 1000))

    def __repr__(self):
        return f"Context(function_name={self.function_name!r}, call_id={self.call_id!r}, deadline_ms={self.deadline_ms!r})"


#: The variables HTTP clients (urllib, requests, httpx, curl, pip) read a proxy from.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def use_egress_proxy(url):
    """Points every HTTP client at the egress forwarder, set before the handler is
    imported so clients made at import see it too. `NO_PROXY` is cleared: with no
    network, a bypassed destination could only fail, and less clearly."""
    for name in PROXY_VARIABLES:
        os.environ[name] = url
    for name in ("NO_PROXY", "no_proxy"):
        os.environ.pop(name, None)


#: The type of a function defined with `def` or `lambda`.
PLAIN_FUNCTION = type(lambda: None)
#: The code flag of a function taking `*args`.
CO_VARARGS = 0x04


def takes_context(handler):
    """Whether `handler` is called as (event, context) rather than (event).

    A plain function is read from its code object; anything else (a bound method, a
    callable object, a decorated function) through `inspect.signature`, imported only
    then: `inspect` is a third of the agent's start-up imports.
    """
    code = getattr(handler, "__code__", None)
    if (isinstance(handler, PLAIN_FUNCTION) and code is not None
            and not hasattr(handler, "__wrapped__") and not hasattr(handler, "__signature__")):
        if code.co_flags & CO_VARARGS:
            return True
        positional = code.co_argcount  # positional-only ones included
        required = positional - len(handler.__defaults__ or ())
        if positional and required <= 2:
            return positional >= 2
    import inspect

    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: one argument
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return True
    required = [p for p in positional if p.default is p.empty]
    if not positional or len(required) > 2:
        raise TypeError(f"handler must take (event) or (event, context), not {inspect.signature(handler)}")
    return len(positional) >= 2


def load_handler(spec):
    """Imports `module:function` (dotted names allowed on both sides)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"handler {spec!r} is not of the form module:function")
    # importlib.import_module without importing importlib: the named module itself.
    __import__(module_name)
    target = sys.modules[module_name]
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"handler {spec!r} is a {type(target).__name__}, not callable")
    return target


def unpack_bundle(data, workdir):
    """Unpacks a .tar.gz, .tar or .zip into `workdir`: regular files and folders only.

    The host validated the bundle already; this refuses links, devices and paths that
    leave `workdir` anyway (bookworm's Python 3.11.2 predates tarfile's `filter`).
    """
    # Imported here, not at the top: an image built for one function never unpacks
    # anything, and these modules add ~20 ms to every agent start (measured in the image).
    # A runtime-level instance has them already (`preload_unpacking`).
    import shutil
    import tarfile
    import zipfile
    os.makedirs(workdir, exist_ok=True)
    root = os.path.realpath(workdir)
    made = {root}

    def folder(path):
        if path not in made:
            os.makedirs(path, exist_ok=True)
            made.add(path)

    def destination(name):
        # Lexical, not realpath: nothing here makes a link, so no path in the tree
        # can lead elsewhere (and a realpath per entry was most of an unpack's time).
        path = os.path.normpath(os.path.join(root, name))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"bundle entry {name!r} is outside the workdir")
        folder(os.path.dirname(path))
        return path

    def copy(source, path):
        with source, open(path, "wb") as target:
            shutil.copyfileobj(source, target)

    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for entry in archive.infolist():
                path = destination(entry.filename)
                if entry.is_dir():
                    folder(path)
                else:  # a zip "symlink" is written as a plain file holding its target
                    copy(archive.open(entry), path)
        return
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:  # compression auto-detected
        for entry in archive:
            path = destination(entry.name)
            if entry.isdir():
                folder(path)
            elif entry.isfile():
                copy(archive.extractfile(entry), path)
                os.chmod(path, 0o755 if entry.mode & 0o111 else 0o644)
            else:
                raise ValueError(f"bundle entry {entry.name!r} is not a regular file or folder")


def add_dependencies(workdir):
    """Puts `workdir/.deps` first on `sys.path` (the caller then puts `workdir` before
    it), with what its `.pth` files add: the function's pinned versions win over the
    image's packages, as `PYTHONPATH` would make them. Nothing when there is no such
    folder (a function without requirements)."""
    deps = os.path.join(workdir, DEPS_DIR)
    if not os.path.isdir(deps):
        return
    import site  # imported at start-up already, unless python runs with -S

    before = list(sys.path)
    site.addsitedir(deps)  # appends the folder, then what its .pth files name
    added = [entry for entry in sys.path if entry not in before]
    sys.path[:] = added + [entry for entry in sys.path if entry not in added]


def preload_unpacking():
    """Imports what `init` with a bundle needs, ahead of it: a runtime-level instance
    is idle until a function claims it, and that claim is a call somebody waits on."""
    import base64  # noqa: F401
    import shutil  # noqa: F401
    import tarfile  # noqa: F401
    import zipfile  # noqa: F401


def field(message, name, kinds, default=None, required=False):
    """`message[name]`, checked against `kinds`; a wrong type is the host's bug."""
    if name not in message or message[name] is None:
        if required:
            raise ProtocolError(f"{message.get('type')} message has no {name!r}")
        return default
    value = message[name]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    # bool is an int subclass in Python, but `true` is no number of milliseconds.
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"{message.get('type')} message field {name!r} has type {type(value).__name__}")
    return value


class Agent:
    """Holds the loaded function and answers the host's messages one by one."""

    def __init__(self, channel, capture):
        self.channel = channel
        self.capture = capture
        self.function_name = None
        self.handler = None
        self.with_context = False
        self.max_log_bytes = DEFAULT_MAX_LOG_BYTES
        self.max_output_bytes = DEFAULT_MAX_OUTPUT_BYTES
        self.max_frame_bytes = None

    def serve(self):
        """Answers messages until end of input."""
        while True:
            message = self.channel.receive()
            if message is None:
                return
            kind = message.get("type")
            if kind == "ping":
                self.channel.send({"type": "pong"})
            elif kind == "init":
                reply = self.init(message)
                self.channel.send(reply, self.max_frame_bytes)
            elif kind == "run":
                reply = self.run(message)
                self.channel.send(reply, self.max_frame_bytes)
            else:
                raise ProtocolError(f"unknown message type {kind!r}")

    def init(self, message):
        if self.handler is not None:
            return {"type": "error", "error": f"already initialised with {self.function_name!r}", "logs": ""}
        function_name = field(message, "function", str, required=True)
        spec = field(message, "handler", str, "main:handler")
        workdir = field(message, "workdir", str, "/app")
        env = field(message, "env", dict, {})
        bundle = field(message, "bundle", str)
        egress_socket = field(message, "egress_socket", str)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ProtocolError("init message field 'env' must map strings to strings")
        self.max_log_bytes = field(message, "max_log_bytes", int, DEFAULT_MAX_LOG_BYTES)
        self.max_output_bytes = field(message, "max_output_bytes", int, DEFAULT_MAX_OUTPUT_BYTES)
        self.max_frame_bytes = field(message, "max_frame_bytes", int,
                                     2 * (self.max_output_bytes + self.max_log_bytes) + FRAME_OVERHEAD)

        logs = LogBuffer(self.max_log_bytes)
        self.capture.sink = logs
        try:
            os.environ.update(env)
            os.environ["NEWT_FUNCTION"] = function_name
            if egress_socket is not None:
                use_egress_proxy(EgressForwarder(egress_socket).url)
            if bundle is not None:
                import base64  # only needed here; see unpack_bundle

                unpack_bundle(base64.b64decode(bundle, validate=True), workdir)
            os.chdir(workdir)
            add_dependencies(workdir)
            sys.path.insert(0, workdir)
            handler = load_handler(spec)
            with_context = takes_context(handler)
        except (Exception, SystemExit):  # a module may call sys.exit() at import
            return {"type": "error", "error": clip(traceback.format_exc(), MAX_ERROR_BYTES), "logs": logs.text()}
        finally:
            self.capture.sink = None
        self.function_name, self.handler, self.with_context = function_name, handler, with_context
        return {"type": "ready", "logs": logs.text()}

    def run(self, message):
        call_id = field(message, "id", str, required=True)
        raw_input = field(message, "input", str, "")
        # Input that is not UTF-8 comes as base64 of its exact bytes: the host never
        # alters it, and json.loads says why it is not JSON.
        raw_b64 = field(message, "input_b64", str)
        deadline_ms = field(message, "deadline_ms", (int, float))

        def failed(error, logs=""):
            return {"type": "result", "id": call_id, "ok": False, "error": clip(error, MAX_ERROR_BYTES), "logs": logs}

        if self.handler is None:
            return failed("the agent has no function: send init first")
        try:
            if raw_b64 is not None:
                import base64  # only needed here; see unpack_bundle
                raw_input = base64.b64decode(raw_b64, validate=True)
            event = json.loads(raw_input) if raw_input.strip() else None
        except ValueError as error:
            return failed(f"input is not valid JSON: {error}")
        except RecursionError:
            # The C parser counts its depth against the recursion limit: `[[[[...]]]]`
            # 100 000 deep fails this call, not the agent.
            return failed(f"input is nested too deeply: JSON deeper than {sys.getrecursionlimit()} levels is refused")

        os.environ["NEWT_CALL_ID"] = call_id
        logs = LogBuffer(self.max_log_bytes)
        self.capture.sink = logs
        try:
            if self.with_context:
                value = self.handler(event, Context(self.function_name, call_id, deadline_ms))
            else:
                value = self.handler(event)
        # SystemExit too: a handler's sys.exit() fails the call, not the instance.
        # KeyboardInterrupt (a signal) still ends the agent.
        except (Exception, SystemExit) as error:
            # Start the traceback at the handler: the agent's own frame is noise.
            frames = error.__traceback__.tb_next
            return failed("".join(traceback.format_exception(type(error), error, frames)), logs.text())
        finally:
            self.capture.sink = None
        try:
            # Compact like serde_json; NaN and Infinity are not JSON, so refuse them.
            output = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except RecursionError:  # deep nesting, or a list that contains itself
            return failed(f"the handler's return value ({type(value).__name__}) is nested too deeply: "
                          f"JSON deeper than {sys.getrecursionlimit()} levels is refused", logs.text())
        except (TypeError, ValueError) as error:
            return failed(f"the handler's return value ({type(value).__name__}) is not JSON-serialisable: {error}", logs.text())
        # Counted as the host counts it, in UTF-8 bytes ("?" for a lone surrogate).
        size = len(output.encode("utf-8", errors="replace"))
        if size > self.max_output_bytes:
            return failed(f"output exceeds the limit of {self.max_output_bytes} bytes: "
                          f"the return value is {size} bytes of JSON", logs.text())
        return {"type": "result", "id": call_id, "ok": True, "output": output, "logs": logs.text()}


def main():
    if os.environ.get("NEWT_RUNTIME_LEVEL") == "1":
        preload_unpacking()
    channel = Channel()
    capture = Capture(sys.__stderr__)
    sys.stdout = sys.stderr = capture
    try:
        Agent(channel, capture).serve()
    except ProtocolError as error:
        print(f"newt agent: protocol error: {error}", file=sys.__stderr__, flush=True)
        return EXIT_PROTOCOL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
