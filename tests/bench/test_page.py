"""The benchmarks page keeps one generated section per machine (nothing here is timed)."""

from __future__ import annotations

import re

import pytest

from bench import report
from bench import suite as bench_main
from bench.common import ROOT, machine_fingerprint
from bench.page import (
    BENCH_END,
    BENCH_HEADING,
    BENCH_PAGE,
    BENCH_START,
    SECTION,
    machine_section,
    replace_bench_section,
)
from bench.report import plot_names

XEON = {"cpu_model": "Intel(R) Xeon(R) Processor", "cpus": 2, "cpu_features": ["AVX2", "FMA"]}
EPYC = {"cpu_model": "AMD EPYC 7B13", "cpus": 2, "cpu_features": ["AVX2", "FMA"]}
PAGE = f"# x\n\nintro\n\n{BENCH_HEADING}\n\nHand-written intro.\n\n## Soak\n\nkeep me\n"


def test_page_markers_are_added_under_the_heading_then_replaced_in_place():
    once = replace_bench_section(PAGE, "table v1", XEON)
    assert once.index(BENCH_HEADING) < once.index(BENCH_START) < once.index("## Soak")
    assert "Hand-written intro." in once and "keep me" in once
    twice = replace_bench_section(once, "table v2", XEON)
    assert "table v1" not in twice and "table v2" in twice
    assert twice.count(BENCH_START) == 1 and twice.count(BENCH_END) == 1
    assert twice.replace("table v2", "table v1") == once  # nothing else moved


def test_a_run_on_another_machine_keeps_the_first_machines_section():
    xeon = replace_bench_section(PAGE, "xeon figures v1", XEON)
    both = replace_bench_section(xeon, "epyc figures", EPYC)
    assert "xeon figures v1" in both and "epyc figures" in both
    assert both.index("xeon figures v1") < both.index("epyc figures") < both.index("## Soak")
    again = replace_bench_section(both, "xeon figures v2", XEON)
    assert "xeon figures v1" not in again
    assert again.index("xeon figures v2") < again.index("epyc figures")  # replaced where it was
    assert [m["machine"] for m in SECTION.finditer(again)] == [
        machine_fingerprint(XEON),
        machine_fingerprint(EPYC),
    ]


@pytest.mark.parametrize(
    "other",
    [
        {**XEON, "cpus": 4},
        {**XEON, "cpu_features": ["AVX2", "FMA", "AVX-512", "AVX-512 VNNI"]},
        {k: v for k, v in XEON.items() if k != "cpu_features"},  # a run from before the field
    ],
    ids=["more CPUs", "more instruction sets", "instruction sets not recorded"],
)
def test_the_same_cpu_model_with_other_cores_or_instruction_sets_is_another_machine(other):
    page = replace_bench_section(replace_bench_section(PAGE, "first", XEON), "second", other)
    assert "first" in page and "second" in page


def test_a_section_written_before_sections_were_keyed_is_never_replaced():
    legacy = PAGE.replace(
        "Hand-written intro.\n", f"Hand-written intro.\n\n{BENCH_START} -->\nold\n{BENCH_END}\n"
    )
    page = replace_bench_section(legacy, "new", XEON)
    assert "old" in page and "new" in page and page.index("old") < page.index("new")


def test_a_machine_name_cannot_end_its_marker_early():
    odd = {**XEON, "cpu_model": 'CPU "x" --> y'}
    page = replace_bench_section(replace_bench_section(PAGE, "one", odd), "two", odd)
    assert "one" not in page and page.count(BENCH_START) == 1
    assert "-->" not in page.split(BENCH_START, 1)[1].split("\n", 1)[0][:-3]


def test_page_without_the_section_heading_is_refused():
    with pytest.raises(ValueError, match=BENCH_HEADING):
        replace_bench_section("# x\n", "t", XEON)


def test_a_machines_section_names_the_cpu_above_its_tables_one_heading_level_down():
    section = machine_section(XEON, "Run line.\n\n### Targets\n\n| t |\n\n#### deeper\n")
    assert section.startswith("### 2 CPUs: Intel(R) Xeon(R) Processor; AVX2, FMA\n\nRun line.")
    assert "\n#### Targets\n" in section and "\n##### deeper\n" in section


def test_the_benchmarks_page_has_keyed_generated_sections_under_its_heading():
    page = (ROOT / BENCH_PAGE).read_text()
    found = list(SECTION.finditer(page))
    assert found and page.count(BENCH_START) == len(found) == page.count(BENCH_END)
    assert all(m["machine"] for m in found)
    assert page.index(BENCH_HEADING) < found[0].start()
    keys = [m["machine"] for m in found]
    assert len(set(keys)) == len(keys)


def test_plot_files_are_named_for_the_machine():
    xeon, epyc = plot_names({"meta": {"machine": XEON}}), plot_names({"meta": {"machine": EPYC}})
    assert xeon != epyc
    assert all(
        re.fullmatch(r"(engine_throughput|service_latency_throughput)-\w{8}\.png", n) for n in xeon
    )


def test_a_full_run_rewrites_its_machines_section_with_plots_linked_from_the_page(
    tmp_path, monkeypatch, make_results
):
    page = tmp_path / BENCH_PAGE
    page.parent.mkdir(parents=True)
    other = replace_bench_section(f"# B\n\n{BENCH_HEADING}\n\n## int8\n\nkeep me\n", "epyc", EPYC)
    page.write_text(other)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    monkeypatch.setattr(bench_main, "ROOT", tmp_path)
    monkeypatch.setattr(report, "plot", lambda results, out_dir: [])
    out_dir = tmp_path / "bench" / "results"
    out_dir.mkdir(parents=True)
    results = {**make_results(), "meta": {"machine": XEON, "started": "2026-01-01 10:00 UTC"}}
    bench_main.write_report(results, out_dir, page=True)
    text = page.read_text()
    assert "epyc" in text and "keep me" in text
    assert "### 2 CPUs: Intel(R) Xeon(R) Processor; AVX2, FMA" in text
    engine_png, _ = plot_names(results)
    assert f"](../bench/results/{engine_png})" in text
    assert readme.read_text() == "# x\n"
