"""Unit tests without any server: config, error mapping, the exec event stream."""

import base64
import json

import pytest

from vesicle import _config, errors
from vesicle.execution import ExecStream, ExecutionError

from fakehostd import exit_event


# ---- config -----------------------------------------------------------------


def test_config_defaults_from_nothing():
    cfg = _config.resolve(env={})
    assert cfg.url == "http://127.0.0.1:7070"
    assert cfg.api_key is None
    assert cfg.timeout == _config.DEFAULT_TIMEOUT_S


def test_config_environment_then_arguments_win():
    env = {"VESICLE_URL": "http://10.0.0.1:9000/", "VESICLE_API_KEY": "vsk_env"}
    cfg = _config.resolve(env=env)
    assert (cfg.url, cfg.api_key) == ("http://10.0.0.1:9000", "vsk_env")
    cfg = _config.resolve(url="http://127.0.0.1:1234", api_key="vsk_arg", timeout=5, env=env)
    assert (cfg.url, cfg.api_key, cfg.timeout) == ("http://127.0.0.1:1234", "vsk_arg", 5.0)


def test_config_missing_key_says_to_set_it():
    cfg = _config.resolve(env={"VESICLE_API_KEY": ""})
    with pytest.raises(errors.ConfigurationError) as info:
        cfg.require_key()
    assert "VESICLE_API_KEY" in str(info.value)


@pytest.mark.parametrize("url", ["127.0.0.1:7070", "ftp://host", "http://", "http://h:99999", "http://h/?x=1"])
def test_config_bad_urls_are_named(url):
    with pytest.raises(errors.ConfigurationError) as info:
        _config.resolve(url=url, env={})
    assert url.strip() in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1, "soon"])
def test_config_bad_timeouts(timeout):
    with pytest.raises(errors.ConfigurationError):
        _config.resolve(timeout=timeout, env={})


def test_config_key_with_newline_is_rejected():
    with pytest.raises(errors.ConfigurationError):
        _config.resolve(api_key="vsk_a\r\nX-Evil: 1", env={})


# ---- error mapping ------------------------------------------------------------


@pytest.mark.parametrize(
    "status,code,cls",
    [
        (400, "invalid_argument", errors.InvalidRequestError),
        (401, "unauthenticated", errors.AuthenticationError),
        (404, "not_found", errors.NotFoundError),
        (405, "method_not_allowed", errors.MethodNotAllowedError),
        (409, "failed_precondition", errors.ConflictError),
        (410, "sandbox_died", errors.SandboxDiedError),
        (410, "guest_protocol_violation", errors.SandboxDiedError),
        (413, "too_large", errors.PayloadTooLargeError),
        (429, "quota_exceeded", errors.QuotaExceededError),
        (500, "internal", errors.ServerError),
        (503, "no_capacity", errors.CapacityError),
    ],
)
def test_error_from_response_maps_status(status, code, cls):
    body = json.dumps({"error": {"code": code, "message": f"msg {status}"}}).encode()
    err = errors.error_from_response(status, "Reason", body)
    assert type(err) is cls
    assert isinstance(err, errors.VesicleError)
    assert (err.code, err.message, err.status, str(err)) == (code, f"msg {status}", status, f"msg {status}")


def test_error_from_non_json_body_names_the_status():
    err = errors.error_from_response(502, "Bad Gateway", b"<html>proxy down</html>")
    assert type(err) is errors.VesicleError
    assert err.status == 502
    assert "502" in err.message and "proxy down" in err.message


def test_error_unknown_status_uses_the_code():
    body = json.dumps({"error": {"code": "no_capacity", "message": "full"}}).encode()
    err = errors.error_from_response(507, "", body)
    assert type(err) is errors.CapacityError and err.status == 507


def test_error_for_code_in_a_stream():
    err = errors.error_for_code("sandbox_died", "the VM died")
    assert type(err) is errors.SandboxDiedError and err.status is None
    assert type(errors.error_for_code("brand_new", "x")) is errors.VesicleError
    # hostd ended the sandbox because its guest broke the agent protocol.
    assert type(errors.error_for_code("guest_protocol_violation", "x")) is errors.SandboxDiedError


def test_connection_errors_are_builtin_connection_errors():
    assert issubclass(errors.VesicleConnectionError, ConnectionError)
    assert issubclass(errors.VesicleTimeoutError, TimeoutError)
    assert issubclass(errors.VesicleTimeoutError, errors.VesicleError)


