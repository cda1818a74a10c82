"""Pure parts of `affluent run` and `affluent simulate`: back-off, component selection, the traffic plan."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from affluent.components import COMPONENTS, select
from affluent.core.errors import ConfigError
from affluent.run import backoff
from affluent.sim.accounting import Tally
from affluent.sim.simulate import Plan, accounting_lines, traffic
from affluent.sim.synthetic import MALFORMED, adt, cohort, malformed
from affluent.tail import json_line
from streams.normalize.envelope import RawContext
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import MappingError

CTX = RawContext("raw", "hl7v2", "mllp", "CHU", "PAS", "M1", datetime(2026, 3, 1, tzinfo=UTC), "t", 0, 0)


def test_backoff_doubles_up_to_the_cap():
    assert [backoff(n, cap_s=5) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_select_defaults_subsets_and_unknown_names():
    assert [c.name for c in select(None)] == [c.name for c in COMPONENTS if c.default]
    assert [c.name for c in select(["normalize", "mllp"])] == ["mllp", "normalize"]
    with pytest.raises(ConfigError, match="unknown component"):
        select(["mllp", "fhirr"])


def test_components_are_doors_or_workers_with_their_own_subcommand():
    from affluent.cli import build_parser

    parser = build_parser()
    for component in COMPONENTS:
        assert component.role in ("door", "worker")
        assert parser.parse_args(list(component.argv)).command == component.argv[0]


def test_traffic_is_reproducible_keeps_patients_on_one_lane_and_has_every_kind():
    plan = Plan(patients=30, rate=100, duration_s=20, senders=4, malformed_share=0.05)
    people = cohort(5, plan.patients)
    start = datetime(2026, 11, 24, 9)
    first, again = traffic(plan, people, 5, start), traffic(plan, people, 5, start)
    assert [m.payload for m in first] == [m.payload for m in again]
    assert len(first) == 2000
    kinds = Counter(m.label for m in first)
    for kind in ("ADT^A01", "ADT^A02", "ADT^A03", "ADT^A08", "ADT^A40", "ORU^R01"):
        assert kinds[kind] > 0, kind
    assert 40 < sum(n for k, n in kinds.items() if k.startswith("malformed")) < 200
    lanes: dict[bytes, set[int]] = {}
    for m in first:
        pid = (
            next(s for s in m.payload.split(b"\r") if s.startswith(b"PID|"))
            if b"\rPID|" in m.payload
            else None
        )
        if pid is not None:
            lanes.setdefault(pid.split(b"|")[3], set()).add(m.lane)
    assert all(len(v) == 1 for v in lanes.values())
    # The door refuses the unsupported type (no raw id); it stores everything else.
    assert all((m.raw_id is None) == (m.label == "malformed:unsupported_type") for m in first)


@pytest.mark.parametrize("trigger", ["A01", "A02", "A03", "A08"])
def test_synthetic_movements_map_to_a_patient_and_an_encounter(trigger):
    p = cohort(1, 1)[0]
    events = map_hl7(
        adt(p, trigger, "C1", datetime(2026, 11, 24, 10), "V1").decode("iso8859-15"), CTX, MappingOptions()
    )
    assert [e.kind for e in events] == ["patient", "encounter"]


def test_synthetic_merge_maps_to_a_retraction():
    p = cohort(1, 1)[0]
    payload = adt(p, "A40", "C1", datetime(2026, 11, 24, 10), "V1", retired_ipp=f"{p.ipp}D")
    assert "retraction" in [e.kind for e in map_hl7(payload.decode("iso8859-15"), CTX, MappingOptions())]


@pytest.mark.parametrize("kind", [k for k in MALFORMED if k != "unsupported_type"])
def test_stored_malformations_are_dead_lettered_by_normalization(kind):
    p = cohort(1, 1)[0]
    with pytest.raises(MappingError):
        map_hl7(
            malformed(kind, p, "C2", datetime(2026, 11, 24), "V1").decode("iso8859-15"), CTX, MappingOptions()
        )


def test_accounting_lines_show_missing_counts():
    tally = Tally(sent=3, acknowledged=2, missing_messages=1, missing_national=4)
    lines = accounting_lines(tally)
    assert lines[0] == "Accounting"
    assert next(line for line in lines if "found nowhere" in line).split()[-1] == "1"
    assert next(line for line in lines if "expected but missing" in line).split()[-1] == "4"
    assert not tally.complete


def test_tail_lines_are_json_with_bytes_and_times():
    line = json_line({"payload": b"\x00\xff", "at": datetime(2026, 1, 2, tzinfo=UTC), "name": "Zoé"})
    assert line == '{"payload": "AP8=", "at": "2026-01-02T00:00:00+00:00", "name": "Zoé"}'


def test_soak_verdict_ignores_the_warm_up_and_catches_steady_growth():
    from bench.soak import growth, is_flat

    warm_then_flat = [100, 150, 200, 200, 201, 199, 200, 202, 200, 201]
    leaking = [100, 110, 120, 130, 140, 150, 160, 170, 180, 190]
    assert is_flat(warm_then_flat, 0.10)
    assert not is_flat(leaking, 0.10)
    assert growth(leaking) > 0.3
    assert not is_flat([100, 100], 0.10)  # too few samples to tell


def test_soak_explains_the_door_growth_by_its_ack_cache_entries():
    from bench.soak import _ack_cache_note
    from connectors.mllp.ackcache import MAX_ENTRIES

    growing = _ack_cache_note([400 * 1024, 440 * 1024], 100_000, 220_000)
    assert "100,000 entries at the start" in growing[1] and "220,000 at its end" in growing[1]
    assert "about 350 bytes per new entry" in growing[1]  # 40 MiB over 120,000 entries
    full = _ack_cache_note([500 * 1024, 500 * 1024], MAX_ENTRIES, MAX_ENTRIES)
    assert "at its bound" in full[1]
    assert _ack_cache_note([400 * 1024, 440 * 1024], None, 10) == []  # gauge unreadable: say nothing
