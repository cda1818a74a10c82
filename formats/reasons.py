"""Every reason a message can be refused or dead-lettered for, in one closed vocabulary.

A sender's NAK (ERR-3, from HL7 table 0357), a FHIR client's OperationOutcome (HTTP status and issue
type), a dead letter's ``reason_code`` and the ``reason`` label of the metrics must tell one story:
an operator who sees ``no_patient`` on a dashboard finds the same word in the dead-letter topic and can
look up, here, what the sender was told. So each :class:`ReasonCode` carries all four answers, and
the code that refuses names a member, never a string (``tests/unit/test_layers.py`` fails on a string).

The value of a member is the machine code: the dead letter's ``reason_code`` and the metric label.
:attr:`ReasonCode.text` is its standing description (the reasons page of docs/operations.md lists
them); a refusal adds a content-free detail (a position, a rule), never a value from the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# HL7 v2 table 0357, message error condition codes (ERR-3).
HL7_SEGMENT_SEQUENCE: Final = "100"
HL7_REQUIRED_FIELD_MISSING: Final = "101"
HL7_DATA_TYPE: Final = "102"
HL7_TABLE_VALUE_NOT_FOUND: Final = "103"
HL7_UNSUPPORTED_MESSAGE_TYPE: Final = "200"
HL7_UNSUPPORTED_EVENT: Final = "201"
HL7_UNKNOWN_KEY: Final = "204"
HL7_INTERNAL: Final = "207"

TABLE_0357: Final = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# The FHIR R4 IssueType value set (OperationOutcome.issue.code) members this hub answers with.
FHIR_ISSUE_TYPES: Final = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "security",
        "login",
        "forbidden",
        "not-supported",
        "not-found",
        "too-long",
        "code-invalid",
        "processing",
        "too-costly",
        "transient",
        "exception",
        "informational",
    }
)


@dataclass(frozen=True, slots=True)
class Answer:
    """What each channel is told for one reason."""

    hl7_error: str  # HL7 table 0357 code, ERR-3
    http_status: int  # the status a door answers with
    fhir_issue: str  # OperationOutcome.issue.code
    text: str  # the standing description


class ReasonCode(StrEnum):
    """Why a message (or one record of it) was refused or dead-lettered. See the module docstring."""

    # --- at the MLLP door (dead letters in dlq.ingest, NAK to the sender) ---------------------------
    EMPTY = "empty"
    UNKNOWN_CHARSET = "unknown_charset"
    NO_MSH = "no_msh"
    MSH_TOO_SHORT = "msh_too_short"
    BAD_DELIMITERS = "bad_delimiters"
    BAD_SEGMENT_NAME = "bad_segment_name"
    NUL_CHARACTER = "nul_character"
    SEVERAL_MESSAGES = "several_messages"
    BAD_BATCH = "bad_batch"
    MISSING_FIELD = "missing_field"
    UNSUPPORTED_TYPE = "unsupported_type"
    SENDER_NOT_ALLOWED = "sender_not_allowed"
    OVERSIZE = "oversize"
    STORAGE_UNAVAILABLE = "kafka_unavailable"
    # --- in normalization (dlq.normalize) ------------------------------------------------------------
    UNPARSABLE = "unparsable"
    UNSUPPORTED_EVENT = "unsupported_event"
    NO_PATIENT = "no_patient"
    NO_MERGED_PATIENT = "no_merged_patient"
    NO_VISIT = "no_visit"
    NO_CODE = "no_code"
    BAD_CODE = "bad_code"
    BAD_TIME = "bad_time"
    UNSUPPORTED_VALUE = "unsupported_value"
    INVALID_JSON = "invalid_json"
    INVALID_RESOURCE = "invalid_resource"
    TOO_MANY_ENTRIES = "too_many_entries"
    UNSUPPORTED_RESOURCE = "unsupported_resource"
    UNSUPPORTED_REQUEST = "unsupported_request"
    EMPTY_RECORD = "empty_record"
    MAPPING_FAILED = "mapping_failed"
    NOTHING_TO_MAP = "nothing_to_map"
    SCHEMA_MISMATCH = "schema_mismatch"
    UNDECODABLE_RAW = "undecodable_raw"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    # --- patient identity ----------------------------------------------------------------------------
    BAD_INS_KEY = "bad_ins_key"
    NO_LOCAL_IDENTIFIER = "no_local_identifier"
    # --- device payloads (HTTP 400 at the door, dlq.ingest for MQTT, dlq.normalize on replay) --------
    UNKNOWN_MAPPING = "unknown_mapping"
    NOT_JSON = "not_json"
    NO_READING = "no_reading"
    MISSING_TIMESTAMP = "missing_timestamp"
    BAD_TIMESTAMP = "bad_timestamp"
    MISSING_VALUE = "missing_value"
    WRONG_TYPE = "wrong_type"
    MISSING_UNIT = "missing_unit"
    UNKNOWN_UNIT = "unknown_unit"
    IMPLAUSIBLE_VALUE = "implausible_value"
    MISSING_DEVICE = "missing_device"
    MISSING_PATIENT = "missing_patient"
    NO_OBSERVATION = "no_observation"
    UNKNOWN_DEVICE = "unknown_device"
    UNLINKED_DEVICE = "unlinked_device"
    DEVICE_NOT_BOUND = "device_not_bound"
    # --- FHIR pulls (dlq.ingest) ---------------------------------------------------------------------
    FHIR_UNUSABLE_RESOURCE = "fhir_unusable_resource"
    # --- pseudonymization (dlq.pseudonymize) ---------------------------------------------------------
    UNDECODABLE_CANONICAL = "undecodable_canonical"
    NOT_CANONICAL = "not_canonical"
    IDENTITY_MISSING = "identity_missing"
    NATIONAL_TRANSFORM = "national_transform"
    NATIONAL_SCHEMA = "national_schema"

    @property
    def answer(self) -> Answer:
        return ANSWERS[self]

    @property
    def hl7_error(self) -> str:
        return ANSWERS[self].hl7_error

    @property
    def http_status(self) -> int:
        return ANSWERS[self].http_status

    @property
    def fhir_issue(self) -> str:
        return ANSWERS[self].fhir_issue

    @property
    def text(self) -> str:
        return ANSWERS[self].text


_R = ReasonCode
_SEQ, _REQ, _TYPE = HL7_SEGMENT_SEQUENCE, HL7_REQUIRED_FIELD_MISSING, HL7_DATA_TYPE
_TABLE, _INTERNAL = HL7_TABLE_VALUE_NOT_FOUND, HL7_INTERNAL

ANSWERS: Final[dict[ReasonCode, Answer]] = {
    _R.EMPTY: Answer(_SEQ, 400, "structure", "empty message"),
    _R.UNKNOWN_CHARSET: Answer(_TYPE, 400, "value", "unsupported character set declared in MSH-18"),
    _R.NO_MSH: Answer(_SEQ, 400, "structure", "the message does not start with an MSH segment"),
    _R.MSH_TOO_SHORT: Answer(_REQ, 400, "required", "the MSH segment is too short to hold its delimiters"),
    _R.BAD_DELIMITERS: Answer(_TYPE, 400, "structure", "MSH-1/MSH-2 do not declare usable delimiters"),
    _R.BAD_SEGMENT_NAME: Answer(_SEQ, 400, "structure", "a segment name is not three upper-case characters"),
    _R.NUL_CHARACTER: Answer(_TYPE, 400, "structure", "the message holds a NUL character"),
    _R.SEVERAL_MESSAGES: Answer(_SEQ, 400, "structure", "more than one MSH segment in one frame"),
    _R.BAD_BATCH: Answer(
        _SEQ, 400, "structure", "an HL7 batch whose FHS/BHS/BTS/FTS envelope does not hold together"
    ),
    _R.MISSING_FIELD: Answer(_REQ, 400, "required", "a required MSH field is empty"),
    _R.UNSUPPORTED_TYPE: Answer(
        HL7_UNSUPPORTED_MESSAGE_TYPE, 422, "not-supported", "message type not accepted by this hub"
    ),
    _R.SENDER_NOT_ALLOWED: Answer(
        _INTERNAL, 403, "forbidden", "the client certificate may not send for this facility"
    ),
    _R.OVERSIZE: Answer(_INTERNAL, 413, "too-long", "message larger than the door's size limit"),
    _R.STORAGE_UNAVAILABLE: Answer(
        _INTERNAL, 503, "transient", "not stored: the hub's storage is unavailable, resend later"
    ),
    _R.UNPARSABLE: Answer(_SEQ, 400, "structure", "the message cannot be tokenized"),
    _R.UNSUPPORTED_EVENT: Answer(HL7_UNSUPPORTED_EVENT, 422, "not-supported", "event not mapped by this hub"),
    _R.NO_PATIENT: Answer(_REQ, 422, "required", "no usable patient identifier"),
    _R.NO_MERGED_PATIENT: Answer(_REQ, 422, "required", "a merge names no usable prior patient identifier"),
    _R.NO_VISIT: Answer(_REQ, 422, "required", "a movement without a visit number"),
    _R.NO_CODE: Answer(_REQ, 422, "required", "a clinical record without a code"),
    _R.BAD_CODE: Answer(
        _TABLE, 422, "code-invalid", "a code not shaped as the codes of its code system (CIM-10, CCAM)"
    ),
    _R.BAD_TIME: Answer(_TYPE, 400, "value", "a date or time that cannot be read"),
    _R.UNSUPPORTED_VALUE: Answer(_TYPE, 422, "not-supported", "a value of a type this hub does not map"),
    _R.INVALID_JSON: Answer(_TYPE, 400, "invalid", "the payload is not strict JSON"),
    _R.INVALID_RESOURCE: Answer(_TYPE, 400, "invalid", "the resource breaks a FHIR R4 rule"),
    _R.TOO_MANY_ENTRIES: Answer(
        _INTERNAL, 413, "too-costly", "a Bundle with more entries than the door's max_bundle_entries"
    ),
    _R.UNSUPPORTED_RESOURCE: Answer(
        HL7_UNSUPPORTED_MESSAGE_TYPE, 404, "not-supported", "a resource type this hub does not map"
    ),
    _R.UNSUPPORTED_REQUEST: Answer(
        HL7_UNSUPPORTED_EVENT, 422, "not-supported", "a Bundle request this hub does not map"
    ),
    _R.EMPTY_RECORD: Answer(_INTERNAL, 422, "processing", "an empty Kafka record"),
    _R.MAPPING_FAILED: Answer(_INTERNAL, 422, "exception", "the mapper failed unexpectedly (a bug)"),
    _R.NOTHING_TO_MAP: Answer(HL7_UNSUPPORTED_EVENT, 422, "not-supported", "the message holds no event"),
    _R.SCHEMA_MISMATCH: Answer(_INTERNAL, 422, "processing", "the record's schema is not the expected one"),
    _R.UNDECODABLE_RAW: Answer(_INTERNAL, 422, "processing", "the raw record cannot be decoded"),
    _R.UNSUPPORTED_PROTOCOL: Answer(
        HL7_UNSUPPORTED_MESSAGE_TYPE, 422, "not-supported", "a raw record of an unknown protocol"
    ),
    _R.BAD_INS_KEY: Answer(_TYPE, 422, "value", "an INS whose control key is wrong"),
    _R.NO_LOCAL_IDENTIFIER: Answer(_REQ, 422, "required", "no local identifier besides the INS"),
    _R.UNKNOWN_MAPPING: Answer(_TABLE, 404, "not-found", "no device template of that name"),
    _R.NOT_JSON: Answer(_TYPE, 400, "structure", "the payload is not JSON"),
    _R.NO_READING: Answer(_REQ, 400, "required", "the payload holds no reading"),
    _R.MISSING_TIMESTAMP: Answer(_REQ, 400, "required", "a reading without its time"),
    _R.BAD_TIMESTAMP: Answer(_TYPE, 400, "value", "a reading time that cannot be read"),
    _R.MISSING_VALUE: Answer(_REQ, 400, "required", "a reading without its value"),
    _R.WRONG_TYPE: Answer(_TYPE, 400, "value", "a value of the wrong JSON type"),
    _R.MISSING_UNIT: Answer(_REQ, 400, "required", "a value without its unit"),
    _R.UNKNOWN_UNIT: Answer(_TABLE, 400, "code-invalid", "a unit the template does not know"),
    _R.IMPLAUSIBLE_VALUE: Answer(_TYPE, 400, "value", "a value outside the template's plausible range"),
    _R.MISSING_DEVICE: Answer(_REQ, 400, "required", "a reading without its device id"),
    _R.MISSING_PATIENT: Answer(_REQ, 400, "required", "a reading without its patient"),
    _R.NO_OBSERVATION: Answer(_REQ, 400, "required", "the template read no observation"),
    _R.UNKNOWN_DEVICE: Answer(HL7_UNKNOWN_KEY, 422, "not-found", "a device the registry does not know"),
    _R.UNLINKED_DEVICE: Answer(
        HL7_UNKNOWN_KEY, 422, "not-found", "a device linked to no patient at the reading's time"
    ),
    _R.DEVICE_NOT_BOUND: Answer(
        _INTERNAL,
        403,
        "forbidden",
        "a reading of a device this sender is not linked to at the reading's time",
    ),
    _R.FHIR_UNUSABLE_RESOURCE: Answer(
        _REQ, 422, "required", "a pulled resource without id or version, or a line that is not JSON"
    ),
    _R.UNDECODABLE_CANONICAL: Answer(_INTERNAL, 422, "processing", "the canonical record cannot be decoded"),
    _R.NOT_CANONICAL: Answer(_INTERNAL, 422, "invalid", "a record that is not a canonical event"),
    _R.IDENTITY_MISSING: Answer(_REQ, 422, "required", "a canonical record without a patient identity"),
    _R.NATIONAL_TRANSFORM: Answer(_INTERNAL, 422, "processing", "the destination's policy cannot apply"),
    _R.NATIONAL_SCHEMA: Answer(
        _INTERNAL, 422, "processing", "the national record does not fit its registered schema"
    ),
}


class Refused(ValueError):
    """A rule an input breaks, with its reason. Text holds positions and rules only, never values.

    The one exception type the pure layers raise for bad input: normalize's mappers (``MappingError``),
    the FHIR door's checks and the device templates all refuse through it, so each refusal carries a
    :class:`ReasonCode` however it surfaces.
    """

    def __init__(self, code: ReasonCode, reason: str = "", location: str = "", rule: str = "") -> None:
        code = ReasonCode(code)  # a string outside the vocabulary fails here, at once
        reason = reason or code.text
        super().__init__(reason)
        self.code, self.reason, self.location, self.rule = code, reason, location, rule
