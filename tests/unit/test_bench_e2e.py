"""bench.bench_e2e: the memory windows of the flat-memory row."""

from __future__ import annotations

import pytest

from bench.bench_e2e import MemorySample, memory_by_fifth, window_median


def _sample(events: float, sink_mb: float) -> MemorySample:
    return MemorySample(events, {"sink": sink_mb}, {"sink": sink_mb / 2})


def test_a_window_is_the_median_of_its_samples_so_one_merge_does_not_move_it() -> None:
    samples = [
        _sample(50, 400),  # before the window
        _sample(100, 500),
        _sample(120, 900),  # a merge's buffers, caught once
        _sample(150, 510),
        _sample(199, 505),
        _sample(200, 2000),  # past the window's end
    ]
    assert window_median(samples, "sink", "rss_mb", 100, 200) == 507.5
    assert window_median(samples, "sink", "anon_mb", 100, 200) == 253.8
    assert window_median(samples, "webhook", "rss_mb", 100, 200) == 0.0  # not measured


def test_an_empty_window_takes_the_nearest_sample_and_no_samples_give_zero() -> None:
    samples = [_sample(10, 300), _sample(400, 350)]
    assert window_median(samples, "sink", "rss_mb", 100, 200) == 300.0
    assert window_median(samples, "sink", "rss_mb", 390, 500) == 350.0
    assert window_median([], "sink", "rss_mb", 0, 10) == 0.0


def test_memory_by_fifth_gives_each_fifth_its_median_and_range() -> None:
    series = [
        {"events": e, "rss_mb": {"sink": 600.0 + (e % 3) * 100}, "anon_mb": {"sink": 300.0}}
        for e in range(0, 1000, 50)
    ]
    text = memory_by_fifth({"events": 1000, "memory_series": series})
    lines = text.splitlines()
    assert lines[0].startswith("median RSS MB (min-max) and median anonymous MB by fifth of 1,000")
    assert len(lines) == 6 and "(4 samples)" in lines[1]
    assert "sink 650 (600-800) anon 300" in lines[1]


@pytest.mark.parametrize("argv", [["--memory-pace", "0"], ["--events", "5", "--memory-pace", "9"]])
def test_a_memory_run_without_a_rate_or_events_is_refused_in_one_sentence(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import bench_e2e

    monkeypatch.setattr("sys.argv", ["bench_e2e", *argv])
    with pytest.raises(SystemExit) as exited:
        bench_e2e.main()  # refused before any broker starts
    assert exited.value.code == 2
    assert "--memory-pace needs a rate above 0 events/s" in capsys.readouterr().err
