"""The chaos soak's clients: good, hostile and cancelling requests on HTTP, v2 and gRPC, open
loop, and what each one got (an ``Answer``, judged against the models' goldens)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from typing import Any

import numpy as np

from bench.chaos_client import (
    CLIENT_TIMEOUT_S,
    abandon,
    classification_top,
    classify_top,
    exchange,
)
from bench.chaos_inputs import CLASSIFY, TOP_K, Inputs, b64, v2_body, v2_request
from bench.chaos_models import NAME, Model, identify
from bench.chaos_verdict import (
    CANCELLED,
    HOSTILE,
    UNKNOWN_MODEL,
    Answer,
    answer_key,
    phase_of,
)
from bench.loadclient import build_request
from bench.soak import GOOD_NAMES

BASE_LOAD = 0.5  # x capacity, outside the overload window
OVERLOAD = 2.0  # x capacity, in it
SHARES = {"http": 0.5, "v2": 0.25, "grpc": 0.25}  # of the good load
HOSTILE_PER_S = {"http": 2.0, "v2": 1.0, "grpc": 1.0}
CANCELS_PER_S = {"http_cancel_body": 0.5, "http_cancel_wait": 0.5, "grpc_cancel": 0.5}
SCAN_BOMB_EVERY_S = 10.0  # one scan bomb, on each protocol in turn


class Traffic:
    """Every client of one run, on one event loop, and the answers they got.

    ``in_overload`` (the good load's multiplier) and ``t_term`` (the phase of each answer) are set
    by the run."""

    def __init__(self, port: int, grpc_port: int, models: dict[str, Model], inputs: Inputs) -> None:
        self.port, self.grpc_port = port, grpc_port
        self.models, self.inputs = models, inputs
        self.grpc: Any = None  # made on the run's event loop
        self.answers: list[Answer] = []
        self.cancels: Counter[str] = Counter()
        self.scan_bomb_s: list[tuple[str, str, float]] = []  # (kind, key, seconds)
        self.pending: set[asyncio.Task] = set()
        self.t_term: float | None = None
        self.in_overload = False
        self.rng = random.Random(27)
        self.sent: Counter[str] = Counter()
        self.transport_errors: Counter[str] = Counter()

    def connect_grpc(self) -> None:
        import tritonclient.grpc.aio as tritongrpc_aio

        self.grpc = tritongrpc_aio.InferenceServerClient(url=f"127.0.0.1:{self.grpc_port}")

    async def close_grpc(self) -> None:
        with contextlib.suppress(Exception):
            await self.grpc.close()

    # -- recording

    def record(
        self,
        kind: str,
        key: str,
        started: float,
        ended: float,
        model: str | None = None,
        golden_ok: bool | None = None,
    ) -> None:
        phase = phase_of(started, ended, self.t_term)
        self.answers.append(Answer(kind, key, started, ended, phase, model, golden_ok))

    def judge_top(
        self, image: str, top: tuple[list[str], int, float], *, softmax: bool
    ) -> tuple[str | None, bool | None]:
        labels, index, value = top
        model = identify(labels, self.models)
        if model == UNKNOWN_MODEL:
            return model, None
        return model, self.models[model].golden_ok(image, index, value, softmax=softmax)

    def served_model(
        self, top: tuple[list[str], int, float], image: str | None, *, softmax: bool
    ) -> tuple[str | None, bool | None]:
        """(model, golden ok) of a 200's top predictions; no golden without a good image."""
        if image is not None:
            return self.judge_top(image, top, softmax=softmax)
        return identify(top[0], self.models), None

    # -- one request of each protocol

    async def http(self, kind: str, request: bytes, image: str | None = None) -> None:
        r = await exchange(self.port, request)
        key = answer_key(r.status, r.code, r.retry_after)
        if r.error:
            self.transport_errors[
                f"{kind} {phase_of(r.started, r.ended, self.t_term)}: {r.error}"
            ] += 1
        model = golden = None
        if r.status == 200:
            try:
                if kind.startswith("v2"):
                    data = json.loads(r.body)["outputs"][0]["data"]
                    top = classification_top(data)
                    softmax = False
                else:
                    top, softmax = classify_top(r.body), True
                model, golden = self.served_model(top, image, softmax=softmax)
            except (ValueError, KeyError, IndexError, TypeError):
                key = "200 unparsable"
        if "scan_bomb" in kind:
            self.scan_bomb_s.append((kind, key, r.ended - r.started))
        self.record(kind, key, r.started, r.ended, model, golden)

    def grpc_input(self, kind: str, data: bytes):
        import tritonclient.grpc as tritongrpc

        if kind == "grpc_bad_tensor":
            tensor = tritongrpc.InferInput("image", [1], "INT32")
            tensor.set_data_from_numpy(np.array([7], dtype=np.int32))
        else:
            tensor = tritongrpc.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
        return tensor

    async def grpc_infer(self, kind: str, data: bytes, model: str = NAME):
        import tritonclient.grpc as tritongrpc
        from tritonclient.utils import InferenceServerException

        outputs = [tritongrpc.InferRequestedOutput("logits", class_count=TOP_K)]
        try:
            result = await self.grpc.infer(
                model,
                [self.grpc_input(kind, data)],
                outputs=outputs,
                client_timeout=CLIENT_TIMEOUT_S,
            )
        except InferenceServerException as exc:
            return str(exc.status() or "UNKNOWN").removeprefix("StatusCode."), None
        return "OK", result

    async def grpc_call(
        self, kind: str, data: bytes, image: str | None = None, model: str = NAME
    ) -> None:
        started = time.perf_counter()
        key, result = await self.grpc_infer(kind, data, model)
        self.finish_grpc(kind, key, result, image, started)

    def finish_grpc(self, kind: str, key: str, result, image: str | None, started: float) -> None:
        ended = time.perf_counter()
        model = golden = None
        if result is not None:
            try:
                top = classification_top(list(result.as_numpy("logits").reshape(-1)))
                model, golden = self.served_model(top, image, softmax=False)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                key = "OK unparsable"
        if "scan_bomb" in kind:
            self.scan_bomb_s.append((kind, key, ended - started))
        self.record(kind, key, started, ended, model, golden)

    async def grpc_cancel(self, image: str, data: bytes, after_s: float) -> None:
        started = time.perf_counter()
        task = asyncio.create_task(self.grpc_infer("grpc_cancel", data))
        await asyncio.sleep(after_s)
        if task.done():
            key, result = task.result()
            self.finish_grpc("grpc_cancel", key, result, image, started)
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.cancels["grpc_cancel"] += 1
        self.record("grpc_cancel", CANCELLED, started, time.perf_counter())

    async def http_cancel(self, kind: str, request: bytes, after_s: float) -> None:
        started = time.perf_counter()
        # half the body (cut after the headers and some bytes), or the whole request
        cut = len(request) - len(request) // 4 if kind == "http_cancel_body" else len(request)
        await abandon(self.port, request, cut, after_s)
        self.cancels[kind] += 1
        self.record(kind, CANCELLED, started, time.perf_counter())

    # -- scheduling

    def at(self, when: float, coro) -> None:
        async def later():
            await asyncio.sleep(max(0.0, when - time.perf_counter()))
            await coro

        task = asyncio.create_task(later())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def good(self):
        """One good request, of a protocol drawn by SHARES (a coroutine to await)."""
        u = self.rng.random()
        if u < SHARES["http"]:
            image, request = self.inputs.http_good[self.rng.randrange(len(self.inputs.http_good))]
            self.sent["http_good"] += 1
            return self.http("http_good", request, image)
        if u < SHARES["http"] + SHARES["v2"]:
            image, request = self.inputs.v2_good[self.rng.randrange(len(self.inputs.v2_good))]
            self.sent["v2_good"] += 1
            return self.http("v2_good", request, image)
        image = GOOD_NAMES[self.rng.randrange(len(GOOD_NAMES))]
        self.sent["grpc_good"] += 1
        return self.grpc_call("grpc_good", self.inputs.good[image], image)

    def hostile(self, protocol: str, kind: str):
        """One hostile request of ``kind`` (a coroutine to await)."""
        if protocol != "grpc":
            return self.http(kind, self.inputs.hostile_http[kind])
        data = (
            self.inputs.truncated
            if kind == "grpc_truncated"
            else (self.inputs.bomb if kind == "grpc_bomb" else os.urandom(1024))
        )
        if kind == "grpc_unknown_model":
            return self.grpc_call(kind, self.inputs.good["hopper.jpg"], model="no_such_model")
        return self.grpc_call(kind, data)

    def schedule_good(self, n: int, start: float, span_s: float) -> None:
        """``n`` good requests spread evenly over [start, start + span_s)."""
        for i in range(n):
            self.at(start + span_s * i / n, self.good())

    async def calibrate(self, seconds: float, clients: int = 8) -> float:
        """Capacity for the good mix (all three protocols, tracing on): closed loop with
        ``clients`` clients, answers OK per second. Its answers are judged like the others."""
        first, stop_at = len(self.answers), time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop_at:
                await self.good()

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        ok = sum(a.key in ("200", "OK") for a in self.answers[first:])
        return ok / (time.perf_counter() - t0)

    def schedule_second(self, second: int, start: float, capacity: float) -> None:
        """The requests of one second of a cycle, from ``start``: good, hostile, cancelling and,
        every SCAN_BOMB_EVERY_S, a scan bomb."""
        load = OVERLOAD if self.in_overload else BASE_LOAD
        self.schedule_good(max(1, round(capacity * load)), start, 1.0)
        self.schedule_hostile(start)
        self.schedule_cancels(start)
        if second % int(SCAN_BOMB_EVERY_S) == 0:
            self.schedule_scan_bomb(second, start)

    def schedule_hostile(self, start: float) -> None:
        for protocol, rate in HOSTILE_PER_S.items():
            kinds = HOSTILE[protocol]
            for _ in range(self.poisson(rate)):
                kind = kinds[self.rng.randrange(len(kinds))]
                when = start + self.rng.random()
                self.sent[kind] += 1
                self.at(when, self.hostile(protocol, kind))

    def schedule_cancels(self, start: float) -> None:
        for kind, rate in CANCELS_PER_S.items():
            for _ in range(self.poisson(rate)):
                when, after_s = start + self.rng.random(), self.rng.uniform(0.002, 0.05)
                self.sent[kind] += 1
                image, request = self.inputs.http_good[
                    self.rng.randrange(len(self.inputs.http_good))
                ]
                if kind == "grpc_cancel":
                    self.at(when, self.grpc_cancel(image, self.inputs.good[image], after_s))
                else:
                    self.at(when, self.http_cancel(kind, request, after_s))

    def schedule_scan_bomb(self, second: int, start: float) -> None:
        which = ("http", "v2", "grpc")[(second // int(SCAN_BOMB_EVERY_S)) % 3]
        kind = f"{which}_scan_bomb"
        self.sent[kind] += 1
        bomb = self.inputs.scan_bomb
        if which == "grpc":
            self.at(start, self.grpc_call(kind, bomb))
        elif which == "v2":
            self.at(start, self.http(kind, v2_request(v2_body([b64(bomb)]))))
        else:
            self.at(start, self.http(kind, build_request(CLASSIFY, bomb, "image/jpeg")))

    def poisson(self, rate: float) -> int:
        """A whole number of events with mean ``rate`` (the integer part, plus one at random)."""
        whole = int(rate)
        return whole + (self.rng.random() < rate - whole)
