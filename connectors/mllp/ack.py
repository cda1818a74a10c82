"""Build HL7 v2 acknowledgements and decide which ones a message gets.

Original mode (MSH-15 and MSH-16 empty): one ACK, AA / AE / AR. Enhanced mode: a commit ACK
(CA / CE / CR) as MSH-15 asks (AL always, NE never, ER on error, SU on success), then an application
ACK (AA / AE / AR) as MSH-16 asks — for the hub, storing durably *is* the application's processing, so
both are known at the same moment. ACKs echo MSH-10 in MSA-2, use the sender's delimiters, swap
sending and receiving parties, declare the sender's MSH-18, and carry an ERR segment on AE/AR/CE/CR.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from connectors.mllp.intake import Header
from formats.hl7 import er7
from formats.reasons import TABLE_0357

Outcome = Literal["accepted", "error", "reject"]
PARIS = ZoneInfo("Europe/Paris")


@dataclass(frozen=True, slots=True)
class AckError:
    hl7_error: str  # HL7 table 0357 code
    reason: str  # human-readable, content-free
    location: str = ""  # e.g. "MSH-10"


def ack_codes(header: Header, outcome: Outcome) -> list[str]:
    """The acknowledgement codes to send, in order (an empty list means: send nothing)."""
    if not header.enhanced_mode:
        return [{"accepted": "AA", "error": "AE", "reject": "AR"}[outcome]]
    codes: list[str] = []
    if _wanted(header.accept_ack_type or "AL", outcome):
        codes.append({"accepted": "CA", "error": "CE", "reject": "CR"}[outcome])
    if _wanted(header.application_ack_type, outcome):
        codes.append({"accepted": "AA", "error": "AE", "reject": "AR"}[outcome])
    return codes


def _wanted(condition: str, outcome: Outcome) -> bool:
    if condition == "AL":
        return True
    if condition == "ER":
        return outcome != "accepted"
    if condition == "SU":
        return outcome == "accepted"
    return False  # NE or empty


def build_ack(
    header: Header,
    code: str,
    control_id: str,
    now: datetime,
    our_application: str,
    our_facility: str,
    error: AckError | None = None,
) -> str:
    """One ACK message as ER7 text (segments ended by CR), in the sender's delimiters."""
    d = header.delimiters
    fs, cs = d.field, d.component

    def esc(text: str) -> str:
        return er7.escape(text, d)

    encoding = d.component + d.repetition + d.escape + d.subcomponent + (d.truncation or "")
    msh = [
        "MSH",
        encoding,
        esc(header.receiving_application or our_application),
        esc(header.receiving_facility or our_facility),
        esc(header.sending_application),
        esc(header.sending_facility),
        esc(now.astimezone(PARIS).strftime("%Y%m%d%H%M%S%z")),  # "+" may be a sender's delimiter
        "",
        cs.join(["ACK", esc(header.trigger_event), "ACK"]) if header.trigger_event else "ACK",
        esc(control_id),
        esc(header.processing_id or "P"),
        esc(header.version or "2.5"),
        "",
        "",
        "",
        "",
        "",
        esc(header.declared_charset),
    ]
    while msh[-1] == "":
        msh.pop()
    segments = [fs.join(msh)]
    msa = ["MSA", code, esc(header.control_id)]
    if error is not None and code in ("AE", "AR", "CE", "CR"):
        msa.append(esc(error.reason[:80]))  # MSA-3 text message (deprecated but widely read)
    segments.append(fs.join(msa))
    if error is not None:
        severity = "E"
        err = [
            "ERR",
            "",  # ERR-1 (deprecated in 2.5)
            _location(error.location, d),  # ERR-2 error location
            cs.join([error.hl7_error, esc(TABLE_0357.get(error.hl7_error, "")), "HL70357"]),  # ERR-3
            severity,  # ERR-4
            "",
            "",
            "",
            esc(error.reason),  # ERR-8 user message
        ]
        segments.append(fs.join(err))
    return "\r".join(segments) + "\r"


def _location(location: str, d: er7.Delimiters) -> str:
    """ERR-2 (ERL data type): segment id ^ sequence ^ field position, from a 'PID-3' style location."""
    if len(location) >= 5 and location[3] == "-" and location[4:].isdigit():
        return d.component.join([location[:3], "1", location[4:]])
    if len(location) == 3 and location.isalnum():
        return d.component.join([location, "1"])
    return ""


def build_batch_header(
    kind: Literal["FHS", "BHS"],
    header: Header,
    now: datetime,
    control_id: str,
    reference: str,
    our_application: str,
    our_facility: str,
) -> str:
    """Our FHS or BHS of a batch acknowledgement (HL7 v2.5 §2.10.3): parties swapped, xHS-11 our own
    control id, xHS-12 the sender's xHS-11 so it can tell which batch is answered."""
    d = header.delimiters

    def esc(text: str) -> str:
        return er7.escape(text, d)

    encoding = d.component + d.repetition + d.escape + d.subcomponent + (d.truncation or "")
    fields = [
        kind,
        encoding,
        esc(header.receiving_application or our_application),
        esc(header.receiving_facility or our_facility),
        esc(header.sending_application),
        esc(header.sending_facility),
        esc(now.astimezone(PARIS).strftime("%Y%m%d%H%M%S%z")),
        "",
        "",
        "",
        esc(control_id),
        esc(reference),
    ]
    return d.field.join(fields) + "\r"


def build_batch_trailer(kind: Literal["FTS", "BTS"], count: int, header: Header) -> str:
    """BTS-1 counts the ACK messages of our batch, FTS-1 the batches of our file."""
    return f"{kind}{header.delimiters.field}{count}\r"
