"""Every benchmark script still imports against the package as it is now (a renamed module breaks them silently:
they run on demand, not in the suite)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_benchmark_script_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    assert module.__file__ is not None and Path(module.__file__).parent == BENCHMARKS
    sys.modules.pop(name, None)


def test_there_are_benchmark_scripts() -> None:
    assert {"int8_repair", "perf_table", "startup"} <= set(SCRIPTS)
