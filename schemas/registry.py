"""Schema registry access and the Confluent Avro wire format.

confluent-kafka's ``SchemaRegistryClient`` speaks the registry's REST API (subjects, ids,
compatibility); fastavro does the encoding, which is several times faster than going through
confluent's serializer objects. The wire format is the Confluent one (magic byte 0, 4-byte
big-endian schema id, Avro binary body) so any Confluent-compatible consumer can read our topics.

Error texts name schemas, subjects and fields, never values: a failing record may hold patient data.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from affluent.core.errors import RegistryError, RegistryUnavailable, SchemaError
from affluent.core.settings import RegistrySettings
from schemas.fastreader import compile_reader
from schemas.fastwriter import NotCompilable, compile_writer

log = logging.getLogger(__name__)

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
COMPATIBILITY_LEVELS = frozenset(
    {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"}
)


@cache
def load_schema(name: str) -> str:
    """The text of ``schemas/avro/<name>.avsc`` shipped with the package."""
    try:
        return resources.files("schemas").joinpath("avro", f"{name}.avsc").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(f"no schema named {name} in schemas/avro") from None


def parse_schema(schema_text: str) -> Any:
    try:
        return fastavro.parse_schema(json.loads(schema_text))
    except (ValueError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"invalid Avro schema: {exc}") from None


class Registry:
    """A thin, typed façade over SchemaRegistryClient with the errors affluent needs."""

    def __init__(self, settings: RegistrySettings) -> None:
        conf: dict[str, Any] = {"url": settings.url, "timeout": settings.timeout_s}
        if settings.basic_auth_user and settings.basic_auth_password:
            conf["basic.auth.user.info"] = (
                f"{settings.basic_auth_user}:{settings.basic_auth_password.get_secret_value()}"
            )
        if settings.ssl_ca_location:
            conf["ssl.ca.location"] = str(settings.ssl_ca_location)
        self.url = settings.url
        self.client = SchemaRegistryClient(conf)
        self._writer_schemas: dict[int, Any] = {}
        self._readers: dict[int, Callable[[bytes, int], Any] | None] = {}

    def register(self, subject: str, schema_text: str, compatibility: str | None = None) -> int:
        """Register (or find) a schema under a subject and return its id; optionally pin compatibility.

        Compatibility is set before registering so that the very first version is already guarded.
        """
        if compatibility is not None:
            self.set_compatibility(subject, compatibility)
        try:
            return int(self.client.register_schema(subject, Schema(schema_text, "AVRO")))
        except SchemaRegistryError as exc:
            raise RegistryError(
                f"registry refused a schema for subject {subject}: HTTP {exc.http_status_code} "
                f"{exc.error_message}"
            ) from None
        except Exception as exc:  # requests/httpx transport errors differ between client versions
            raise self._unreachable(exc) from None

    def set_compatibility(self, subject: str, level: str) -> None:
        if level not in COMPATIBILITY_LEVELS:
            raise RegistryError(f"unknown compatibility level {level}")
        try:
            self.client.set_compatibility(subject_name=subject, level=level)
        except SchemaRegistryError as exc:
            raise RegistryError(f"cannot set compatibility of {subject}: {exc.error_message}") from None
        except Exception as exc:
            raise self._unreachable(exc) from None

    def get_compatibility(self, subject: str) -> str | None:
        try:
            return str(self.client.get_compatibility(subject_name=subject))
        except SchemaRegistryError:
            return None

    def is_compatible(self, subject: str, schema_text: str) -> bool:
        """Would the registry accept this schema as the next version of the subject?"""
        try:
            return bool(self.client.test_compatibility(subject, Schema(schema_text, "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return True  # a new subject accepts any first version
            raise RegistryError(f"compatibility check of {subject} failed: {exc.error_message}") from None

    def has_subject(self, subject: str) -> bool:
        """Asked per subject rather than by listing: a registry's subject list may be capped (Apicurio's
        Confluent API stops at 1,000 subjects and ignores paging), so absence from it proves nothing."""
        try:
            self.client.get_latest_version(subject)
            return True
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return False
            raise self._failure(exc, f"registry refused to look up subject {subject}") from None
        except Exception as exc:
            raise self._unreachable(exc) from None

    def subjects(self) -> list[str]:
        """Every subject the registry lists — possibly capped (see :meth:`has_subject`)."""
        try:
            return list(self.client.get_subjects())
        except Exception as exc:
            raise self._failure(exc, "registry refused to list subjects") from None

    def _unreachable(self, exc: Exception) -> RegistryUnavailable:
        return RegistryUnavailable(f"schema registry at {self.url} unreachable: {type(exc).__name__}")

    def _failure(self, exc: Exception, refused: str) -> RegistryError:
        """A 4xx answer is a real refusal (unknown id, bad credentials); anything else — no answer, a
        5xx — is the registry being away, which says nothing about the record or the request."""
        status = exc.http_status_code if isinstance(exc, SchemaRegistryError) else None
        if status is not None and 400 <= status < 500:
            return RegistryError(f"{refused}: HTTP {status} {getattr(exc, 'error_message', '')}")
        return self._unreachable(exc)

    def wait_until_reachable(self, pause_max_s: float = 10.0) -> None:
        """Block until the registry answers. A worker started while the registry is away waits here
        instead of exiting, so a registry outage never turns into a crash loop; anything but
        unreachability (a 401, a bad URL scheme) still fails the start at once."""
        pause = 0.5
        while True:
            try:
                self.subjects()
                return
            except RegistryUnavailable:
                log.warning("schema registry at %s unreachable; waiting", self.url)
                time.sleep(pause)
                pause = min(pause_max_s, pause * 2)

    def writer_schema(self, schema_id: int) -> Any:
        """The parsed schema behind an id, cached: ids are immutable, so one lookup per id is enough."""
        parsed = self._writer_schemas.get(schema_id)
        if parsed is None:
            try:
                schema = self.client.get_schema(schema_id)
            except Exception as exc:  # away (transport, 5xx): the record may well be fine
                raise self._failure(exc, f"unknown schema id {schema_id}") from None
            parsed = parse_schema(schema.schema_str or "")
            try:
                self._readers[schema_id] = compile_reader(json.loads(schema.schema_str or ""))
            except NotCompilable:
                self._readers[schema_id] = None
            self._writer_schemas[schema_id] = parsed
        return parsed

    def compiled_reader(self, schema_id: int) -> Callable[[bytes, int], Any] | None:
        """The generated reader of a writer schema (:mod:`schemas.fastreader`), None if not compilable."""
        if schema_id not in self._readers:
            self.writer_schema(schema_id)
        return self._readers.get(schema_id)


class AvroCodec:
    """Encode one kind of record for one subject, decode any record of the registry.

    The schema is registered once when the codec is built (auto-registration is what a producer of a
    new schema version does first; compatibility rules in the registry decide whether it may).
    """

    def __init__(
        self,
        registry: Registry,
        subject: str,
        schema_text: str,
        compatibility: str | None = None,
    ) -> None:
        self.registry = registry
        self.subject = subject
        self.schema = parse_schema(schema_text)
        self.schema_name = str(self.schema.get("name", "?"))
        try:
            self._fast: Callable[[dict[str, Any]], bytes] | None = compile_writer(json.loads(schema_text))
        except NotCompilable:
            self._fast = None
        self.schema_id = registry.register(subject, schema_text, compatibility)
        self._header = _HEADER.pack(MAGIC_BYTE, self.schema_id)

    def encode(self, record: dict[str, Any]) -> bytes:
        if self._fast is not None:
            try:
                return self._header + self._fast(record)
            except (TypeError, KeyError, ValueError, AttributeError, OverflowError, IndexError):
                pass  # fastavro decides: it applies defaults or reports the field at fault
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise SchemaError(f"record does not fit schema {self.schema_name}: {_field_hint(exc)}") from None
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        return decode(self.registry, data, self.schema)


def decode(registry: Registry, data: bytes, reader_schema: Any = None) -> dict[str, Any]:
    """Decode a Confluent-framed Avro value with its writer schema (fetched by id, cached)."""
    if len(data) < _HEADER.size:
        raise SchemaError(f"value of {len(data)} bytes is too short for the Confluent wire format")
    magic, schema_id = _HEADER.unpack_from(data)
    if magic != MAGIC_BYTE:
        raise SchemaError(f"value does not start with the Confluent magic byte (found {magic})")
    if reader_schema is None:
        fast = registry.compiled_reader(schema_id)
        if fast is not None:
            try:
                value = fast(data, _HEADER.size)
                if isinstance(value, dict):
                    return value
            except (ValueError, IndexError, TypeError, KeyError, OverflowError, struct.error):
                pass  # fastavro decides: it decodes the value or reports what is wrong with it
    writer = registry.writer_schema(schema_id)
    try:
        record = fastavro.schemaless_reader(io.BytesIO(data[_HEADER.size :]), writer, reader_schema)
    except (ValueError, TypeError, EOFError, IndexError, StopIteration) as exc:
        raise SchemaError(f"cannot decode value with schema id {schema_id}: {type(exc).__name__}") from None
    if not isinstance(record, dict):
        raise SchemaError(f"schema id {schema_id} does not describe a record")
    return record


def _field_hint(exc: Exception) -> str:
    """Keep the field name fastavro complains about, drop the offending value (it may be personal data)."""
    text = str(exc)
    if isinstance(exc, KeyError):
        return f"missing field {text}"
    if text.startswith("no value and no default for "):
        return f"missing field {text.rsplit(' ', 1)[-1]}"
    for marker in ("on field ", "field "):
        if marker in text:
            name = text.split(marker, 1)[1].split()[0].strip("'\"`,:")
            return f"bad value for field {name}"
    return type(exc).__name__
