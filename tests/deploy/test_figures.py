"""Measured figures are quoted from the benchmarks' results files, never retyped by hand.

Each benchmark's figures live in one place: the generated sections of docs/benchmarks.md and
docs/kubernetes.md, which the bench code writes from bench/results/*.json. Everywhere else (the
README, docs/*.md outside those sections) a figure-like number must be a value some results file
holds, at the rounding the text uses; anything else links to the generated section instead.

What counts as a figure: a number with the unit of a measurement, req/s (img/s, images/s), ms
(µs), MB (MiB), %, a ratio written ``1.08x`` or ``1.08×``, or CPU s (CPU seconds). Each unit is
looked up among the values whose key names that kind of quantity (``throughput_rps`` for req/s,
``p99_ms`` or a time in seconds for ms, ``peak_rss_mb`` for MB, ``server_cpu_s_per_request``
for CPU s...), so that a figure cannot pass on an unrelated number that happens to be equal.

Not checked, and why:

- Plain seconds and GiB: they are durations and sizes of settings (grace periods, drain, scrape
  intervals, upload limits), which no results file holds.
- ``N x M`` with a space: a product (``1920 x 1080``, ``1 worker x 2 threads``), not a ratio.
- Fenced code blocks: they hold commands and their settings, not quotes of a run.
- NOT_MEASURED: figures of a unit above that are not measurements (a setting, a constant of the
  code, a threshold, a size of a download), and measurements whose run writes no results file
  (the reliability tests, the soak, one-off measurements a page dates and describes). Each is
  listed by page and exact text, so a new figure, or a changed one, is checked until someone
  lists it with its reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import capacity, page

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
GENERATED = (
    re.compile(re.escape(page.BENCH_START) + r".*?" + re.escape(page.BENCH_END), re.S),
    re.compile(re.escape(capacity.DOCS_START) + r".*?" + re.escape(capacity.DOCS_END), re.S),
)
NUMBER = r"\d+(?:\.\d+)?"
# A number, or a range of two ("837 to 914 MiB", "0.03-0.5 %"), then its unit.
FIGURE = re.compile(
    rf"(?<![\w.=])[+\-−]?(?P<low>{NUMBER})(?:(?: to |-|–)(?P<high>{NUMBER}))?"
    r"(?:(?P<ratio>[x×])(?![\w])|\s?(?P<unit>req/s|img/s|images/s|ms|µs|MB|MiB|%|CPU s(?:econds)?)"
    r"(?![\w/]))"
)

# Which values of the results files a unit is looked up among: (pattern on the key path, scale
# from the stored value to the unit).
KEYS: dict[str, list[tuple[re.Pattern[str], float]]] = {
    "rate": [(re.compile(r"rps|per_s\b|throughput|img_per_s"), 1.0)],
    "ms": [
        (re.compile(r"_ms\b|breakdown_ms"), 1.0),
        (re.compile(r"_s\b|seconds"), 1e3),
        (re.compile(r"_us\b"), 1e-3),
    ],
    "µs": [(re.compile(r"_us\b"), 1.0), (re.compile(r"_ms\b"), 1e3)],
    "MB": [(re.compile(r"_mb\b|_mib\b|rss_mib"), 1.0)],
    "%": [
        (re.compile(r"pct\b"), 1.0),
        (re.compile(r"share|ratio|coverage|agreement|overlap"), 100.0),
    ],
    "x": [(re.compile(r"ratio|measured|threshold"), 1.0)],
    "CPU s": [(re.compile(r"cpu_s_per"), 1.0)],
}
UNITS = {
    "req/s": "rate",
    "img/s": "rate",
    "images/s": "rate",
    "ms": "ms",
    "µs": "µs",
    "MB": "MB",
    "MiB": "MB",
    "%": "%",
    "CPU s": "CPU s",
    "CPU seconds": "CPU s",
}

# page -> figure text -> why no results file holds it. Keep it narrow: exact text, one page.
_RELIABILITY = "a bound or a parameter of a reliability test, which the test itself holds"
_SOAK = "the reliability runs and soak of docs/benchmarks.md, which write no results file"
NOT_MEASURED: dict[str, dict[str, str]] = {
    "README.md": {"200 MB": "the size of torch's CPU wheel, a download"},
    "docs/benchmarks.md": {
        "4%": "an export option timed during development, dated and described on the page",
        "40 images/s": _SOAK,
        "2.6 ms": _SOAK,
        "115.7 MiB": _SOAK,
        "1840 to 2063 MiB": _SOAK,
        "+1 MiB": _SOAK,
        "+2.6 MiB": _SOAK,
        "+305 MiB": _SOAK,
        "94.2%": "373 of 396 in fine_tune.json; tests/server/test_digits_fine_tune.py holds "
        "this table to the file",
    },
    "docs/export.md": {
        "0.2 MB": "the size of a file of the export",
        "6 MB": "the size of a file of the export",
    },
    "docs/model-repository.md": {
        "196 MB": "a one-off measurement the page describes; no results file",
        "653 MB": "a one-off measurement the page describes; no results file",
        "462 MB": "a one-off measurement the page describes; no results file",
        "206 MB": "a one-off measurement the page describes; no results file",
    },
    "docs/precision.md": {
        "10%": "WIDE_GAIN of server/runtime/layout.py, a constant",
        "20%": "NARROW_GAIN of server/runtime/layout.py, a constant",
    },
    "docs/production.md": {
        "16 MiB": "SWIN_MAX_UPLOAD_BYTES's default",
        "1 MiB": "nginx's default body limit",
        "350 MB": "bytes a pixel times the pixel cap, a computation",
    },
    "docs/reliability.md": {
        "8 MiB": _RELIABILITY,
        "64 MiB": _RELIABILITY,
        "40 images/s": _RELIABILITY,
        "48 MiB": _RELIABILITY,
        "24 MiB": _RELIABILITY,
        "1 ms": _RELIABILITY,
        "8 MB": _RELIABILITY,
        "10 %": _RELIABILITY,
    },
}


def prose(text: str) -> str:
    """``text`` without its generated sections and fenced code, lines kept in place."""
    blank = lambda m: "\n" * m[0].count("\n")  # noqa: E731
    for pattern in (*GENERATED, FENCE):
        text = pattern.sub(blank, text)
    return text


def figures(text: str) -> Iterator[tuple[int, str, str, list[str]]]:
    """(line, figure text, unit kind, numbers) for every figure of ``text`` outside the
    generated sections and code."""
    for n, line in enumerate(prose(text).splitlines(), 1):
        for m in FIGURE.finditer(line):
            kind = "x" if m["ratio"] else UNITS[m["unit"]]
            numbers = [m["low"]] + ([m["high"]] if m["high"] else [])
            yield n, m[0], kind, numbers


def _walk(node: object, path: str, out: list[tuple[str, float]]) -> None:
    if isinstance(node, bool):
        return
    if isinstance(node, int | float):
        out.append((path, float(node)))
    elif isinstance(node, dict):
        for key, value in node.items():
            _walk(value, f"{path}/{key}".lower(), out)
    elif isinstance(node, list) and not path.endswith("samples_ms"):  # raw latency samples
        for value in node:
            _walk(value, path, out)


def results_values(folder: Path = RESULTS) -> dict[str, set[float]]:
    """Every number of the results files, by the unit kind its key names (scaled to it)."""
    found: list[tuple[str, float]] = []
    for path in sorted(folder.glob("*.json")):
        _walk(json.loads(path.read_text(encoding="utf-8")), "", found)
    by_kind: dict[str, set[float]] = {kind: set() for kind in KEYS}
    for key_path, value in found:
        tail = "/".join(part for part in key_path.split("/")[-2:] if not part.isdigit())
        for kind, rules in KEYS.items():
            for pattern, scale in rules:
                if pattern.search(tail):
                    by_kind[kind].add(value * scale)
    return by_kind


def holds(values: set[float], number: str) -> bool:
    """Whether some value rounds to ``number`` at the decimals the text gives it."""
    decimals = len(number.partition(".")[2])
    x, half = float(number), 0.5 * 10**-decimals
    return any(abs(v - x) <= half + 1e-9 for v in values)


def unmatched(pages: list[Path], values: dict[str, set[float]]) -> list[str]:
    bad = []
    for p in pages:
        name = p.relative_to(ROOT).as_posix()
        listed = NOT_MEASURED.get(name, {})
        for line, text, kind, numbers in figures(p.read_text(encoding="utf-8")):
            if text in listed or all(holds(values[kind], n) for n in numbers):
                continue
            bad.append(f"{name}:{line}: {text!r}")
    return bad


@pytest.fixture(scope="module")
def values() -> dict[str, set[float]]:
    return results_values()


def test_every_figure_outside_the_generated_sections_is_in_a_results_file(values):
    bad = unmatched(PAGES, values)
    assert not bad, (
        "figures that no bench/results/*.json holds (at the text's rounding): link to the "
        "generated section in docs/benchmarks.md instead of quoting it, or list a figure that "
        "is no measurement in NOT_MEASURED with its reason:\n" + "\n".join(bad)
    )


def test_no_setting_describes_itself_with_a_figure():
    """Descriptions outlive the run a figure came from, and end up in --help and the docs."""
    from swin_serve.server.settings import Settings

    quoted = {
        name: [text for _, text, _, _ in figures(field.description or "")]
        for name, field in Settings.model_fields.items()
    }
    assert not {name: texts for name, texts in quoted.items() if texts}


def test_every_not_measured_figure_is_still_on_its_page():
    """A stale entry would excuse the same text if it came back as a measurement."""
    for name, listed in NOT_MEASURED.items():
        found = {text for _, text, _, _ in figures((ROOT / name).read_text(encoding="utf-8"))}
        assert set(listed) <= found, f"{name} no longer quotes {set(listed) - found}"


def test_the_check_finds_the_figures_it_should_and_fails_on_a_wrong_one(values, tmp_path):
    """Not vacuous: it sees figures of every unit, the generated sections hide theirs, and a
    figure off by one in its last digit fails while the same figure rounded passes."""
    levels = json.loads((RESULTS / "results.json").read_text())["service"]["servers"]
    c16 = levels["service_fp32"]["levels"]["16"]
    rps, p99, cpu = c16["throughput_rps"], c16["p99_ms"], c16["server_cpu_s_per_request"]
    good = (
        f"{rps:.2f} req/s, p99 {p99:.0f} ms, {cpu:.3f} CPU s a request, "
        f"{c16['peak_rss_mb']:.0f} MB, {c16['loadgen_cpu_share'] * 100:.2f}% of a core.\n"
    )
    found = list(figures(good))
    assert [kind for _, _, kind, _ in found] == ["rate", "ms", "CPU s", "MB", "%"]
    doc = tmp_path / "doc.md"
    doc.write_text(good)
    assert all(holds(values[kind], n) for _, _, kind, ns in found for n in ns)
    wrong = good.replace(f"{rps:.2f} req/s", f"{rps + 0.01:.2f} req/s")
    assert [kind for _, _, kind, ns in figures(wrong) if not holds(values[kind], ns[0])] == ["rate"]
    # A signed figure ("+210 MB", "-7 ms") is a figure too.
    assert [kind for _, _, kind, _ in figures("+210 MB more, -7 ms less")] == ["MB", "ms"]
    # The same numbers under another unit are not found: each unit has its own keys.
    assert not holds(values["rate"], f"{p99:.0f}")
    # Inside a generated section or a code block, nothing is read.
    hidden = f"{page.BENCH_START} -->\n{wrong}{page.BENCH_END}\n```\n{wrong}```\n"
    assert list(figures(hidden)) == []
    # On the real pages it finds figures of each unit.
    kinds = {kind for p in PAGES for _, _, kind, _ in figures(p.read_text(encoding="utf-8"))}
    assert kinds >= {"rate", "ms", "MB", "%", "x"}
