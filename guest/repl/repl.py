"""The persistent Python REPL of a vesicle machine.

The guest agent starts this as ``python3 -u repl.py`` with two extra pipes:
fd 3 carries cells from the agent, fd 4 carries one reply per cell back.
stdout and stderr are pipes the agent streams to the host as they fill.
The wire format is described in guest/agent/repl_protocol.hpp: a 4-byte
little-endian body length, then fields of (1-byte tag, 4-byte little-endian
length, bytes).

A cell runs in one namespace that lives as long as this process, as
``__main__``. If its last statement is an expression, its repr comes back
as the result (and it is bound to ``_``), as in a notebook. An exception
comes back as name, value and traceback, without this driver's frames, and
the REPL goes on. The agent interrupts a cell that runs past its timeout with
SIGINT, which becomes a KeyboardInterrupt inside the cell only.

After an identity refresh (a machine restored from a snapshot) the agent
sends a reseed message: clones of one snapshot share this process's memory,
so the global generators of ``random`` and ``numpy.random``, seeded once at
import, would give every clone the same numbers. They are reseeded if they
are imported; a module imported later seeds itself from the kernel, which
the refresh has already reseeded.
"""

import ast
import builtins
import fcntl
import linecache
import os
import signal
import struct
import sys
import traceback
import types

COMMAND_FD = 3
REPLY_FD = 4
# Where the pipes are moved, out of the way of the fds user code opens.
PRIVATE_FD_FLOOR = 200
# repr() and traceback texts are cut here (characters); the agent has its
# own byte limits on top.
MAX_TEXT = 256 * 1024
MAX_NAME = 4096

_HEADER = struct.Struct("<I")
_FIELD = struct.Struct("<BI")


class _State:
    in_cell = False
    cells = 0


def _on_sigint(signum, frame):
    # Only a running cell is interrupted; a SIGINT that lands between cells
    # (the timeout raced the cell's end) must not break the driver.
    if _State.in_cell:
        raise KeyboardInterrupt


def _read_exact(fd, count):
    chunks = []
    while count > 0:
        try:
            chunk = os.read(fd, min(count, 1 << 20))
        except KeyboardInterrupt:
            # User code may have replaced the SIGINT handler.
            continue
        if not chunk:
            return None
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _read_message(fd):
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    body = _read_exact(fd, length)
    if body is None:
        return None
    fields = {}
    at = 0
    while at + _FIELD.size <= len(body):
        tag, size = _FIELD.unpack_from(body, at)
        at += _FIELD.size
        fields.setdefault(chr(tag), body[at:at + size])
        at += size
    return fields


def _encode(fields):
    body = bytearray()
    for tag, value in fields:
        data = value.encode("utf-8", "backslashreplace") if isinstance(value, str) else value
        body += _FIELD.pack(ord(tag), len(data))
        body += data
    return _HEADER.pack(len(body)) + bytes(body)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except KeyboardInterrupt:
            continue
        view = view[written:]


def _cut(text, limit):
    if len(text) <= limit:
        return text
    return text[:limit] + "\n... [cut: %d characters in all]" % len(text)


def _reseed(seed):
    """Reseeds the global generators the cells may be using."""
    # Only modules already imported: importing numpy here would cost the
    # cell's memory and time for nothing. A failure (user code replaced the
    # module or its seed function) must not take the REPL down.
    generator = sys.modules.get("random")
    if generator is not None:
        try:
            generator.seed(seed)
        except BaseException:
            pass
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            import hashlib

            # The legacy global RandomState takes at most 32-bit words.
            words = struct.unpack("<16I", hashlib.sha512(seed).digest())
            numpy_random.seed(list(words))
        except BaseException:
            pass


def _flush_output():
    # A cell's output must reach the pipes before the reply does: the agent
    # sends the cell's Exit once the reply has arrived and the pipes are
    # read, so anything still buffered here would be lost or misattributed.
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass


class Repl:
    def __init__(self):
        self.module = types.ModuleType("__main__")
        self.module.__dict__["__builtins__"] = builtins
        # Classes defined in cells pickle by reference to __main__, so the
        # cells' namespace must be the module Python knows by that name.
        sys.modules["__main__"] = self.module
        self.namespace = self.module.__dict__
        self.driver_file = Repl.run_cell.__code__.co_filename
        self.pid = os.getpid()
        self.event_loop = None

    def _compile(self, source, filename):
        flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
        tree = ast.parse(source, filename, "exec")
        trailing = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            trailing = ast.Expression(tree.body.pop().value)
        body = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        expression = None
        if trailing is not None:
            expression = compile(trailing, filename, "eval", flags=flags, dont_inherit=True)
        return body, expression

    def _run(self, code):
        # Top-level await: the compiler marks such code as a coroutine.
        if code.co_flags & 0x80:  # CO_COROUTINE
            if self.event_loop is None:
                import asyncio

                self.event_loop = asyncio.new_event_loop()
            return self.event_loop.run_until_complete(eval(code, self.namespace))
        return eval(code, self.namespace)

    def run_cell(self, source):
        """Returns (result repr or None, exception or None)."""
        _State.cells += 1
        filename = "<cell %d>" % _State.cells
        # Lets tracebacks show the cell's source lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        value = None
        try:
            try:
                _State.in_cell = True
                body, expression = self._compile(source, filename)
                self._run(body)
                if expression is not None:
                    value = self._run(expression)
            finally:
                _State.in_cell = False
            if value is None:
                return None, None
            self.namespace["_"] = value
            return _cut(repr(value), MAX_TEXT), None
        except BaseException as error:  # SystemExit too: the REPL lives on
            _State.in_cell = False
            return None, error

    def describe(self, error):
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == self.driver_file:
            tb = tb.tb_next
        try:
            text = "".join(traceback.format_exception(type(error), error, tb))
        except BaseException as failure:
            text = "<traceback could not be formatted: %r>" % (failure,)
        try:
            value = str(error)
        except BaseException:
            value = "<str() of the exception failed>"
        return (
            _cut(type(error).__name__, MAX_NAME),
            _cut(value, MAX_TEXT),
            _cut(text, MAX_TEXT),
        )

    def serve(self, commands, replies):
        while True:
            message = _read_message(commands)
            if message is None:
                return  # the agent is gone
            kind = message.get("k")
            if kind == b"reseed":
                _reseed(message.get("s", b""))
                continue
            if kind != b"exec":
                continue
            sequence = message.get("q", b"")
            source = message.get("c", b"").decode("utf-8", "replace")
            result, error = self.run_cell(source)
            if os.getpid() != self.pid:
                # A child the cell forked fell out of the cell: it must not
                # answer for the REPL or read the next cell.
                _flush_output()
                os._exit(0)
            fields = [("k", b"done"), ("q", sequence)]
            if result is not None:
                fields.append(("r", result))
            if error is not None:
                try:
                    name, value, text = self.describe(error)
                except BaseException:
                    name, value, text = "Exception", "<the exception could not be described>", ""
                fields += [("n", name), ("v", value), ("t", text)]
                # Nothing in the namespace should keep the failed cell's
                # frames (and their locals) alive.
                error = None
            _flush_output()
            _write_all(replies, _encode(fields))


def _private_fd(fd):
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_FLOOR)
    os.close(fd)
    return moved


def main():
    commands = _private_fd(COMMAND_FD)
    replies = _private_fd(REPLY_FD)
    signal.signal(signal.SIGINT, _on_sigint)
    # Like the interactive interpreter: imports come from the working
    # directory, not from where this driver lives.
    sys.argv = [""]
    sys.path[0] = ""
    Repl().serve(commands, replies)


if __name__ == "__main__":
    main()
