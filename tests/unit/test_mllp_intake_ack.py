"""The MLLP validate and acknowledge states, without sockets or Kafka."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.mllp import ack
from connectors.mllp.intake import Accepted, Ignored, IntakePolicy, Rejected, assess, salvage_header
from formats.hl7 import er7

POLICY = IntakePolicy()
NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)


def msg(
    msh: str = "MSH|^~\\&|LAB|CHU-X|AFF|HUB|20261124103000||ORU^R01^ORU_R01|C123|P|2.5", *rest: str
) -> bytes:
    return ("\r".join([msh, *rest]) + "\r").encode("latin-1")


PID = "PID|||IPP1^^^CHU&1.2.3&ISO^PI||DUPONT^Zoé"


def test_accepts_allowed_type_and_reads_header():
    out = assess(msg(msg().decode("latin-1").rstrip("\r"), PID), POLICY)
    assert isinstance(out, Accepted)
    h = out.header
    assert (h.sending_application, h.sending_facility, h.control_id) == ("LAB", "CHU-X", "C123")
    assert h.type_label == "ORU^R01"
    assert not h.enhanced_mode
    assert out.duplicate_key == "CHU-X|C123"
    assert len(out.raw_id) == 64


@pytest.mark.parametrize(
    ("payload", "code", "hl7_error"),
    [
        (b"", "empty", "100"),
        (b"\r\n", "empty", "100"),
        (b"PID|||1\r", "no_msh", "100"),
        (b"MSH\r", "msh_too_short", "101"),
        (b"MSH|^~\\&|A|B\x00|C\r", "nul_character", "102"),
        (msg("MSH|^~\\&|A|F|R|RF|2026||SIU^S12|X1|P|2.5"), "unsupported_type", "200"),
        (msg("MSH|^~\\&|A|F|R|RF|2026||ADT^A01|X1|P|2.5|||||FRA|KLINGON"), "unknown_charset", "102"),
        (
            msg("MSH|^~\\&|A|F|R|RF|2026||ADT^A01|X1|P|2.5", "MSH|^~\\&|A|F|R|RF|2026||ADT^A01|X2|P|2.5"),
            "several_messages",
            "100",
        ),
        (msg("MSH|^~\\&|A|F|R|RF|2026||ADT^A01||P|2.5"), "missing_field", "101"),
        (msg("MSH|^~\\&|A|F|R|RF|2026|||X1|P|2.5"), "missing_field", "101"),
    ],
)
def test_rejects_with_precise_reason(payload, code, hl7_error):
    out = assess(payload, POLICY)
    assert isinstance(out, Rejected)
    assert out.reason_code == code
    assert out.hl7_error == hl7_error
    assert out.reason


def test_missing_control_id_is_an_application_error_with_location():
    out = assess(msg("MSH|^~\\&|A|F|R|RF|2026||ADT^A01||P|2.5"), POLICY)
    assert isinstance(out, Rejected)
    assert (out.severity, out.location) == ("error", "MSH-10")


def test_incoming_ack_is_ignored():
    out = assess(msg("MSH|^~\\&|A|F|R|RF|2026||ACK^A01|X1|P|2.5", "MSA|AA|Z9"), POLICY)
    assert isinstance(out, Ignored)


def test_reject_reason_never_contains_content():
    canary = "CANARYNAME"
    payload = msg(f"MSH|^~\\&|A|F|R|RF|2026||{canary}^A01|X1|P|2.5", f"PID|||{canary}")
    out = assess(payload, POLICY)
    assert isinstance(out, Rejected)
    assert canary not in out.reason  # the type is shown only as 8 alphanumerics at most
    out = assess(b"MSH|^~\\&|A|" + canary.encode() + b"\x00\r", POLICY)
    assert isinstance(out, Rejected) and canary not in out.reason


def test_salvaged_header_lets_a_nak_echo_msh10():
    h = salvage_header(b"garbage MSH|^~\\&|A|F|R|RF|2026||ADT^A01|CTRL9|P|2.5\rPID\x00\r")
    assert h.control_id == "CTRL9"


def test_charset_mismatch_is_accepted_and_flagged():
    text = "MSH|^~\\&|A|F|R|RF|2026||ADT^A01|X1|P|2.5|||||FRA|ASCII\rPID|||1||HÉLÈNE\r"
    out = assess(text.encode("latin-1"), POLICY)
    assert isinstance(out, Accepted)
    assert out.decoded.mismatch


# ---------------------------------------------------------------- ACK codes per mode
@pytest.mark.parametrize(
    ("msh15", "msh16", "outcome", "expected"),
    [
        ("", "", "accepted", ["AA"]),
        ("", "", "error", ["AE"]),
        ("", "", "reject", ["AR"]),
        ("AL", "NE", "accepted", ["CA"]),
        ("AL", "NE", "reject", ["CR"]),
        ("AL", "AL", "accepted", ["CA", "AA"]),
        ("ER", "NE", "accepted", []),
        ("ER", "NE", "reject", ["CR"]),
        ("SU", "ER", "reject", ["AR"]),
        ("NE", "AL", "error", ["AE"]),
        ("", "AL", "accepted", ["CA", "AA"]),
    ],
)
def test_ack_codes(msh15, msh16, outcome, expected):
    header = assess(msg(f"MSH|^~\\&|A|F|R|RF|2026||ADT^A01|X1|P|2.5|||{msh15}|{msh16}"), POLICY).header  # type: ignore[union-attr]
    assert ack.ack_codes(header, outcome) == expected


def test_ack_echoes_msh10_swaps_parties_and_keeps_charset():
    out = assess(msg("MSH|^~\\&|LAB|CHU-X|AFF|HUB|2026||ORU^R01|C123|P|2.5|||||FRA|8859/1"), POLICY)
    text = ack.build_ack(out.header, "AA", "ACK1", NOW, "AFFLUENT", "AFFLUENT")
    parsed = er7.parse(text)
    assert parsed.get("MSH-3") == "AFF" and parsed.get("MSH-4") == "HUB"
    assert parsed.get("MSH-5") == "LAB" and parsed.get("MSH-6") == "CHU-X"
    assert parsed.get("MSH-9") == "ACK^R01^ACK"
    assert parsed.get("MSH-10") == "ACK1"
    assert parsed.get("MSH-18") == "8859/1"
    assert parsed.get("MSA-1") == "AA" and parsed.get("MSA-2") == "C123"
    assert parsed.segment("ERR") is None


def test_ack_uses_custom_delimiters_and_carries_err():
    out = assess(msg("MSH#!~\\$#LAB#CHU#AFF#HUB#2026##ADT!A01#C|1#P#2.5"), POLICY)
    assert isinstance(out, Accepted)
    text = ack.build_ack(
        out.header,
        "AE",
        "ACK2",
        NOW,
        "AFFLUENT",
        "AFFLUENT",
        ack.AckError("101", "message control id is empty", "MSH-10"),
    )
    assert text.startswith("MSH#!~\\$#")
    parsed = er7.parse(text)
    assert parsed.get("MSA-2") == "C|1"
    assert parsed.get("ERR-2") == "MSH!1!10"
    assert parsed.get("ERR-3.1") == "101"
    assert parsed.get("ERR-3.3") == "HL70357"
    assert parsed.get("ERR-4") == "E"
    assert parsed.get("ERR-8") == "message control id is empty"


def test_nak_without_any_msh_still_is_a_valid_ack():
    out = assess(b"\x01\x02binary", POLICY)
    assert isinstance(out, Rejected)
    text = ack.build_ack(
        out.header, "AR", "ACK3", NOW, "AFFLUENT", "AFFLUENT", ack.AckError("100", out.reason)
    )
    parsed = er7.parse(text)
    assert parsed.get("MSA-1") == "AR"
    assert parsed.get("MSA-2") == ""
    assert parsed.get("MSH-3") == "AFFLUENT"


def test_the_content_digest_ignores_msh7_only():
    from connectors.mllp.intake import content_digest

    base = msg("MSH|^~\\&|LAB|CHU-X|AFF|HUB|20261124103000||ORU^R01|C1|P|2.5", PID)
    assert content_digest(base) == content_digest(base.replace(b"20261124103000", b"20261124110000+0100"))
    assert content_digest(base) != content_digest(base.replace(b"DUPONT", b"DURAND"))
    assert content_digest(base) != content_digest(base.replace(b"|C1|", b"|C2|"))
    # Other delimiters, and a message too short to have an MSH-7: still a digest, never an error.
    assert content_digest(base.replace(b"|", b"#")) == content_digest(
        base.replace(b"|", b"#").replace(b"20261124103000", b"2027")
    )
    assert len(content_digest(b"MSH|^~\\&|A")) == 32 and len(content_digest(b"")) == 32


def test_ack_cache_entries_carry_the_digest_and_read_old_entries():
    from connectors.mllp.ackcache import cache_entry, read_entry

    reply = b"\x0bMSH|^~\\&|AFF|HUB\rMSA|AA|C1\r\x1c\r"
    assert read_entry(cache_entry("ab" * 16, reply)) == ("ab" * 16, reply)
    assert read_entry(reply) == (None, reply)  # written before digests: matched on its key alone


@pytest.mark.parametrize(
    ("payload", "codec", "control_id"),
    [
        # An escaped frame byte in MSH-10 was echoed raw: the sender got a broken frame.
        (b"MSH|^~\\&|A|F|R|RF|2026||ADT^A01|X\\X0B\\Y\\X1C\\|P|2.5\rPID|1\r", "latin-1", "X\x0bY\x1c"),
        # A latin-1 delimiter without MSH-18 came back as "?".
        (
            b"MSH\xa7^~\\&\xa7A\xa7F\xa7R\xa7RF\xa72026\xa7\xa7ADT^A01\xa7C\xe91\xa7P\xa72.5\rPID\xa71\r",
            "latin-1",
            "Cé1",
        ),
        # The same in UTF-8 (two bytes per delimiter): MSH-18 was misread and the message refused.
        ("MSH§^~\\&§A§F§R§RF§2026§§ADT^A01§C1§P§2.5\rPID§1\r".encode(), "utf-8", "C1"),
        # "+" as a delimiter broke the ACK's own MSH-7 ("+0100").
        (b"MSH+^~\\&+A+F+R+RF+2026++ADT^A01+C1+P+2.5\rPID+1\r", "latin-1", "C1"),
    ],
)
def test_the_ack_parses_and_echoes_msh10_whatever_the_header(payload, codec, control_id):
    import asyncio

    from connectors.mllp.framing import Frame, FrameDecoder
    from tests.unit.test_mllp_handler_fuzz import PEER, make_server

    server, producer, _ = make_server()
    reply = asyncio.run(server.handle_frame(payload, PEER))
    [frame] = FrameDecoder().feed(reply)
    assert isinstance(frame, Frame)
    ack = er7.parse(frame.payload.decode(codec))
    assert ack.segments_named("MSA")[0].value(1) == "AA"
    assert ack.segments_named("MSA")[0].value(2) == control_id
    assert ack.segments[0].value(7, 1, 1)[:4].isdigit()
    assert producer.sent  # stored
