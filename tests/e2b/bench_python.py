"""The vesicle Python SDK's half of tests/e2b/bench.mjs: times the same two
calls against the hostd bench.mjs started and prints the samples as JSON.

  python3 tests/e2b/bench_python.py URL KEY ITERATIONS
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "sdk" / "python"))

from vesicle import Sandbox  # noqa: E402


def samples(call, iterations):
    for _ in range(3):  # warm up
        call()
    out = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main():
    url, key, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with Sandbox(url=url, api_key=key, timeout=240) as sb:
        result = {
            "vesicle Python SDK   run_code('echo hi', language='bash')": samples(
                lambda: sb.run_code("echo hi", language="bash"), iterations
            ),
            "vesicle Python SDK   run_code('1+1')": samples(lambda: sb.run_code("1+1"), iterations),
        }
    json.dump(result, sys.stdout)


main()
