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

A cell's display outputs go to the agent as they happen, each a MIME
bundle (MIME type -> bytes), ahead of the cell's reply: ``display(obj)``
(a builtin here), a trailing expression whose value has a rich
representation (``_repr_html_``, ``_repr_png_``, ... or
``_repr_mimebundle_``, as IPython defines them; marked as the main result),
and matplotlib figures: ``plt.show()`` shows the open figures and closes
them, and the figures still open when a cell ends are shown then, once, as
a notebook's inline backend does. matplotlib itself is never imported here:
the hook that gives pyplot its ``show`` runs only when a cell imports
pyplot (MPLBACKEND is Agg, so nothing looks for a display server).

After an identity refresh (a machine restored from a snapshot) the agent
sends a reseed message: clones of one snapshot share this process's memory,
so the global generators of ``random`` and ``numpy.random``, seeded once at
import, would give every clone the same numbers. They are reseeded if they
are imported; a module imported later seeds itself from the kernel, which
the refresh has already reseeded.
"""

import _thread
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
# A display bundle larger than this (its data plus _ENTRY_OVERHEAD per MIME
# type) is dropped with a note on stderr: the agent sends a bundle in one
# frame of its channel. The agent and hostd enforce the same number
# (kMaxBundleBytes in messages/display.hpp).
MAX_DISPLAY_BYTES = 4 * 1024 * 1024 - 64 * 1024
_ENTRY_OVERHEAD = 16
MAX_MIME_TYPE = 255

# The rich representations an object may offer, by IPython's names.
_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
)
# An object that claims to have this attribute claims to have every one (a
# mock, a proxy): its _repr_*_ "methods" are not asked for anything.
_CANARY = "_vesicle_canary_no_object_has_this_"

_HEADER = struct.Struct("<I")
_FIELD = struct.Struct("<BI")


class _State:
    in_cell = False
    cells = 0
    # While the cell waits for the agent to take a display, an interrupt is
    # held (a half-read message would break the protocol) and raised after.
    holding_interrupt = False
    interrupt_held = False


def _on_sigint(signum, frame):
    # Only a running cell is interrupted; a SIGINT that lands between cells
    # (the timeout raced the cell's end) must not break the driver.
    if _State.holding_interrupt:
        _State.interrupt_held = True
    elif _State.in_cell:
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


def _write_all(fd, data, reraise_interrupt=False):
    """Writes all of `data`: a message cut short would break the protocol.

    A KeyboardInterrupt (the cell's timeout) that lands meanwhile is held
    until the message is out, then raised if `reraise_interrupt`.
    """
    view = memoryview(data)
    interrupted = False
    while view:
        try:
            written = os.write(fd, view)
        except KeyboardInterrupt:
            interrupted = True
            continue
        view = view[written:]
    if interrupted and reraise_interrupt:
        raise KeyboardInterrupt


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


def _note(text):
    """A line on the cell's stderr (the real one: sys.stderr may be replaced)."""
    _flush_output()
    try:
        _write_all(2, ("vesicle: " + text + "\n").encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _is_text_type(mime):
    # The rule of messages/display.cpp, which hostd applies: these go to
    # clients as text, every other type as base64.
    return (
        mime.startswith("text/")
        or mime in ("image/svg+xml", "application/json", "application/javascript", "application/xml")
        or mime.endswith("+json")
        or mime.endswith("+xml")
    )


def _valid_mime_type(mime):
    return (
        isinstance(mime, str)
        and 0 < len(mime) <= MAX_MIME_TYPE
        and mime.isascii()
        and mime.isprintable()
        and " " not in mime
        and mime.count("/") == 1
        and not mime.startswith("/")
        and not mime.endswith("/")
    )


def _encode_data(mime, data):
    """The bytes of one representation; raises TypeError/ValueError if it has none."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if mime == "application/json" or mime.endswith("+json"):
        import json

        if isinstance(data, str):
            json.loads(data)  # JSON text, as IPython takes it; ValueError if it is not
            return data.encode("utf-8", "backslashreplace")
        return json.dumps(data, allow_nan=False).encode("utf-8")
    if not isinstance(data, str):
        raise TypeError("returned %s, not str or bytes" % type(data).__name__)
    if not _is_text_type(mime):
        # Binary data given as text is base64, as in IPython.
        import base64
        import binascii

        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("returned a str that is not base64 for a binary type") from None
    return data.encode("utf-8", "backslashreplace")


def _describe_failure(what, error):
    try:
        text = str(error)
    except Exception:
        text = "<str() failed>"
    return "%s raised %s: %s; that representation is left out" % (what, type(error).__name__, _cut(text, 500))


def _lookup(value, name):
    try:
        method = getattr(value, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _rich_reprs(value):
    """The MIME bundle of the rich representations `value` offers (maybe empty)."""
    bundle = {}
    # A class has these as plain functions, not bound methods.
    if isinstance(value, type) or _lookup(value, _CANARY) is not None:
        return bundle
    method = _lookup(value, "_repr_mimebundle_")
    if method is not None:
        try:
            returned = method(include=None, exclude=None)
            if isinstance(returned, tuple) and len(returned) == 2:
                returned = returned[0]
            if returned is not None and not isinstance(returned, dict):
                raise TypeError("returned %s, not a dict" % type(returned).__name__)
            for mime, data in (returned or {}).items():
                if not _valid_mime_type(mime):
                    _note("_repr_mimebundle_ of %s gave the MIME type %r, which is not type/subtype; "
                          "left out" % (type(value).__name__, _cut(str(mime), 100)))
                    continue
                try:
                    bundle[mime] = _encode_data(mime, data)
                except (TypeError, ValueError) as error:
                    _note(_describe_failure("%s in _repr_mimebundle_ of %s" % (mime, type(value).__name__), error))
        except Exception as error:
            _note(_describe_failure("_repr_mimebundle_ of " + type(value).__name__, error))
    for mime, name in _REPR_METHODS:
        if mime in bundle:
            continue
        method = _lookup(value, name)
        if method is None:
            continue
        try:
            data = method()
            if isinstance(data, tuple) and len(data) == 2:
                data = data[0]  # (data, metadata)
            if data is not None:
                bundle[mime] = _encode_data(mime, data)
        except Exception as error:
            _note(_describe_failure("%s of %s" % (name, type(value).__name__), error))
    return bundle


def _figure_class():
    """matplotlib's Figure if a cell imported matplotlib, else None."""
    module = sys.modules.get("matplotlib.figure")
    return getattr(module, "Figure", None) if module is not None else None


class _PyplotFinder:
    """Gives matplotlib.pyplot the REPL's show() when (if ever) a cell imports it.

    A finder ahead of the others on sys.meta_path: for matplotlib.pyplot it
    asks the others for the module and wraps the loader's exec_module so the
    module's show is replaced once it has run. An environment variable
    naming a backend module instead would leak into the cells' subprocesses,
    whose matplotlib could not import it.
    """

    NAME = "matplotlib.pyplot"

    def __init__(self, repl):
        # A plain function: pyplot sets attributes (__signature__) on it.
        def show(*args, **kwargs):
            """Shows the open figures as display outputs of the cell and closes them."""
            repl.show_figures()

        self.show = show

    def find_spec(self, name, path=None, target=None):
        if name != self.NAME:
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module
        show = self.show

        def exec_module(module):
            original(module)
            module.show = show

        loader.exec_module = exec_module
        return spec


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
        # Set by serve(): where display messages go, where the agent's
        # "shown" answers come from, and the cell they belong to.
        self.replies = None
        self.commands = None
        self.sequence = b""
        self.write_lock = _thread.allocate_lock()
        self.displays_sent = 0
        self.main_thread = _thread.get_ident()
        # Commands that arrived while a cell waited for a "shown" (reseeds),
        # handled after the cell as if they came then.
        self.deferred = []
        # Figures shown during the current cell, not shown again at its end.
        self.shown_figures = []

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
        self.shown_figures = []
        result = None
        failure = None
        try:
            try:
                _State.in_cell = True
                try:
                    body, expression = self._compile(source, filename)
                    self._run(body)
                    if expression is not None:
                        value = self._run(expression)
                        if value is not None:
                            self.namespace["_"] = value
                            result = _cut(repr(value), MAX_TEXT)
                            self.show_main_result(value, result)
                except BaseException as error:  # SystemExit too: the REPL lives on
                    failure = error
                # Figures the cell left open are shown even when it raised
                # (a half-made chart helps), but not when it was interrupted:
                # the timeout wants the cell over.
                if not isinstance(failure, KeyboardInterrupt):
                    self.show_figures()
            finally:
                _State.in_cell = False
        except BaseException as error:  # an interrupt while figures render
            _State.in_cell = False
            failure = failure or error
        return result, failure

    # ------------------------------------------------------------ display

    def send_display(self, bundle, main=False):
        """Sends one MIME bundle (type -> bytes) to the agent, or notes why not."""
        if not bundle:
            return
        if os.getpid() != self.pid or self.replies is None:
            return  # a forked child: the REPL's pipe is not its to write
        size = sum(len(mime) + len(data) + _ENTRY_OVERHEAD for mime, data in bundle.items())
        if size > MAX_DISPLAY_BYTES:
            _note(
                "a display output of %d bytes (%s) was dropped: the limit is %d bytes; "
                "save it to a file and download it instead"
                % (size, ", ".join(sorted(bundle)), MAX_DISPLAY_BYTES)
            )
            return
        # The cell's own thread waits until the agent has sent the display
        # on (after the output printed before it, which is in the pipes by
        # then): output printed after it cannot overtake it, and a cell that
        # makes images faster than the host takes them is slowed down.
        # Other threads do not wait: only the cell's thread reads answers.
        wait = _State.in_cell and _thread.get_ident() == self.main_thread
        with self.write_lock:
            self.displays_sent += 1
            number = b"%d" % self.displays_sent
            fields = [("k", b"display"), ("q", self.sequence), ("i", number)]
            if main:
                fields.append(("p", b"1"))
            for mime, data in bundle.items():
                fields += [("m", mime), ("d", data)]
            _flush_output()
            _write_all(self.replies, _encode(fields), reraise_interrupt=True)
            if wait:
                self.await_shown(number)

    def await_shown(self, number):
        """Reads commands until the agent's "shown" for display `number`."""
        _State.holding_interrupt = True
        try:
            while True:
                message = _read_message(self.commands)
                if message is None:
                    return  # the agent is gone; so is this REPL, soon
                kind = message.get("k")
                if kind == b"shown":
                    if message.get("i") == number:
                        return
                elif kind is not None:
                    self.deferred.append(message)
        finally:
            _State.holding_interrupt = False
            if _State.interrupt_held:
                _State.interrupt_held = False
                raise KeyboardInterrupt

    def bundle_of(self, value, text=None):
        """The MIME bundle of `value`: its rich representations and text/plain."""
        figure = _figure_class()
        if figure is not None and isinstance(value, figure):
            bundle = {}
            png = self.render_figure(value)
            if png is not None:
                bundle["image/png"] = png
        else:
            bundle = _rich_reprs(value)
        if text is not None:
            bundle["text/plain"] = text.encode("utf-8", "backslashreplace")
        elif "text/plain" not in bundle:
            bundle["text/plain"] = _cut(repr(value), MAX_TEXT).encode("utf-8", "backslashreplace")
        return bundle

    def show_main_result(self, value, text):
        """A trailing expression with a rich representation is also a display, the main result."""
        bundle = self.bundle_of(value, text)
        if len(bundle) > 1:
            self.send_display(bundle, main=True)

    def display(self, *objects, raw=False):
        """The display() builtin (see main)."""
        for obj in objects:
            if not raw:
                self.send_display(self.bundle_of(obj))
                continue
            if not isinstance(obj, dict):
                raise TypeError(
                    "display(..., raw=True) takes dicts of MIME type to data, not %s" % type(obj).__name__
                )
            bundle = {}
            for mime, data in obj.items():
                if not _valid_mime_type(mime):
                    raise ValueError("display(..., raw=True): %r is not a MIME type (type/subtype)" % (mime,))
                try:
                    bundle[mime] = _encode_data(mime, data)
                except (TypeError, ValueError) as error:
                    raise type(error)("display(..., raw=True): %s %s" % (mime, error)) from None
            self.send_display(bundle)

    def render_figure(self, figure):
        """A matplotlib figure as PNG bytes, or None (with a note) if it cannot be drawn."""
        import io

        self.shown_figures.append(figure)
        buffer = io.BytesIO()
        try:
            figure.savefig(buffer, format="png", bbox_inches="tight")
        except Exception as error:
            _note(_describe_failure("drawing figure %r" % (getattr(figure, "number", "?"),), error))
            return None
        return buffer.getvalue()

    def show_figures(self):
        """pyplot.show() here: shows every open figure and closes it, as a notebook does.

        Also run at the end of each cell. Does nothing unless a cell
        imported pyplot; figures this cell showed already are not shown
        again.
        """
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        helpers = sys.modules.get("matplotlib._pylab_helpers")
        managers = helpers.Gcf.get_all_fig_managers() if helpers is not None else []
        if not managers:
            return
        try:
            for manager in managers:
                figure = manager.canvas.figure
                if any(shown is figure for shown in self.shown_figures):
                    continue
                png = self.render_figure(figure)
                if png is not None:
                    text = _cut(repr(figure), MAX_TEXT).encode("utf-8", "backslashreplace")
                    self.send_display({"image/png": png, "text/plain": text})
        finally:
            pyplot.close("all")

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
        self.replies = replies
        self.commands = commands
        while True:
            message = self.deferred.pop(0) if self.deferred else _read_message(commands)
            if message is None:
                return  # the agent is gone
            kind = message.get("k")
            if kind == b"reseed":
                _reseed(message.get("s", b""))
                continue
            if kind != b"exec":
                continue
            sequence = message.get("q", b"")
            self.sequence = sequence
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
            with self.write_lock:
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
    # No display server here: matplotlib (if a cell imports it) draws with
    # Agg, and so does any matplotlib in the cells' subprocesses.
    os.environ.setdefault("MPLBACKEND", "Agg")
    repl = Repl()

    def display(*objects, raw=False):
        """Shows each object as a display output of the cell, as in a notebook.

        An object shows as its rich representations (_repr_html_,
        _repr_png_, ..., a matplotlib figure as PNG) and its repr. With
        raw=True, each object is a dict of MIME type to data (str, bytes,
        or any JSON value for JSON types), sent as it is.
        """
        repl.display(*objects, raw=raw)

    builtins.display = display
    sys.meta_path.insert(0, _PyplotFinder(repl))
    repl.serve(commands, replies)


if __name__ == "__main__":
    main()
