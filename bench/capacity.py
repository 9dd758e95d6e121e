"""Replicas needed for a request rate and a p99 target: a queueing model fed by the benchmark.

    python -m bench.capacity --rps 40 --p99-ms 1000      replicas, per-replica load, HPA target
    python -m bench.capacity --update-docs               regenerate the table in docs/kubernetes.md

The model, and what it assumes:

- Requests arrive as a Poisson stream (many independent clients, an open loop), one image each.
- The Kubernetes Service splits them at random over ``k`` ready replicas (kube-proxy picks a
  backend at random per connection; with many clients or short connections that is a random
  split per request), so each replica sees its own Poisson stream of ``rps / k``. The replicas
  are ``k`` separate queues, not one shared queue.
- A replica is an M/M/c queue: ``c`` servers (its run slots, ``SWIN_PARALLEL_BATCHES``) behind
  one FIFO queue. On CPU, batching adds no images/s (see docs/benchmarks.md), so a slot serves
  images at a constant rate: ``service_s = c / peak throughput``.
- Service times are taken as exponential. The service's are close to constant, and an M/D/c
  queue waits about half as long as M/M/c at the same load, so the model overstates the wait:
  it errs towards one replica too many, never one too few.
- A request's p99 is the replica's measured p99 at one client (decode, model run and HTTP, with
  no queue) plus the p99 of the M/M/c queue wait. Adding the two quantiles is an approximation,
  good where one of the two dominates, which is the case at either end of the load range.

The waiting probability is Erlang's C formula; the wait beyond it is exponential,
``P(W > t) = C(c, a) * exp(-(c*mu - lam) * t)``, and Little's law gives the mean number of
images waiting, ``Lq = C(c, a) * a / (c - a)``. That mean is what the HorizontalPodAutoscaler
steers on (deploy/k8s/base/hpa.yaml): ``rate(swin_queue_wait_seconds_sum)`` over a window is,
by Little's law again, the time-averaged number of images queued in a pod.

Rates are in requests (images) per second, times in seconds unless a name says ``_ms``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT, read_json
from bench.targets import fp32_server

RESULTS = RESULTS_DIR / "results.json"
DOCS_PAGE = ROOT / "docs" / "kubernetes.md"
DOCS_START = "<!-- capacity:start -->"
DOCS_END = "<!-- capacity:end -->"
# The table in the docs: request rates (req/s) by p99 targets (ms).
TABLE_RPS = (5, 10, 20, 50, 100, 200, 500, 1000)
TABLE_P99_MS = (500, 1000, 2000)
# The p99 the HorizontalPodAutoscaler's target is derived for (deploy/k8s/base/hpa.yaml).
HPA_P99_MS = 1000
QUANTILE = 0.99


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue: ``c`` servers, offered load ``a``
    Erlangs (arrival rate / service rate per server), ``0 <= a < c``.

    Computed through the Erlang B recursion ``B(k) = a B(k-1) / (k + a B(k-1))``, which stays
    finite for any ``c`` (the textbook sum of ``a**k / k!`` overflows past a few hundred).
    """
    if c < 1:
        raise ValueError(f"need at least one server, got c={c}")
    if not 0.0 <= a < c:
        raise ValueError(f"offered load a={a} must be in [0, c={c}): the queue would grow forever")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1.0 - b))


@dataclass(frozen=True)
class Replica:
    """One pod of the service, as the benchmark measured it."""

    slots: int  # model runs side by side (SWIN_PARALLEL_BATCHES)
    service_s: float  # one image's time on one slot, when every slot is busy
    base_p99_s: float  # p99 of a request that never queues (one client at a time)
    source: str = ""  # where the figures come from, for the docs and the CLI

    @property
    def capacity_rps(self) -> float:
        """Images per second with every slot busy: the most a replica can take."""
        return self.slots / self.service_s

    def offered_erlangs(self, rps: float) -> float:
        return rps * self.service_s

    def utilisation(self, rps: float) -> float:
        return rps / self.capacity_rps

    def wait_probability(self, rps: float) -> float:
        return erlang_c(self.slots, self.offered_erlangs(rps))

    def mean_queue_length(self, rps: float) -> float:
        """Images waiting (not running), averaged over time: Lq = C(c, a) * a / (c - a)."""
        a = self.offered_erlangs(rps)
        return self.wait_probability(rps) * a / (self.slots - a)

    def wait_quantile_s(self, rps: float, q: float = QUANTILE) -> float:
        """The ``q`` quantile of the queue wait: 0 while fewer than 1 - q of requests wait."""
        p_wait = self.wait_probability(rps)
        if p_wait <= 1.0 - q:
            return 0.0
        return math.log(p_wait / (1.0 - q)) / (self.capacity_rps - rps)

    def p99_s(self, rps: float) -> float:
        return self.base_p99_s + self.wait_quantile_s(rps)

    def max_rps(self, p99_s: float) -> float:
        """The most requests per second one replica takes with its p99 within ``p99_s``."""
        if p99_s <= self.base_p99_s:
            raise ValueError(
                f"a p99 of {p99_s * 1e3:.0f} ms is below a replica's p99 without any queue "
                f"({self.base_p99_s * 1e3:.0f} ms): no number of replicas reaches it"
            )
        lo, hi = 0.0, self.capacity_rps
        for _ in range(100):  # p99 rises with the load: bisect to float precision
            mid = (lo + hi) / 2
            if self.p99_s(mid) <= p99_s:
                lo = mid
            else:
                hi = mid
        return lo


