"""One JPEG through two protocols of one server: ``/classify`` against the Open Inference Protocol.

- ``classify``: ``POST /classify?top_k=5``, the JPEG as the raw body (``image/jpeg``).
- ``v2_binary``: ``POST /v2/models/{name}/infer`` with Triton's binary tensor extension: a JSON
  header naming one BYTES ``image`` element, then the element (4-byte little-endian length, the
  JPEG), and the top 5 asked for with the classification extension on ``logits``.

Both ask for the same work (decode the JPEG, one image through the shared batcher, the top 5
back), so their throughput ratio is what the protocol's own parsing and answer shaping cost.
One server, one wrk, 16 clients. Each round loads both paths back to back, and the order
alternates between rounds (classify first, then v2 first, ...) so that a machine whose speed
drifts during the run favours neither; the ratio is the median over rounds of each round's
v2 / classify throughput. Before any load, one request on each path must answer 200; whether
both gave the same top 5 is recorded, and a run where they differ is reported INVALID.
"""

from __future__ import annotations

import json
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import progress
from bench.interleaved import alternate, per_side, ratios, throughput_ratio
from bench.loadgen import lua_script, run_wrk
from bench.server_process import Server
from bench.service import load_once, running, summary_line

CLASSIFY = "classify"
V2_BINARY = "v2_binary"
PATHS = (CLASSIFY, V2_BINARY)
TOP_K = 5
CONNECTIONS = 16
# The binary tensor extension's header: how many leading body bytes are the JSON part.
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Route:
    """One way to ask the server for the top ``TOP_K`` of the image: a prebuilt POST."""

    name: str
    label: str
    path: str  # URL path and query
    headers: dict[str, str]
    body: bytes


def v2_binary_request(image: bytes, top_k: int = TOP_K) -> tuple[bytes, int]:
    """(body, JSON header length) of a v2 request for the top ``top_k`` of one encoded image.

    Built here from the protocol's description, not with the service's codec, so that a codec
    bug shows up as a failed answer check rather than as two matching mistakes.
    """
    element = struct.pack("<I", len(image)) + image  # BYTES: length prefix, then the bytes
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(element)},
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": top_k}}],
    }
    header = json.dumps(doc, separators=(",", ":")).encode()
    return header + element, len(header)


def routes(image: bytes, model: str, top_k: int = TOP_K) -> dict[str, Route]:
    body, header_length = v2_binary_request(image, top_k)
    return {
        CLASSIFY: Route(
            CLASSIFY,
            f"/classify, raw image/jpeg body, top_k={top_k}",
            f"/classify?top_k={top_k}",
            {"Content-Type": "image/jpeg"},
            image,
        ),
        V2_BINARY: Route(
            V2_BINARY,
            f"v2 infer, binary tensor extension, BYTES image, classification={top_k}",
            f"/v2/models/{urllib.parse.quote(model, safe='')}/infer",
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)},
            body,
        ),
    }


def classify_top(doc: dict[str, Any]) -> list[int]:
    """Class indices of a ``/classify`` answer for one image, best first."""
    return [p["index"] for p in doc["results"][0]["predictions"]]


def v2_top(doc: dict[str, Any]) -> list[int]:
    """Class indices of a v2 classification answer (``value:index:label`` strings), best first."""
    (logits,) = [o for o in doc["outputs"] if o["name"] == "logits"]
    return [int(element.split(":", 2)[1]) for element in logits["data"]]


TOP_OF = {CLASSIFY: classify_top, V2_BINARY: v2_top}


def post(base: str, route: Route, timeout_s: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{base}{route.path}", data=route.body, headers=route.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_answers(base: str, by_name: dict[str, Route]) -> dict[str, Any]:
    """One request per route: each must be a 200, and the top classes are recorded and compared."""
    tops = {}
    for name, route in by_name.items():
        status, body = post(base, route)
        if status != 200:
            raise RuntimeError(f"{route.path} answered {status}: {body[:500]!r}")
        tops[name] = TOP_OF[name](json.loads(body))
    return {"top": tops, "same_top": len({tuple(t) for t in tops.values()}) == 1}


def round_order(index: int) -> tuple[str, ...]:
    """The paths in the order round ``index`` (from 0) loads them: alternately each first."""
    return alternate(PATHS, index)


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per path the median over rounds of each figure; the median of the per-round ratios."""
    return {"paths": {name: per_side(rounds, name) for name in PATHS}, **ratios(rounds, PATHS)}


def run_protocols_benchmark(
    server: Server,
    by_name: dict[str, Route],
    *,
    rounds: int,
    duration_s: float,
    warmup_s: float,
    loadgen_cpus: list[int] | None,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """Check the answers, warm both paths up, then ``rounds`` interleaved rounds of load."""
    with tempfile.TemporaryDirectory(prefix="bench-v2-") as tmp, running([server]):
        scripts = {}
        for name, route in by_name.items():
            body = Path(tmp) / f"{name}.body"
            body.write_bytes(route.body)
            scripts[name] = Path(tmp) / f"{name}.lua"
            scripts[name].write_text(lua_script(body, route.headers))
        answers = check_answers(server.base, by_name)
        progress(f"answers: {answers}")
        for name, route in by_name.items():
            progress(f"warm-up {name}: c={connections} for {warmup_s:g} s")
            run_wrk(
                f"{server.base}{route.path}",
                scripts[name],
                connections=connections,
                duration_s=warmup_s,
                cpus=loadgen_cpus,
            )
        done = []
        for i in range(rounds):
            runs = {}
            for name in round_order(i):
                runs[name] = load_once(
                    server,
                    scripts[name],
                    connections=connections,
                    duration_s=duration_s,
                    loadgen_cpus=loadgen_cpus,
                    path=by_name[name].path,
                )
                progress(f"round {i + 1}/{rounds} {name:<9} {summary_line(runs[name])}")
            done.append(
                {
                    "round": i + 1,
                    "order": list(round_order(i)),
                    "runs": runs,
                    "ratio": throughput_ratio(runs, PATHS),
                }
            )
        log = server.tail(1500)
    return {
        "routes": {name: {"label": r.label, "path": r.path} for name, r in by_name.items()},
        "answers": answers,
        "connections": connections,
        **summarise(done),
        "rounds": done,
        "log_tail": log,
    }
