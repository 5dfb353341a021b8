"""The rotation protocol's promises (I1-I4) under a long model-based run, and proof that the
same checks catch a deliberately broken protocol. Results go to docs/reliability.md."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.reliability.conftest import Recorder
from tests.test_rotation_model import (  # noqa: F401 - quiet is an autouse fixture
    BrokenModel,
    NoWithdrawModel,
    RotationModel,
    quiet,
    violations,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
EXAMPLES = 5000


def test_long_model_run_keeps_every_promise(recorder: Recorder) -> None:
    """5,000 generated histories of up to 60 steps: syncs, rotations, crashes, lost and late
    writes, leader changes by two replicas and a CLI; I1-I4 after every step."""
    RotationModel.steps = RotationModel.faults_injected = 0
    survived = False
    try:
        run_state_machine_as_test(
            RotationModel,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=60,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        survived = True
    finally:
        recorder.trial(
            "protocol",
            "model-based: crashes, lost/late writes, 2 replicas + CLI, lease moves (I1-I4)",
            survived=survived,
            note=f"{EXAMPLES} histories, {RotationModel.steps} steps, "
            f"{RotationModel.faults_injected} fault plans",
        )


@pytest.mark.parametrize(
    ("model", "promise", "bug"),
    [
        (BrokenModel, "I1", "journal 'written' after a failed write, no served check"),
        (NoWithdrawModel, "I2|I3", "resuming another run's open INTENT at once, duplicate kept"),
    ],
)
def test_broken_protocol_is_caught(
    recorder: Recorder, model: type[RotationModel], promise: str, bug: str
) -> None:
    """Deliberately broken variants: the model must report the promise each one breaks."""
    found = violations(model, 1500)
    caught = re.search(promise, found) is not None
    recorder.trial(
        "protocol",
        f"deliberately broken: {bug}",
        survived=caught,
        note=f"caught: {promise.replace('|', ' or ')} violation found" if caught else "NOT caught",
    )
    assert caught, found