@dataclass(frozen=True)
class Plan:
    """Replicas for one request rate and p99 target, and what each replica then sees."""

    rps: float
    p99_s: float
    replicas: int
    rps_per_replica: float
    utilisation: float
    predicted_p99_s: float
    queue_per_replica: float  # mean images waiting in each replica (the HPA's metric)


def plan(replica: Replica, rps: float, p99_s: float) -> Plan:
    """The fewest replicas that keep the p99 within ``p99_s`` at ``rps`` requests per second."""
    if rps <= 0:
        raise ValueError(f"request rate must be positive, got {rps}")
    per_replica_max = replica.max_rps(p99_s)
    # The p99 rises with each replica's share, so the fewest replicas is the ceiling (with a
    # relative tolerance, so that 20.000000001 req/s over a 10 req/s replica still needs 2).
    replicas = max(1, math.ceil(rps / per_replica_max - 1e-9))
    share = rps / replicas
    return Plan(
        rps=rps,
        p99_s=p99_s,
        replicas=replicas,
        rps_per_replica=share,
        utilisation=replica.utilisation(share),
        predicted_p99_s=replica.p99_s(share),
        queue_per_replica=replica.mean_queue_length(share),
    )


def hpa_target(replica: Replica, p99_s: float) -> float:
    """Mean images queued per pod at the busiest load that keeps the p99 within ``p99_s``:
    the HorizontalPodAutoscaler's averageValue for ``swin_queued_images``."""
    return replica.mean_queue_length(replica.max_rps(p99_s))


# ---- the benchmark's figures ---------------------------------------------------------------------


def auto_slots(cpus: int) -> int:
    """The service's own default for SWIN_PARALLEL_BATCHES on CPU: one per CPU, at most 4
    (src/swin_serve/server/settings.py, resolved_parallel_batches)."""
    return min(cpus, 4)


def replica_from_results(results: dict[str, Any], server: str | None = None) -> Replica:
    """A replica from ``python -m bench``'s results.json: the service at fp32 unless ``server``
    names another (the deployment pins SWIN_PRECISION=fp32, which every node runs alike).

    - slots: the service's default on the benchmark machine (one per CPU, at most 4);
    - service time: slots / the lowest throughput among the load levels that kept every slot
      busy (at least two clients per slot) and answered every request;
    - base p99: the p99 at one client.
    """
    meta = results["meta"]
    server = server or fp32_server(results)
    if server is None:
        raise ValueError("results.json has no service at fp32: run python -m bench service")
    levels = {int(c): lv for c, lv in results["service"]["servers"][server]["levels"].items()}
    slots = auto_slots(int(meta["machine"]["cpus"]))
    saturated = {
        c: lv["throughput_rps"]
        for c, lv in levels.items()
        if c >= 2 * slots and lv.get("error_count", 0) == 0 and lv.get("non_2xx", 0) == 0
    }
    if not saturated or 1 not in levels:
        raise ValueError(
            "results.json needs a one-client level and an error-free level with at least two "
            f"clients per run slot ({slots} slots); it has {sorted(levels)}"
        )
    clients, peak = min(saturated.items(), key=lambda kv: kv[1])
    machine = meta["machine"]
    source = (
        f"`python -m bench` run of {meta['started']} ({server}) on {machine['cpus']} CPUs "
        f"({machine['cpu_model']}): {peak:.2f} req/s at {clients} clients, "
        f"p99 {levels[1]['p99_ms']:.0f} ms at 1 client"
    )
    return Replica(
        slots=slots,
        service_s=slots / peak,
        base_p99_s=levels[1]["p99_ms"] / 1e3,
        source=source,
    )


def load_replica(path: Path = RESULTS, server: str | None = None) -> Replica:
    return replica_from_results(read_json(path), server)


# ---- the docs table ------------------------------------------------------------------------------


