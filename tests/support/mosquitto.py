"""The MQTT tests' broker: :mod:`affluent.mosquitto` (the demo starts the same one)."""

from affluent.mosquitto import BrokerTls, Mosquitto, free_port

__all__ = ["BrokerTls", "Mosquitto", "free_port"]