# ---- the exec event stream -------------------------------------------------------


def _line(event) -> bytes:
    return json.dumps(event).encode()


def _out(stream, text=None, raw=None, seq=1):
    event = {"type": stream, "seq": seq, "ts": "t"}
    if raw is not None:
        event["data_b64"] = base64.b64encode(raw).decode()
    else:
        event["data"] = text
    return event


def _run(events, **callbacks):
    parser = ExecStream(**callbacks)
    for e in events:
        parser.feed(e if isinstance(e, bytes) else _line(e))
    return parser.finish()


def test_stream_collects_output_result_and_exit():
    ex = _run(
        [
            _out("stdout", "hello "),
            _out("stderr", "warn\n"),
            _out("stdout", "world\n"),
            {"type": "result", "data": "42", "seq": 4, "ts": "t"},
            exit_event(5, duration_ms=17),
        ]
    )
    assert ex.stdout == "hello world\n" and ex.stderr == "warn\n"
    assert ex.stdout_bytes == b"hello world\n"
    assert ex.result == "42" and ex.error is None
    assert (ex.exit_code, ex.timed_out, ex.truncated, ex.repl_restarted, ex.duration_ms) == (
        0, False, False, False, 17,
    )
    assert ex.text == "hello warn\nworld\n42"
    assert "result='42'" in repr(ex) and "stdout='hello world\\n'" in repr(ex)


def test_stream_binary_output_is_exact():
    data = bytes(range(256))
    ex = _run([_out("stdout", raw=data[:100]), _out("stdout", raw=data[100:]), exit_event(3)])
    assert ex.stdout_bytes == data
    assert ex.stdout == data.decode("utf-8", errors="replace")


def test_stream_callbacks_get_whole_characters_across_split_chunks():
    text = "héllo → 世界 🎉\n"
    raw = text.encode()
    # Split inside multi-byte characters; such pieces arrive base64-encoded.
    pieces = [raw[:2], raw[2:9], raw[9:14], raw[14:17], raw[17:]]
    seen = []
    ex = _run([_out("stdout", raw=p) for p in pieces] + [exit_event()], on_stdout=seen.append)
    assert "".join(seen) == text == ex.stdout
    assert all("\ufffd" not in s for s in seen)


def test_stream_callbacks_replace_invalid_bytes_like_the_final_text():
    seen = []
    ex = _run([_out("stderr", raw=b"ok \xff\xfe end\n"), exit_event()], on_stderr=seen.append)
    assert "".join(seen) == ex.stderr == "ok \ufffd\ufffd end\n"
    assert ex.stderr_bytes == b"ok \xff\xfe end\n"


def test_stream_truncated_character_at_the_end_is_flushed_to_the_callback():
    seen = []
    ex = _run([_out("stdout", raw=b"abc\xe4\xb8"), exit_event()], on_stdout=seen.append)
    assert "".join(seen) == ex.stdout == "abc\ufffd"


def test_stream_python_error():
    tb = 'Traceback (most recent call last):\n  File "<cell>", line 1\nZeroDivisionError: division by zero\n'
    ex = _run(
        [
            {"type": "error", "name": "ZeroDivisionError", "value": "division by zero", "traceback": tb, "seq": 1, "ts": "t"},
            exit_event(2, exit_code=1),
        ]
    )
    assert ex.error == ExecutionError("ZeroDivisionError", "division by zero", tb)
    assert ex.error.name == "ZeroDivisionError" and ex.error.traceback == tb
    assert ex.text == tb
    assert ex.exit_code == 1


def test_stream_exit_flags():
    ex = _run([exit_event(exit_code=-1, timed_out=True, truncated=True, repl_restarted=True, signal=9)])
    assert ex.timed_out and ex.truncated and ex.repl_restarted and ex.signal == 9
    assert "timed_out=True" in repr(ex)


def test_stream_int_fields_printed_as_strings_are_accepted():
    ex = _run([exit_event(duration_ms="12", exit_code="3")])
    assert (ex.duration_ms, ex.exit_code) == (12, 3)


def test_stream_failure_raises_the_servers_error_with_partial_output():
    with pytest.raises(errors.SandboxDiedError) as info:
        _run(
            [
                _out("stdout", "partial\n"),
                exit_event(2, exit_code=-1, failure={"code": "sandbox_died", "message": "the VM exited; create a new sandbox"}),
            ]
        )
    assert info.value.message == "the VM exited; create a new sandbox"
    assert info.value.code == "sandbox_died"
    assert info.value.execution.stdout == "partial\n"


