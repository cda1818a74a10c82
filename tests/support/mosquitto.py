"""The MQTT tests' broker: :mod:`affluent.local.mosquitto` (the demo starts the same one)."""

from affluent.local.mosquitto import BrokerTls, Mosquitto, free_port, write_password_file

__all__ = ["BrokerTls", "Mosquitto", "free_port", "write_password_file"]
