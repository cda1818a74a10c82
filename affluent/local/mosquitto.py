"""A local Mosquitto broker for the demo, the MQTT tests and benchmarks: own free port, generated config,
persistence on disk so that a restart keeps queued QoS 1 messages, as a production broker would be
configured. (Debian package ``mosquitto``; ``.ci/run`` installs it.)

With a password file and an ACL file it is configured as a production broker must be for the MQTT door
(docs/security.md): no anonymous client, and each gateway allowed to publish under its own topic level
only — the door takes the topic as the sender, so the broker is what makes a topic mean a gateway.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from affluent.local.procs import stop_run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener that requires client certificates, and optionally a password file."""

    ca: Path
    certificate: Path
    key: Path
    username: str | None = None
    password: str | None = None


def mosquitto_binary() -> str | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return binary if Path(binary).exists() else None


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file (salted hashes, ``mosquitto_passwd``) for ``users`` (name → password),
    readable by its owner only."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    path.chmod(0o600)
    for name, password in users.items():
        subprocess.run([tool, "-b", str(path), name, password], check=True, capture_output=True)
    return path


class Mosquitto:
    def __init__(
        self,
        folder: Path,
        tls: BrokerTls | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (Debian package 'mosquitto'; .ci/run installs it)")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        security = "allow_anonymous true\n"
        if tls is not None:
            security = (
                f"cafile {tls.ca}\ncertfile {tls.certificate}\nkeyfile {tls.key}\nrequire_certificate true\n"
            )
            if tls.username and tls.password:
                passwords = folder / "passwords"
                subprocess.run(
                    [
                        shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd",
                        "-b",
                        "-c",
                        str(passwords),
                        tls.username,
                        tls.password,
                    ],
                    check=True,
                    capture_output=True,
                )
                security += f"password_file {passwords}\nallow_anonymous false\n"
            else:
                security += "allow_anonymous true\n"
        if password_file is not None:
            security = security.replace("allow_anonymous true\n", "")
            security += f"password_file {password_file}\nallow_anonymous false\n"
        if acl_file is not None:
            security += f"acl_file {acl_file}\n"
        self.config.write_text(
            # Run as whoever runs the tests: started as root, mosquitto would switch to the user
            # "mosquitto" and could not read this folder (password file) nor write its persistence file.
            f"user {getpass.getuser()}\n"
            + f"listener {self.port} 127.0.0.1\n"
            + security
            + "persistence true\n"
            f"persistence_location {folder / 'data'}/\n"
            + "max_queued_messages 100000\n"
            + f"log_dest file {folder / 'mosquitto.log'}\n",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until the port accepts connections (a TCP connect; TLS is not needed for that)."""
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not open its port")

    def stop(self) -> None:
        """SIGTERM: mosquitto writes its persistence file (queued messages, sessions) before exiting."""
        if self.proc is not None:
            stop_run(self.proc, 10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
