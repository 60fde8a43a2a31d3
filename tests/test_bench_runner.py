"""`benchmarks/run_all.py` rewrites BENCHMARKS.md from each script's markdown section."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"


def _script(body: str) -> str:
    return f"def main(argv):\n{body}\n"


def _section(title: str, name: str, table: str) -> str:
    return _script(f"    return {{'markdown': '## {title} (`{name}.py`)\\n\\n{table}\\n'}}")


@pytest.fixture
def runner(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_all_under_test", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    monkeypatch.setattr(module, "HERE", bench)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "TARGET", tmp_path / "BENCHMARKS.md")
    (bench / "bench_b.py").write_text(_section("Bee", "bench_b", "b table"))
    (bench / "bench_a.py").write_text(_section("Ay", "bench_a", "a table"))
    return module, tmp_path


def test_sections_in_script_order_under_machine_header(runner):
    module, root = runner
    assert module.main([]) == 0
    text = (root / "BENCHMARKS.md").read_text()
    assert text.startswith("# Benchmarks")
    assert "cores" in text and "torch" in text
    assert text.index("## Ay") < text.index("## Bee")
    assert "a table" in text and "b table" in text
    assert (root / ".bench-out" / "results.json").exists()


def test_failing_script_gets_a_section_and_only_keeps_the_others(runner):
    module, root = runner
    module.main([])
    (root / "benchmarks" / "bench_a.py").write_text(_script("    raise RuntimeError('boom')"))
    assert module.main(["--only", "bench_a"]) == 1
    text = (root / "BENCHMARKS.md").read_text()
    assert "bench_a failed" in text and "boom" in text
    assert "## Bee" in text and "b table" in text  # kept from the previous file
    assert text.index("bench_a failed") < text.index("## Bee")


def test_each_section_names_where_it_was_measured_and_only_keeps_old_stamps(runner, monkeypatch):
    module, root = runner
    module.main([])
    first = (root / "BENCHMARKS.md").read_text()
    cpu = module.cpu_model()
    assert first.count(f"_Measured on {cpu}, ") == 2
    assert first.index("## Ay") < first.index("_Measured on") < first.index("a table")
    monkeypatch.setattr(module, "cpu_model", lambda: "Other CPU")
    assert module.main(["--only", "bench_a"]) == 0
    text = (root / "BENCHMARKS.md").read_text()
    ay, bee = text.index("## Ay"), text.index("## Bee")
    assert "_Measured on Other CPU, " in text[ay:bee] and "a table" in text[ay:bee]
    assert f"_Measured on {cpu}, " in text[bee:] and "b table" in text[bee:]  # kept as it was
    assert "Latest run: Machine: Other CPU" in text
