"""The fuzz targets, bounded for CI (about a minute in all); ``make fuzz`` runs them for longer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import TARGETS, Target


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_target_holds(target: Target) -> None:
    @settings(
        max_examples=target.ci_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        target.check(data.draw(target.strategy))

    run()
