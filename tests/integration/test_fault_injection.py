"""The train spec's ``debug`` section on its own (no Ray): a failure and a pause, each once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.specs import DebugOptions
from llm import storage
from ray_jobs.fault_injection import FAIL_MARKER, PAUSE_MARKER, fail_once, pause_once


def test_rank_0_pauses_once_at_the_first_log_step_past_pause_at_step(tmp_path: Path) -> None:
    debug = DebugOptions(pause_at_step=10, pause_s=0.3)
    out = str(tmp_path)
    started = time.monotonic()
    pause_once(out, 5, debug)  # before the step: no pause, no marker
    assert time.monotonic() - started < 0.2
    assert not storage.exists(storage.join(out, PAUSE_MARKER))
    pause_once(out, 12, debug)
    assert time.monotonic() - started >= 0.3
    assert storage.read_json(storage.join(out, PAUSE_MARKER)) == {"step": 12, "pause_s": 0.3}
    again = time.monotonic()
    pause_once(out, 12, debug)  # the restarted group finds the marker and goes on
    assert time.monotonic() - again < 0.2


def test_a_failure_is_injected_once_and_leaves_its_marker(tmp_path: Path) -> None:
    debug = DebugOptions(fail_at_step=3)
    fail_once(str(tmp_path), 2, debug, [])
    with pytest.raises(RuntimeError, match="injected failure at step 3"):
        fail_once(str(tmp_path), 3, debug, [])
    fail_once(str(tmp_path), 3, debug, [])
    assert storage.read_json(str(tmp_path / FAIL_MARKER))["step"] == 3


@pytest.mark.parametrize(
    "bad", [{"pause_at_step": 0}, {"pause_s": 0}, {"pause_s": 7200}, {"pause": 5}]
)
def test_bad_debug_options_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        DebugOptions.model_validate(bad)
