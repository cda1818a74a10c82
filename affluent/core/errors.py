"""The exception types of affluent.

Every error a user can meet carries a message written for an operator and never any message content:
these texts end up in logs, NAKs and HTTP answers, which must stay free of personal data.
"""

from __future__ import annotations

# How the ``affluent`` command ends when it cannot do what it was asked (``affluent/cli.py`` maps every
# error to one line and one of these): a mistake of the caller (a setting, an argument, a file) that a
# restart cannot fix, or a dependency that is down (Kafka, the registry, a door), which a retry may.
# ``affluent run`` stops at once when a child ends with EXIT_CONFIG, and restarts it otherwise.
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


class AffluentError(Exception):
    """Base of every error affluent raises on purpose; the CLI prints these without a traceback."""


class Unavailable(AffluentError):
    """A dependency (Kafka, the schema registry, a door) did not answer: the CLI exits EXIT_UNAVAILABLE."""


class ConfigError(AffluentError):
    """Settings are missing, malformed or contradictory."""


class StackError(AffluentError):
    """The local Kafka/registry stack could not be fetched, started, checked or stopped."""


class KafkaUnavailable(Unavailable):
    """Kafka did not acknowledge in time; the sender must get a negative answer, never an 'accepted'."""


class RegistryError(AffluentError):
    """The schema registry refused, could not be reached, or holds an incompatible schema."""


class RegistryUnavailable(RegistryError, Unavailable):
    """The registry could not be reached or answered 5xx: transient. A stage waits and retries; it never
    dead-letters a record for it (the record is fine, the registry is away)."""


class SchemaError(AffluentError):
    """A record does not fit its Avro schema, or a payload is not in the Confluent wire format."""


class FhirSourceError(AffluentError):
    """A pulled FHIR server refused, kept failing past the retry bound, or answered outside the spec."""
