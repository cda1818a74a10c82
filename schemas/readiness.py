"""What "ready" means for a process that reads or writes registered records: Kafka and the registry answer.

The check of the registry lives here, above :mod:`affluent.core.telemetry`, so that the floor knows
nothing of schemas: telemetry runs whatever checks it is handed.
"""

from __future__ import annotations

from affluent.core.settings import KafkaSettings, RegistrySettings
from affluent.core.telemetry import CHECK_TIMEOUT_S, Check, Readiness, kafka_check
from schemas.registry import Registry


def registry_check(registry: RegistrySettings, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """The schema registry lists its subjects (Apicurio's own readiness call, docs/design.md)."""
    client = Registry(registry.model_copy(update={"timeout_s": timeout_s}))
    return client.subjects


def dependencies(kafka: KafkaSettings, registry: RegistrySettings) -> Readiness:
    """The readiness every affluent process has: Kafka and the schema registry."""
    return Readiness({"kafka": kafka_check(kafka), "registry": registry_check(registry)})
