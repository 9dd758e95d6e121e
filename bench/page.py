"""The benchmarks page's generated sections (docs/benchmarks.md): one per machine.

A section sits between a start marker naming its machine (``common.machine_fingerprint``) and
an end marker. A run replaces the section of its own machine only; the sections of other
machines stay, since figures from another CPU are not wrong, only not comparable. A section
whose start marker names no machine (written before sections were keyed) matches no run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.common import describe_cpu, machine_fingerprint

BENCH_PAGE = Path("docs/benchmarks.md")  # relative to the repository root
BENCH_HEADING = "## Engines and service"  # the generated sections go under it
BENCH_START = "<!-- bench:start"
BENCH_END = "<!-- bench:end -->"
SECTION = re.compile(
    re.escape(BENCH_START) + r'(?: machine="(?P<machine>[^"]*)")? -->\n.*?' + re.escape(BENCH_END),
    re.S,
)


def start_marker(key: str) -> str:
    # The key goes inside an HTML comment and a quoted attribute: neither may end early.
    safe = re.sub(r"-{2,}", "-", key.replace('"', "'"))
    return f'{BENCH_START} machine="{safe}" -->'


def machine_section(machine: dict[str, Any], body: str) -> str:
    """``body`` (the report's Markdown) under a heading naming the machine, its own headings one
    level down, so that the sections of several machines read as siblings."""
    demoted = re.sub(r"(?m)^(#{3,5}) ", r"#\1 ", body)
    unknown = " (instruction sets not recorded)" if machine.get("cpu_features") is None else ""
    heading = f"### {machine.get('cpus', '?')} CPUs: {describe_cpu(machine)}{unknown}"
    return f"{heading}\n\n{demoted.lstrip()}"


def replace_bench_section(page: str, section: str, machine: dict[str, Any]) -> str:
    """``page`` with ``machine``'s section set to ``section``: replaced in place when the page
    has one, else added after the other machines' sections (or under BENCH_HEADING)."""
    key = start_marker(machine_fingerprint(machine))
    block = f"{key}\n{section.rstrip()}\n{BENCH_END}"
    found = list(SECTION.finditer(page))
    same = next((m for m in found if m["machine"] and start_marker(m["machine"]) == key), None)
    if m := same:
        return page[: m.start()] + block + page[m.end() :]
    if found:
        end = found[-1].end()
        return page[:end] + "\n\n" + block + page[end:]
    heading = re.search(rf"^{re.escape(BENCH_HEADING)}[^\n]*\n", page, re.M)
    if heading is None:
        raise ValueError(f"{BENCH_PAGE} has no '{BENCH_HEADING}' heading to put the section under")
    # After the heading's first paragraph (the hand-written intro), before the next heading.
    nxt = re.search(r"^## ", page[heading.end() :], re.M)
    end = heading.end() + (nxt.start() if nxt else len(page) - heading.end())
    body = page[heading.end() : end].strip("\n")
    intro = f"\n{body}\n\n" if body else "\n"
    return page[: heading.end()] + intro + block + "\n\n" + page[end:]
