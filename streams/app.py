"""The faust-streaming application factory shared by the stream stages.

Values and keys are raw bytes on purpose: affluent encodes Avro itself (Confluent wire format through
the registry), so faust only moves bytes and never guesses a codec. Processing is at-least-once —
faust-streaming's exactly_once has open duplicate bugs — and correctness comes from deterministic
event ids. Topics are created by affluent (``auto.create.topics.enable`` is off on our brokers).
"""

from __future__ import annotations

from typing import Any

import faust

from affluent.settings import KafkaSettings


def broker_url(kafka: KafkaSettings) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(","))


def broker_credentials(kafka: KafkaSettings) -> Any:
    """faust/aiokafka credentials from the same settings the confluent clients use."""
    import ssl

    context: ssl.SSLContext | None = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None
        )
        if kafka.ssl_certificate_location and kafka.ssl_key_location:
            context.load_cert_chain(
                str(kafka.ssl_certificate_location),
                str(kafka.ssl_key_location),
                kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
            )
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def make_app(name: str, kafka: KafkaSettings, **conf: Any) -> faust.App:
    return faust.App(
        name,
        broker=broker_url(kafka),
        broker_credentials=broker_credentials(kafka),
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        topic_allow_declare=False,
        topic_partitions=kafka.default_partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        **conf,
    )
