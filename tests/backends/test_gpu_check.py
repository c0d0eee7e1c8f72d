"""benchmarks/gpu_check.py on a CPU: its dry run (the real sections on the fakes of cuda_fakes.py) writes the
verdict table after every section, fails and exits 1 when a fake is broken, survives SIGTERM with its finished
sections kept, kills a timed-out child's whole process group, and names GPU test files that exist."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script() -> Any:
    """benchmarks/gpu_check.py as a module, without putting benchmarks/ on everyone's import path."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()


def _report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "gpu_check.json").read_text())


def _verdicts(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {check["name"]: (check["verdict"], check["reason"]) for check in report["checks"]}


def test_the_dry_run_writes_the_table_after_every_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots: list[dict[str, str]] = []
    write = gpu_check.Report.write

    def recording_write(report: Any) -> None:
        write(report)
        on_disk = _report(report.out)
        snapshots.append({name: section["status"] for name, section in on_disk["sections"].items()})

    monkeypatch.setattr(gpu_check.Report, "write", recording_write)
    before = (torch.get_num_threads(), os.environ.get("SEDEPLOY_CUDA"), signal.getsignal(signal.SIGTERM))
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    after = (torch.get_num_threads(), os.environ.get("SEDEPLOY_CUDA"), signal.getsignal(signal.SIGTERM))
    assert after == before, "the dry run left the process changed"
    markdown = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert markdown[0].startswith("# GPU check: DRY RUN on a fake GPU: PASS")
    assert markdown[2] == "| check | verdict | threshold | value | reason |", "the verdict table comes first"
    verdicts = _verdicts(_report(tmp_path))
    declared = [name for section in gpu_check.sections() for name, _ in section.checks]
    assert list(verdicts) == declared
    assert all(f"| {name} | {verdict} |" in "\n".join(markdown) for name, (verdict, _) in verdicts.items())
    assert {verdict for verdict, _ in verdicts.values()} == {"PASS", "SKIP"}
    judged = [name for name, (verdict, _) in verdicts.items() if verdict == "PASS"]
    assert {
        "cuda_python.graph_replay_bytes",
        "torch.parity_fp16",
        "torch.graphs_bf16",
        "digits.fp16_top1",
    } <= set(judged)
    assert verdicts["throughput.e2e_fp32"][1].startswith("dry run"), "a fake GPU's timing must not PASS"
    names = [section.name for section in gpu_check.sections()]
    for index, name in enumerate(names):  # written after each section: it done, the ones after it not begun
        assert any(
            snapshot[name] == "done" and all(snapshot[later] == "pending" for later in names[index + 1 :])
            for snapshot in snapshots
        ), f"no report was written between section {name} and the next"
    assert "section digits" in (tmp_path / "gpu_check.log").read_text()


@pytest.mark.parametrize(
    ("fault", "section", "failing"),
    [
        ("corrupt-copy", "cuda_python", {"cuda_python.pinned_round_trip", "cuda_python.graph_replay_bytes"}),
        ("no-capture", "threads", {"torch.two_threads_graphs"}),
        ("stale-graph", "torch_parity", {"torch.parity_fp32", "torch.parity_fp16", "torch.parity_bf16"}),
    ],
)
def test_a_broken_fake_fails_its_checks_and_exits_1(
    tmp_path: Path, fault: str, section: str, failing: set[str]
) -> None:
    assert (
        gpu_check.main(["--dry-run", "--out", str(tmp_path), "--only", section, "--fake-fault", fault]) == 1
    )
    report = _report(tmp_path)
    verdicts = _verdicts(report)
    assert {name for name, (verdict, _) in verdicts.items() if verdict == "FAIL"} == failing
    assert report["verdict"] == "FAIL"
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check: DRY RUN on a fake GPU: FAIL")


def test_sigterm_mid_run_keeps_the_finished_sections(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)]
    command += ["--only", "cuda_python,digits,threads", "--fake-fault", "hang:digits"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            path = tmp_path / "gpu_check.json"
            if path.is_file() and _report(tmp_path)["sections"]["digits"]["status"] == "running":
                break
            time.sleep(0.1)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    report = _report(tmp_path)
    verdicts = _verdicts(report)
    assert report["status"] == "interrupted"
    assert verdicts["cuda_python.pinned_round_trip"][0] == "PASS", "a finished section was lost"
    assert verdicts["digits.fp32_top1"] == ("FAIL", verdicts["digits.fp32_top1"][1])
    assert "interrupted by SIGTERM" in verdicts["digits.fp32_top1"][1]
    assert verdicts["torch.two_threads_graphs"] == ("SKIP", "not reached: the run was interrupted by SIGTERM")
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check: DRY RUN on a fake GPU: FAIL") and "(interrupted)" in markdown
    assert "section digits" in (tmp_path / "gpu_check.log").read_text()


def test_the_pytest_list_names_files_that_exist() -> None:
    assert gpu_check.GPU_TEST_FILES
    assert [name for name in gpu_check.GPU_TEST_FILES if not (REPO / name).is_file()] == []
    assert gpu_check.DIGITS_DATA.is_file() and gpu_check.DIGITS_MODEL.is_file()


def test_a_timed_out_child_loses_its_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    code, _ = gpu_check.run_in_group(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout=1.0)
    assert code is None and time.monotonic() - started < 20
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = Path(f"/proc/{grandchild}/status")
        if not status.exists() or "State:\tZ" in status.read_text():
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the timed-out command's own child was left running")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the real check would run")
def test_without_a_gpu_the_real_check_fails_and_still_writes_the_table(tmp_path: Path) -> None:
    assert gpu_check.main(["--out", str(tmp_path), "--only", "cuda_python"]) == 1
    verdicts = _verdicts(_report(tmp_path))
    assert verdicts["gpu_visible"][0] == "FAIL"
    assert verdicts["cuda_python.pinned_round_trip"] == ("SKIP", "not run: gpu_visible failed")
