"""python -m bench: --only names known stages or is refused in one sentence; a run of some
stages writes its own results file instead of replacing the whole run's."""

from __future__ import annotations

import pytest

from bench.__main__ import STAGES, main, results_name


@pytest.mark.parametrize("only", ["sinks", "e2e,memry", ",", ""])
def test_an_unknown_or_empty_stage_list_is_refused_before_anything_runs(
    only: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--only", only])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"choose from {','.join(STAGES)}" in err and "Traceback" not in err
    assert ("unknown stage" in err) == bool(only.strip(","))


def test_a_run_of_some_stages_writes_a_file_of_its_own() -> None:
    assert results_name(False, set(STAGES)) == "all"
    assert results_name(True, set(STAGES)) == "all-tiny"
    assert results_name(False, {"e2e"}) == "only-e2e"
    # Named in the stages' own order, whatever the order given.
    assert results_name(True, {"memory", "sink"}) == "only-sink-memory-tiny"
