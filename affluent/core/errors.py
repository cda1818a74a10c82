"""The exception types of affluent.

Every error a user can meet carries a message written for an operator and never any message content:
these texts end up in logs, NAKs and HTTP answers, which must stay free of personal data.
"""

from __future__ import annotations


class AffluentError(Exception):
    """Base of every error affluent raises on purpose; the CLI prints these without a traceback."""


class ConfigError(AffluentError):
    """Settings are missing, malformed or contradictory."""


class StackError(AffluentError):
    """The local Kafka/registry stack could not be fetched, started, checked or stopped."""


class KafkaUnavailable(AffluentError):
    """Kafka did not acknowledge in time; the sender must get a negative answer, never an 'accepted'."""


class RegistryError(AffluentError):
    """The schema registry refused, could not be reached, or holds an incompatible schema."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or answered 5xx: transient. A stage waits and retries; it never
    dead-letters a record for it (the record is fine, the registry is away)."""


class SchemaError(AffluentError):
    """A record does not fit its Avro schema, or a payload is not in the Confluent wire format."""


class FhirSourceError(AffluentError):
    """A pulled FHIR server refused, kept failing past the retry bound, or answered outside the spec."""
