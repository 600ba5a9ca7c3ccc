"""The fuzz target (tests/core/fuzz_session.py) under Hypothesis: a brief run in every test
run; `make fuzz` runs it coverage-guided under atheris for a million inputs."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.fuzz_session import target

EXAMPLES = int(os.environ.get("FERRYTEST_FUZZ_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=1500))
def test_relay_survives_any_script(data: bytes) -> None:
    target(data)


def test_a_script_that_exercises_every_action() -> None:
    # every action byte 0..9 with payload bytes cycling: a fixed smoke input
    target(bytes(range(256)) * 8)
