"""bench.common: a bench run's files live in one temp directory of the run; the ports it
hands its children are free and outside the range outgoing connections take."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.common import ephemeral_low, free_port, port_range, run_directory

_CHILD_WRITES = "import tempfile; print(tempfile.mkdtemp(prefix='child-'))"


def test_a_run_and_its_children_write_into_it_and_it_is_removed_on_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with run_directory() as run:
        assert run.parent == tmp_path and os.environ["TMPDIR"] == str(run)
        mine = Path(tempfile.mkdtemp())
        child = subprocess.run(
            [sys.executable, "-c", _CHILD_WRITES], capture_output=True, text=True, check=True
        )
        theirs = Path(child.stdout.strip())
        assert mine.parent == run and theirs.parent == run
    assert not run.exists()
    assert os.environ["TMPDIR"] == str(tmp_path) and tempfile.tempdir is None


def test_a_failed_run_keeps_its_files_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(RuntimeError), run_directory() as run:
        (run / "broker.log").write_text("what went wrong")
        raise RuntimeError("stage failed")
    assert (run / "broker.log").read_text() == "what went wrong"
    assert f"kept in {run}" in capsys.readouterr().err
    assert os.environ["TMPDIR"] == str(tmp_path)


def test_keep_keeps_a_successful_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with run_directory(keep=True) as run:
        (run / "store").mkdir()
    assert (run / "store").is_dir() and str(run) in capsys.readouterr().out
    assert "TMPDIR" not in os.environ and tempfile.tempdir == str(tmp_path)


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= port < ephemeral_low() for port in ports)


def test_xdist_workers_pick_ports_from_disjoint_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(port_range())
        assert all(slices[-1][0] <= free_port() < slices[-1][1] for _ in range(10))
    (low0, high0), (low1, high1) = slices
    assert 10000 == low0 < high0 <= low1 < high1 <= ephemeral_low()
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert port_range() == (10000, ephemeral_low())