def render_table(replica: Replica) -> str:
    """The capacity section of docs/kubernetes.md: replicas by request rate and p99 target."""
    lines = [
        f"Generated by `python -m bench.capacity --update-docs` from the {replica.source}. "
        f"One replica: {replica.slots} run slots, {replica.service_s * 1e3:.0f} ms per image "
        f"on a slot, at most {replica.capacity_rps:.2f} req/s; p99 without a queue "
        f"{replica.base_p99_s * 1e3:.0f} ms.",
        "",
        "Replicas needed (and each one's utilisation):",
        "",
        "| req/s | " + " | ".join(f"p99 <= {ms} ms" for ms in TABLE_P99_MS) + " |",
        "|---:|" + "---:|" * len(TABLE_P99_MS),
    ]
    for rps in TABLE_RPS:
        cells = []
        for ms in TABLE_P99_MS:
            p = plan(replica, rps, ms / 1e3)
            cells.append(f"{p.replicas} ({p.utilisation:.0%})")
        lines.append(f"| {rps} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per replica, at the busiest load that meets each p99 target:",
        "",
        "| p99 target | req/s per replica | utilisation | mean images queued (HPA target) |",
        "|---:|---:|---:|---:|",
    ]
    for ms in TABLE_P99_MS:
        most = replica.max_rps(ms / 1e3)
        lines.append(
            f"| {ms} ms | {most:.2f} | {replica.utilisation(most):.0%} "
            f"| {replica.mean_queue_length(most):.2f} |"
        )
    return "\n".join(lines)


def replace_section(page: str, section: str) -> str:
    """``page`` with ``section`` between the capacity markers (which must be there)."""
    if DOCS_START not in page or DOCS_END not in page:
        raise ValueError(f"{DOCS_PAGE.name} has no {DOCS_START} ... {DOCS_END} markers")
    pattern = re.compile(re.escape(DOCS_START) + r".*?" + re.escape(DOCS_END), re.S)
    return pattern.sub(lambda _: f"{DOCS_START}\n{section}\n{DOCS_END}", page, count=1)


def docs_section(page: str) -> str:
    """The text between the capacity markers of ``page``."""
    start, end = page.index(DOCS_START) + len(DOCS_START), page.index(DOCS_END)
    return page[start:end].strip("\n")


# ---- the command line ----------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description="Replicas for a request rate and p99 target (M/M/c per replica; see the "
        "module docstring for the assumptions).",
    )
    p.add_argument("--rps", type=float, help="request rate to serve (requests/s, one image each)")
    p.add_argument("--p99-ms", type=float, default=HPA_P99_MS, help="p99 latency target (ms)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the benchmark's results.json")
    p.add_argument(
        "--server",
        default=None,
        help="the benchmarked server to size from (default: the service at fp32; 'service' is "
        "the service at its defaults, SWIN_PRECISION=auto)",
    )
    p.add_argument("--slots", type=int, help="override: run slots per replica")
    p.add_argument("--service-ms", type=float, help="override: ms per image on one slot")
    p.add_argument("--base-p99-ms", type=float, help="override: p99 with no queue (ms)")
    p.add_argument(
        "--update-docs", action="store_true", help=f"rewrite the table in {DOCS_PAGE.name}"
    )
    args = p.parse_args(argv)
    if args.rps is None and not args.update_docs:
        p.error("give --rps (and --p99-ms), or --update-docs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    measured = load_replica(args.results, args.server)
    overridden = any(v is not None for v in (args.slots, args.service_ms, args.base_p99_ms))
    replica = Replica(
        slots=args.slots or measured.slots,
        service_s=args.service_ms / 1e3 if args.service_ms else measured.service_s,
        base_p99_s=args.base_p99_ms / 1e3 if args.base_p99_ms else measured.base_p99_s,
        source="your figures" if overridden else measured.source,
    )
    if args.update_docs:
        if overridden:
            print("error: --update-docs uses the benchmark's figures only", file=sys.stderr)
            return 2
        DOCS_PAGE.write_text(replace_section(DOCS_PAGE.read_text(), render_table(replica)))
        print(f"updated {DOCS_PAGE.relative_to(ROOT)}")
        return 0
    try:
        p = plan(replica, args.rps, args.p99_ms / 1e3)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"replica: {replica.source}")
    print(
        f"  {replica.slots} slots x {replica.service_s * 1e3:.0f} ms per image: "
        f"{replica.capacity_rps:.2f} req/s at most; p99 without a queue "
        f"{replica.base_p99_s * 1e3:.0f} ms"
    )
    print(f"replicas: {p.replicas} for {p.rps:g} req/s with p99 <= {args.p99_ms:g} ms")
    print(
        f"  each: {p.rps_per_replica:.2f} req/s, utilisation {p.utilisation:.0%}, "
        f"predicted p99 {p.predicted_p99_s * 1e3:.0f} ms, "
        f"{p.queue_per_replica:.2f} images queued on average"
    )
    print(
        f"HPA target (swin_queued_images averageValue) for p99 <= {args.p99_ms:g} ms: "
        f"{hpa_target(replica, args.p99_ms / 1e3):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