def test_stream_null_failure_is_no_failure():
    ex = _run([exit_event(failure=None)])
    assert ex.exit_code == 0


def test_stream_without_exit_is_a_protocol_error():
    with pytest.raises(errors.ProtocolError, match="without an exit event"):
        _run([_out("stdout", "x")])


@pytest.mark.parametrize(
    "line",
    [b"{not json", b"[1,2]", b'{"data": "no type"}', b'{"type": "stdout", "data": 5}', b'{"type": "stdout", "data_b64": "***"}'],
)
def test_stream_malformed_events_are_protocol_errors(line):
    with pytest.raises(errors.ProtocolError):
        _run([line, exit_event()])


def test_stream_events_after_exit_are_protocol_errors():
    with pytest.raises(errors.ProtocolError, match="after the exit"):
        _run([exit_event(), _out("stdout", "late")])


def test_stream_unknown_event_types_and_blank_lines_are_skipped():
    ex = _run([b"", b"  ", {"type": "progress", "pct": 50}, _out("stdout", "x"), exit_event()])
    assert ex.stdout == "x"


# ---- display events (rich outputs) -------------------------------------------------

_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def _display(data=None, data_b64=None, seq=1, **fields):
    event = {"type": "display", "seq": seq, "ts": "t", **fields}
    if data is not None:
        event["data"] = data
    if data_b64 is not None:
        event["data_b64"] = {k: base64.b64encode(v).decode() for k, v in data_b64.items()}
    return event


def test_stream_display_events_become_results_in_order():
    seen = []
    ex = _run(
        [
            _out("stdout", "before\n"),
            _display({"text/plain": "<Figure size 640x480 with 1 Axes>"}, {"image/png": _PNG}, seq=2),
            _display(
                {
                    "text/html": "<table><tr><td>1</td></tr></table>",
                    "text/plain": "   a\n0  1",
                    "application/json": '{"a": [1]}',
                    "text/markdown": "**a**",
                    "text/latex": "$a$",
                    "image/svg+xml": "<svg/>",
                    "application/vnd.custom+json": "{}",
                },
                {"image/jpeg": b"\xff\xd8\xff"},
                seq=3,
                is_main_result=True,
            ),
            {"type": "result", "data": "   a\n0  1", "seq": 4, "ts": "t"},
            exit_event(5),
        ],
        on_result=seen.append,
    )
    assert len(ex.results) == 2 and seen == ex.results
    chart, table = ex.results
    assert chart.png == _PNG and chart.text.startswith("<Figure") and not chart.is_main_result
    assert chart.html is None and chart.json is None and chart.jpeg is None
    assert chart.formats() == ["text", "png"]
    assert table.is_main_result and table.text == ex.result == "   a\n0  1"
    assert "<table" in table.html and table.json == {"a": [1]}
    assert (table.markdown, table.latex, table.svg, table.jpeg) == ("**a**", "$a$", "<svg/>", b"\xff\xd8\xff")
    assert "application/vnd.custom+json" in table.formats() and "html" in table.formats()
    assert table.data["image/jpeg"] == b"\xff\xd8\xff"
    assert "results=[Result(formats=['text', 'png']), Result(" in repr(ex)
    assert "is_main_result=True" in repr(table)
    # `text` stays what it was: output, result, traceback.
    assert ex.text == "before\n   a\n0  1"


def test_stream_without_displays_has_no_results():
    ex = _run([{"type": "result", "data": "2", "seq": 1, "ts": "t"}, exit_event(2)])
    assert ex.results == [] and ex.result == "2"


def test_stream_display_json_that_is_not_json_says_so():
    ex = _run([_display({"application/json": "{nope"}), exit_event(2)])
    with pytest.raises(ValueError, match="not valid JSON"):
        ex.results[0].json


@pytest.mark.parametrize(
    "event",
    [
        {"type": "display", "data": ["text/plain"]},
        {"type": "display", "data": {"text/plain": 5}},
        {"type": "display", "data_b64": {"image/png": "***"}},
        {"type": "display", "data_b64": "iVBO"},
    ],
)
def test_stream_malformed_display_events_are_protocol_errors(event):
    with pytest.raises(errors.ProtocolError, match="display event"):
        _run([event, exit_event()])
