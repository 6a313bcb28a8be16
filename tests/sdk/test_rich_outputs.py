"""Rich outputs (display events) from a real hostd and a real VM's REPL.

matplotlib figures, pandas tables and display() of objects with rich
representations come back as Execution.results; the images are checked as
PNG files, not just as bytes.
"""

import struct
import subprocess
import sys
import zlib

import pytest

from vesicle import Sandbox

from conftest import sdk_env

MEMORY_MIB = 512
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sb(hostd):
    with Sandbox(memory_mib=MEMORY_MIB, url=hostd.url, api_key=hostd.key) as sandbox:
        yield sandbox


def png_size(data: bytes):
    """(width, height) from a PNG's IHDR chunk, after checking the signature and the chunk's CRC."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert zlib.crc32(kind + body) == crc
    width, height = struct.unpack(">II", body[:8])
    assert data.endswith(b"IEND\xaeB`\x82")
    return width, height


def test_plt_show_returns_exactly_one_png(sb):
    r = sb.run_code("import matplotlib.pyplot as plt; plt.plot([1,2,3]); plt.show()")
    assert r.error is None, r.error and r.error.traceback
    assert r.stderr == "" and r.result is None
    assert len(r.results) == 1
    chart = r.results[0]
    width, height = png_size(chart.png)
    assert width > 0 and height > 0
    assert chart.text.startswith("<Figure size") and not chart.is_main_result
    assert set(chart.formats()) == {"png", "text"}
    # show() closed the figure: nothing is shown again by the next cell.
    assert sb.run_code("plt.get_fignums()").result == "[]"


def test_figures_left_open_are_shown_once_at_the_end(sb):
    # The Line2D list is the result; the figure still shows, once.
    r = sb.run_code("plt.plot([3, 1, 2])")
    assert r.result.startswith("[<matplotlib.lines.Line2D")
    assert len(r.results) == 1 and png_size(r.results[0].png)[0] > 0
    # A Figure as the last expression is the main result, not shown twice.
    r = sb.run_code("fig, ax = plt.subplots(); ax.bar(['a', 'b'], [1, 2]); fig")
    assert len(r.results) == 1
    assert r.results[0].is_main_result and r.results[0].text == r.result
    png_size(r.results[0].png)
    # Two show() calls in a loop are two images, in order, between the prints.
    tape = []
    r = sb.run_code(
        "for n in (1, 2):\n"
        "    print('figure', n)\n"
        "    plt.figure(); plt.plot(range(n + 1)); plt.show()\n",
        on_stdout=tape.append,
        on_result=lambda res: tape.append("[png]"),
    )
    assert len(r.results) == 2 and "".join(tape) == "figure 1\n[png]figure 2\n[png]"


def test_dataframe_as_last_expression_returns_html(sb):
    r = sb.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert r.error is None, r.error and r.error.traceback
    assert len(r.results) == 1
    table = r.results[0]
    assert table.is_main_result
    assert "<table" in table.html and "</table>" in table.html
    # The text result stays what old clients read.
    assert r.result == table.text and "a  b" in r.result


def test_display_of_an_object_with_a_json_repr(sb):
    r = sb.run_code(
        "class Answer:\n"
        "    def _repr_json_(self):\n"
        "        return {'answer': 42, 'items': [1, 'two', None]}\n"
        "    def _repr_markdown_(self):\n"
        "        return '**42**'\n"
        "display(Answer())\n"
        "print('shown')"
    )
    assert r.error is None and r.stdout == "shown\n"
    assert len(r.results) == 1
    shown = r.results[0]
    assert shown.json == {"answer": 42, "items": [1, "two", None]}
    assert shown.markdown == "**42**" and not shown.is_main_result
    assert shown.text.startswith("<__main__.Answer object")


def test_oversized_display_is_dropped_with_a_note(sb):
    r = sb.run_code("display({'image/png': b'x' * 6_000_000}, raw=True)\nprint('after')")
    assert r.results == [] and r.stdout == "after\n" and r.error is None
    assert "display output of 6000025 bytes (image/png) was dropped" in r.stderr


def test_cli_saves_images(sb, hostd, tmp_path):
    p = subprocess.run(
        [
            sys.executable, "-m", "vesicle", "exec", sb.id, "--save-images", str(tmp_path),
            "import matplotlib.pyplot as plt; plt.plot([1, 4]); plt.show()",
        ],
        capture_output=True,
        env=sdk_env({"VESICLE_URL": hostd.url, "VESICLE_API_KEY": hostd.key}),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    saved = tmp_path / "output-1.png"
    png_size(saved.read_bytes())
    assert p.stdout.decode() == f"[image/png {saved.stat().st_size} bytes: {saved}]\n"
