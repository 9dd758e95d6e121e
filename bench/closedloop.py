"""A closed-loop HTTP load with every request's times: how latency moved around an event.

wrk (bench.loadgen) reports a run's aggregates only; a swap needs each request's send and answer
times to tell the requests during it from those before. A few clients suffice here: each is a
thread with one keep-alive connection and one request in flight, and on the CPU a Swin-T request
takes hundreds of milliseconds, so Python's cost per request is small beside the server's.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from dataclasses import dataclass, field

from bench.loadclient import TRANSPORT_ERROR


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: ``time.monotonic()`` when sent and when its answer was read, and its status."""

    started: float
    ended: float
    status: int

    @property
    def ms(self) -> float:
        return (self.ended - self.started) * 1e3


@dataclass
class ClosedLoop:
    """``clients`` threads, each with one keep-alive connection and one request in flight, until
    ``stop()`` (or ``per_client`` requests each). The threads pin themselves to ``cpus``."""

    port: int
    path: str
    body: bytes
    clients: int
    per_client: int | None = None
    cpus: list[int] | None = None
    samples: list[Sample] = field(default_factory=list)  # list.append is atomic
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> ClosedLoop:
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        return self.join()

    def join(self) -> list[Sample]:
        for t in self._threads:
            t.join()
        return self.samples

    def _client(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)  # this thread only
        conn: http.client.HTTPConnection | None = None
        headers = {"Content-Type": "image/jpeg"}
        sent = 0
        while not self._stop.is_set() and (self.per_client is None or sent < self.per_client):
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                conn.request("POST", self.path, self.body, headers)
                answer = conn.getresponse()
                answer.read()
                status = answer.status
                if answer.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                status = TRANSPORT_ERROR
                if conn is not None:
                    conn.close()
                conn = None
            self.samples.append(Sample(started, time.monotonic(), status))
            sent += 1
        if conn is not None:
            conn.close()
