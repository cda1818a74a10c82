"""affluent core: what every connector and stream shares (settings, errors, Kafka clients, CLI, stack)."""

__version__ = "0.1.0"
