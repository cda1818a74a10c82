"""The MLLP door acknowledges exactly the HL7 events the normalize stage maps (formats/hl7/coverage.py).

Before: the door accepted any ADT or ORU, so ADT^A14, A17, A34, A45 (and every other unmapped event)
were answered AA and then always dead-lettered by the mapper as ``unsupported_event``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from affluent.core.errors import ConfigError
from connectors.mllp.intake import Accepted, IntakePolicy, Rejected, assess
from formats.hl7.coverage import MAPPED, mapped_labels
from formats.reasons import ReasonCode
from streams.normalize.envelope import RawContext
from streams.normalize.hl7 import map_hl7
from streams.normalize.options import MappingOptions
from streams.normalize.result import MappingError

CTX = RawContext("r" * 64, "hl7v2", "mllp", "CHU-SYNTH", "ADT", "C1", datetime(2026, 1, 1, tzinfo=UTC))
ALL_ADT = [f"A{n:02d}" for n in range(1, 63)] + ["Z99", "Z80", ""]
CANDIDATES = (
    [("ADT", e) for e in ALL_ADT]
    + [("BAR", f"P{n:02d}") for n in range(1, 13)]
    + [("BAR", "")]
    + [("ORU", e) for e in ("R01", "R30", "R32", "")]
)


def message(mtype: str, event: str) -> str:
    pid = "PID|1||IPP1^^^CHU-SYNTH&1.2.250.1.999&ISO^PI||FICTIF^Test||19800101|F"
    body = [
        f"MSH|^~\\&|APP|CHU-SYNTH|AFF|HUB|20260101120000||{mtype}^{event}|C1|P|2.5",
        f"EVN|{event}|20260101120000",
        pid,
    ]
    if mtype == "ADT":
        body += [
            "PV1|1|I|||||||||||||||||V1^^^CHU-SYNTH&1.2.250.1.999&ISO^VN",
            "MRG|IPP0^^^CHU-SYNTH&1.2.250.1.999&ISO^PI",
        ]
    else:
        body += ["OBR|1|||1234-5^Glucose^LN|||20260101110000", "OBX|1|NM|1234-5^Glucose^LN||5.1|mmol/L|||||F"]
    return "\r".join(body) + "\r"


def mapper_refuses_the_event(text: str) -> bool:
    try:
        map_hl7(text, CTX, MappingOptions())
    except MappingError as exc:
        return exc.code == ReasonCode.UNSUPPORTED_EVENT
    return False


@pytest.mark.parametrize(("mtype", "event"), CANDIDATES, ids=[f"{t}^{e or 'none'}" for t, e in CANDIDATES])
def test_the_door_accepts_exactly_what_the_mapper_maps(mtype: str, event: str) -> None:
    text = message(mtype, event)
    door = assess(text.encode("latin-1"), IntakePolicy())
    mapped = not mapper_refuses_the_event(text)
    assert isinstance(door, Accepted) == mapped == (event in MAPPED[mtype])
    if not mapped:
        assert isinstance(door, Rejected) and door.reason_code == ReasonCode.UNSUPPORTED_EVENT
        assert door.hl7_error == "201" and door.location == "MSH-9"


@pytest.mark.parametrize("event", ["A14", "A17", "A34", "A45"])
def test_the_events_seen_accepted_then_dead_lettered_are_refused_at_the_door(event: str) -> None:
    door = assess(message("ADT", event).encode(), IntakePolicy())
    assert isinstance(door, Rejected) and door.reason_code == ReasonCode.UNSUPPORTED_EVENT


def test_an_adt_without_msh9_2_is_judged_by_evn1_as_the_mapper_does() -> None:
    text = message("ADT", "A01").replace("ADT^A01", "ADT")
    assert isinstance(assess(text.encode(), IntakePolicy()), Accepted)
    refused = text.replace("EVN|A01", "EVN|A34")
    assert isinstance(assess(refused.encode(), IntakePolicy()), Rejected)
    assert mapper_refuses_the_event(refused)


def test_a_configured_type_the_hub_does_not_map_stops_the_door() -> None:
    with pytest.raises(ConfigError, match="SIU not mapped"):
        IntakePolicy(allowed_message_types=frozenset({"ADT", "SIU"}))
    assert IntakePolicy(allowed_message_types=frozenset({"ORU"}))  # restricting is fine


def test_labels_list_every_mapped_event() -> None:
    assert "ADT^A01" in mapped_labels() and "ORU^R01" in mapped_labels()
    assert len(mapped_labels()) == sum(len(v) for v in MAPPED.values())


@pytest.mark.parametrize("msh9", ["ADT&^A02^ADT_A02", "ADT^A02&X^ADT_A02", "ADT&X^A34"])
def test_door_and_mapper_read_msh9_the_same_way(msh9: str) -> None:
    """Found by `make fuzz`: the door read MSH-9.1 ``ADT&`` as ADT, the mapper as ``ADT&``, so the
    door answered AA for a message the mapper could only refuse as ``unsupported_event``."""
    text = message("ADT", "A02").replace("ADT^A02", msh9)
    door = assess(text.encode(), IntakePolicy())
    assert isinstance(door, Accepted) == (not mapper_refuses_the_event(text))
