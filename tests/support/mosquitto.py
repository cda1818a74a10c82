"""The MQTT tests' broker: :mod:`affluent.local.mosquitto` (the demo starts the same one)."""

from affluent.local.mosquitto import BrokerTls, Mosquitto, free_port

__all__ = ["BrokerTls", "Mosquitto", "free_port"]
