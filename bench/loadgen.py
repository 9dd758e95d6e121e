"""The load generator: wrk (C, epoll, closed loop), driven by a Lua script.

The script POSTs one prebuilt body on every request (by default a JPEG as the raw body,
``Content-Type: image/jpeg``) and, in ``done()``, prints one ``BENCH_JSON {...}`` line with the
counts and latency percentiles (microseconds), which :func:`parse_wrk_output` reads back. wrk
counts every status >= 400 as ``errors.status``; connect/read/write/timeout errors are counted
separately; the script itself counts every answer that is not a 200 (``non_200``) and every
answer by status code (``statuses``).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

MARKER = "BENCH_JSON "

_LUA = r"""
local f = assert(io.open(%(path)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
%(headers)s

-- wrk's errors.status misses 1xx and 3xx answers; count every answer that is not a 200, and
-- every status by code, per thread (each has a Lua state of its own; done() runs in the main
-- one, which setup() fed).
non_200 = 0
statuses = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status ~= 200 then non_200 = non_200 + 1 end
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local e = summary.errors
  local not_ok = 0
  local by_code = {}
  for _, t in ipairs(threads) do
    not_ok = not_ok + t:get("non_200")
    for code, n in pairs(t:get("statuses")) do by_code[code] = (by_code[code] or 0) + n end
  end
  local codes = {}
  for code, n in pairs(by_code) do table.insert(codes, string.format('"%%d":%%d', code, n)) end
  table.sort(codes)
  io.write(string.format(
    '%(marker)s{"requests":%%d,"duration_us":%%d,"bytes":%%d,"non_200":%%d,' ..
    '"statuses":{' .. table.concat(codes, ",") .. '},' ..
    '"errors_connect":%%d,"errors_read":%%d,"errors_write":%%d,"errors_status":%%d,' ..
    '"errors_timeout":%%d,"lat_mean_us":%%.1f,"lat_max_us":%%d,"lat_p50_us":%%d,' ..
    '"lat_p90_us":%%d,"lat_p95_us":%%d,"lat_p99_us":%%d}\n',
    summary.requests, summary.duration, summary.bytes, not_ok,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99)))
end
"""


class LoadGenError(RuntimeError):
    pass


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadGenError(
            "wrk not found: `make bench` installs it (apt-get install -y wrk); "
            "on macOS `brew install wrk`"
        )
    return path


RAW_JPEG = {"Content-Type": "image/jpeg"}


def lua_script(body_path: Path, headers: dict[str, str] | None = None) -> str:
    """The wrk script that POSTs the bytes of ``body_path`` with ``headers`` (default: a raw JPEG).

    The path, header names and values become Lua string literals (JSON's quoting is Lua's for
    ASCII).
    """
    lines = [
        f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or RAW_JPEG).items()
    ]
    return _LUA % {
        "path": json.dumps(str(body_path)),
        "headers": "\n".join(lines),
        "marker": MARKER,
    }


def parse_wrk_output(text: str) -> dict[str, Any]:
    """The ``BENCH_JSON`` line of a wrk run -> throughput (req/s), latencies (ms) and errors."""
    for line in text.splitlines():
        if line.startswith(MARKER):
            raw = json.loads(line[len(MARKER) :])
            break
    else:
        raise LoadGenError(f"no {MARKER.strip()} line in wrk output:\n{text[-2000:]}")
    duration_s = raw["duration_us"] / 1e6
    errors = {k[len("errors_") :]: raw[k] for k in raw if k.startswith("errors_")}
    # Non-2xx answers are still answers; throughput counts successful ones only.
    ok = raw["requests"] - errors["status"]
    return {
        "requests": raw["requests"],
        "ok": ok,
        "duration_s": round(duration_s, 3),
        "throughput_rps": round(ok / duration_s, 3) if duration_s > 0 else 0.0,
        "p50_ms": raw["lat_p50_us"] / 1e3,
        "p90_ms": raw["lat_p90_us"] / 1e3,
        "p95_ms": raw["lat_p95_us"] / 1e3,
        "p99_ms": raw["lat_p99_us"] / 1e3,
        "mean_ms": round(raw["lat_mean_us"] / 1e3, 3),
        "max_ms": raw["lat_max_us"] / 1e3,
        "errors": errors,
        "non_2xx": errors["status"],
        # Counted by the script; None from a script that does not count them.
        "non_200": raw.get("non_200"),
        "statuses": raw.get("statuses"),  # {"200": n, "503": m, ...}
        "error_count": sum(errors.values()),
    }


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    cpus: list[int] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """One closed-loop wrk run: ``connections`` clients, each with one request in flight."""
    cmd = [wrk_path(), "-t1", f"-c{connections}", f"-d{duration_s:g}s", f"--timeout={timeout_s:g}s"]
    cmd += ["-s", str(script), url]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise LoadGenError(
            f"wrk exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    result = parse_wrk_output(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["loadgen_cpu_share"] = round(cpu / wall, 4) if wall > 0 else 0.0  # of one core
    return result


def unexpected_answers(
    run: dict[str, Any], expected: tuple[str, ...] = ("200", "503")
) -> int | None:
    """Socket errors plus answers whose status is not in ``expected`` (the service's: 200, and
    503 when overloaded); None for a run whose script did not count answers by status."""
    statuses = run.get("statuses")
    if statuses is None:
        return None
    socket_errors = run["error_count"] - run["non_2xx"]
    return socket_errors + sum(n for code, n in statuses.items() if code not in expected)
