"""Every mistake is answered in one line (issue #22): ``affluent: error: <what>, <where>, <what to do>`` on
stderr, exit 2 for a wrong setting, argument or file and 3 for a dependency that is down, no traceback
(unless ``--debug``), and for a setting its name but never its value (it may be a secret).

Each case runs the real command in a subprocess (the honest test of "no traceback"), all of them at once;
none needs a broker: the dependencies that must be down are closed ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from affluent.cli import main
from affluent.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
KEY_FIXTURE = ROOT / "tests" / "fixtures" / "keys" / "test-keys.json"


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2
    says: tuple[str, ...] = ()  # must appear in the line
    hides: tuple[str, ...] = ()  # must not appear anywhere (a value given in a setting)


@dataclass(frozen=True)
class Places:
    tmp: Path
    busy: int  # a port something listens on
    closed: int  # a port nothing listens on


def cases(p: Places) -> dict[str, Case]:
    key = p.tmp / "tls.key"
    keys = p.tmp / "keys.json"
    missing = p.tmp / "no-such-cert.pem"
    return {
        # --- the cases of the issue
        "mllp port out of range": Case(("mllp", "--port", "70000"), says=("--port", "0 to 65535")),
        "door port in use": Case(
            ("mllp",),
            {"AFFLUENT_MLLP__PORT": str(p.busy)},
            says=(f"127.0.0.1:{p.busy}", "AFFLUENT_MLLP__PORT", "already in use"),
        ),
        "door port in use, given as an argument": Case(
            ("devices", "serve", "--port", str(p.busy)),
            says=(f"127.0.0.1:{p.busy}", "--port", "already in use"),
        ),
        "door metrics port in use": Case(
            ("fhir", "--port", "0"),
            {"AFFLUENT_FHIR_REST__METRICS_PORT": str(p.busy)},
            says=("AFFLUENT_FHIR_REST__METRICS_PORT", "already in use"),
        ),
        "worker metrics port in use": Case(
            ("normalize",),
            {"AFFLUENT_STREAMS__METRICS_PORT": str(p.busy)},
            says=("AFFLUENT_STREAMS__METRICS_PORT",),
        ),
        "run with a door port in use": Case(
            ("run", "--only", "devices"),
            {"AFFLUENT_DEVICES__PORT": str(p.busy), "AFFLUENT_RUN__LOG_DIR": str(p.tmp / "run")},
            says=("AFFLUENT_DEVICES__PORT", "already in use"),
        ),
        "TLS certificate missing": Case(
            ("mllp",),
            {"AFFLUENT_MLLP__TLS_CERTIFICATE": str(missing), "AFFLUENT_MLLP__TLS_KEY": str(key)},
            says=("AFFLUENT_MLLP__TLS_CERTIFICATE", str(missing), "does not exist"),
        ),
        "FHIR TLS certificate missing": Case(
            ("fhir",),
            {"AFFLUENT_FHIR_REST__TLS_CERTIFICATE": str(missing), "AFFLUENT_FHIR_REST__TLS_KEY": str(key)},
            says=("AFFLUENT_FHIR_REST__TLS_CERTIFICATE", str(missing)),
        ),
        "token digests not JSON": Case(
            ("fhir",),
            {"AFFLUENT_FHIR_REST__TOKEN_SHA256": "notjson-s3cr3t"},
            says=("AFFLUENT_FHIR_REST__TOKEN_SHA256", "JSON object"),
            hides=("notjson-s3cr3t",),
        ),
        "tail with Kafka down": Case(
            ("tail", "ingest.hl7v2.raw", "--wait", "1"),
            {"AFFLUENT_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{p.closed}"},
            code=3,
            says=(f"127.0.0.1:{p.closed}", "AFFLUENT_KAFKA__BOOTSTRAP_SERVERS"),
        ),
        "link from yesterday": Case(
            ("devices", "link", "D1", "--ipp", "1", "--authority", "A", "--from", "yesterday"),
            says=("--from", "ISO 8601", "affluent devices link --help"),
        ),
        "simulate with no door": Case(
            ("simulate", "--port", str(p.closed), "--duration", "1"),
            {"AFFLUENT_PSEUDO_KEY_FILE": str(keys)},
            code=3,
            says=("MLLP door", f"127.0.0.1:{p.closed}", "--port"),
        ),
        "demo for a negative time": Case(("demo", "--duration", "-5"), says=("--duration", "above 0")),
        # --- more, found by trying every sub-command
        "no command": Case((), says=("required: command",)),
        "unknown command": Case(("nope",), says=("invalid choice",)),
        "log level": Case(("stack", "status"), {"AFFLUENT_LOG_LEVEL": "LOUD"}, says=("AFFLUENT_LOG_LEVEL",)),
        "settings file not a mapping": Case(
            ("topics", "create"), {"AFFLUENT_CONFIG": str(p.tmp / "text.yaml")}, says=("AFFLUENT_CONFIG",)
        ),
        "settings file with an unknown key": Case(
            ("topics", "create"), {"AFFLUENT_CONFIG": str(p.tmp / "extra.yaml")}, says=("AFFLUENT_NOPE",)
        ),
        "port not a number": Case(
            ("mllp",),
            {"AFFLUENT_MLLP__PORT": "port-s3cr3t"},
            says=("AFFLUENT_MLLP__PORT",),
            hides=("port-s3cr3t",),
        ),
        "protocol not one of its values": Case(
            ("topics", "create"),
            {"AFFLUENT_KAFKA__SECURITY_PROTOCOL": "proto-s3cr3t"},
            says=("AFFLUENT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
            hides=("proto-s3cr3t",),
        ),
        "SASL without credentials": Case(
            ("topics", "create"), {"AFFLUENT_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, says=("sasl_mechanism",)
        ),
        "device token not a digest": Case(
            ("devices", "serve"),
            {"AFFLUENT_DEVICES__TOKENS": '[{"sha256": "tok-s3cr3t", "sender": "GW"}]'},
            says=("AFFLUENT_DEVICES__TOKENS", "sha256"),
            hides=("tok-s3cr3t",),
        ),
        "objection tokens of the wrong type": Case(
            ("opposition", "serve"),
            {"AFFLUENT_OPPOSITION__TOKENS": '{"dpo-s3cr3t": 5}'},
            says=("AFFLUENT_OPPOSITION__TOKENS",),
            hides=("dpo-s3cr3t",),
        ),
        "message types not a JSON list": Case(
            ("mllp",),
            {"AFFLUENT_MLLP__ALLOWED_MESSAGE_TYPES": "ADT,ORU"},
            says=("AFFLUENT_MLLP__ALLOWED_MESSAGE_TYPES", "JSON list"),
        ),
        "registry URL not a URL": Case(
            ("schemas", "check"),
            {"AFFLUENT_REGISTRY__URL": "reg-s3cr3t"},
            says=("AFFLUENT_REGISTRY__URL", "http(s) URL"),
            hides=("reg-s3cr3t",),
        ),
        "key file missing": Case(
            ("pseudonymize",),
            {"AFFLUENT_PSEUDO_KEY_FILE": str(p.tmp / "none.json")},
            says=("AFFLUENT_PSEUDO_KEY_FILE",),
        ),
        "templates folder missing": Case(
            ("devices", "serve"),
            {"AFFLUENT_DEVICES__TEMPLATES_DIR": str(p.tmp / "none")},
            says=("AFFLUENT_DEVICES__TEMPLATES_DIR",),
        ),
        "JWKS file missing": Case(
            ("fhir",),
            {
                "AFFLUENT_FHIR_REST__JWT_JWKS_FILE": str(p.tmp / "jwks.json"),
                "AFFLUENT_FHIR_REST__JWT_ISSUER": "https://idp.test",
                "AFFLUENT_FHIR_REST__JWT_AUDIENCE": "affluent",
            },
            says=("AFFLUENT_FHIR_REST__JWT_JWKS_FILE",),
        ),
        "unlink at tomorrow": Case(
            ("devices", "unlink", "D1", "--at", "tomorrow"), says=("--at", "ISO 8601")
        ),
        "tail no records": Case(("tail", "ingest.hl7v2.raw", "--max", "0"), says=("--max",)),
        "simulate at no rate": Case(("simulate", "--rate", "0"), says=("--rate",)),
        "simulate with no senders": Case(("simulate", "--senders", "0"), says=("--senders",)),
        "simulate to a non-HTTP URL": Case(
            ("simulate", "--fhir-url", "ftp://eds"), says=("--fhir-url", "http(s)")
        ),
        "run an unknown component": Case(("run", "--only", "nope"), says=("unknown component", "mllp")),
        "run no component": Case(("run", "--only", ","), says=("--only",)),
        "device token for an unknown template": Case(
            ("devices", "token", "--sender", "GW", "--mapping", "nope"), says=("--mapping", "bp-single")
        ),
        "device token for nobody": Case(
            (
                "devices",
                "token",
            ),
            says=("--sender",),
        ),
        "objection token for a name the endpoint refuses": Case(
            ("opposition", "token", "dpo's tool"), says=("AFFLUENT_OPPOSITION__TOKENS", "principal names")
        ),
        "objection with a bad INS": Case(("opposition", "add", "--ins", "123"), says=("INS",)),
        "risk report of an unknown destination": Case(
            ("risk-report", "--destination", "nope"), says=("nope",)
        ),
    }


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Places]:
    tmp = tmp_path_factory.mktemp("one-line")
    (tmp / "tls.key").write_text("not a key, never read\n")
    (tmp / "tls.key").chmod(0o600)
    (tmp / "keys.json").write_bytes(KEY_FIXTURE.read_bytes())
    (tmp / "keys.json").chmod(0o600)
    (tmp / "text.yaml").write_text("just a sentence\n")
    (tmp / "extra.yaml").write_text("nope: 1\n")
    with socket.socket() as busy, socket.socket() as closed:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield Places(tmp, busy.getsockname()[1], closed.getsockname()[1])


# Every listener of every process on port 0 (any free one) unless a case says otherwise, so that a
# pipeline running on this machine on the default ports changes nothing.
QUIET = {
    "AFFLUENT_MLLP__PORT": "0",
    "AFFLUENT_FHIR_REST__PORT": "0",
    "AFFLUENT_DEVICES__PORT": "0",
    "AFFLUENT_OPPOSITION__PORT": "0",
    "AFFLUENT_MLLP__METRICS_PORT": "0",
    "AFFLUENT_FHIR_REST__METRICS_PORT": "0",
    "AFFLUENT_DEVICES__METRICS_PORT": "0",
    "AFFLUENT_STREAMS__METRICS_PORT": "0",
    "AFFLUENT_STREAMS__PSEUDONYMIZE_METRICS_PORT": "0",
    "AFFLUENT_RUN__METRICS_PORT": "0",
    "AFFLUENT_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",  # never reached by a case that expects exit 2
}


def run(argv: tuple[str, ...], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT_")}
    return subprocess.run(
        [sys.executable, "-m", "affluent.cli", *argv],
        env={**base, **QUIET, **env},
        cwd=cwd,  # no .env file from the repository
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def results(places: Places) -> dict[str, tuple[Case, subprocess.CompletedProcess[str]]]:
    table = cases(places)
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = {name: pool.submit(run, c.argv, c.env, places.tmp) for name, c in table.items()}
        return {name: (table[name], future.result()) for name, future in futures.items()}


NAMES = list(cases(Places(Path("/"), 1, 2)))


@pytest.mark.parametrize("name", NAMES)
def test_a_mistake_is_one_line_and_an_exit_code(
    name: str, results: dict[str, tuple[Case, subprocess.CompletedProcess[str]]]
) -> None:
    case, result = results[name]
    everything = result.stdout + result.stderr
    assert result.returncode == case.code, everything
    assert "Traceback" not in everything
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("affluent: error: ")
    for phrase in case.says:
        assert phrase in line, line
    for value in case.hides:
        assert value not in everything, everything


def test_debug_adds_the_traceback(places: Places) -> None:
    missing = places.tmp / "no-such-cert.pem"
    env = {
        "AFFLUENT_MLLP__TLS_CERTIFICATE": str(missing),
        "AFFLUENT_MLLP__TLS_KEY": str(places.tmp / "tls.key"),
    }
    result = run(("--debug", "mllp"), env, places.tmp)
    assert result.returncode == 2
    assert result.stderr.startswith("Traceback")
    assert result.stderr.splitlines()[-1].startswith("affluent: error: AFFLUENT_MLLP__TLS_CERTIFICATE")


# --- token sub-commands print a line that is the setting --------------------------------------------


def _paste(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a shell does with the printed line: one ``NAME=value`` word, exported."""
    (word,) = shlex.split(line)
    name, _, value = word.partition("=")
    monkeypatch.setenv(name, value)


def test_devices_token_prints_the_setting_to_paste(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("affluent.audit_cli.record_now", lambda *a, **k: None)  # the token_created entry
    assert main(["devices", "token", "--sender", "GW-0042", "--mapping", "gateway-batch"]) == 0
    first, setting = capsys.readouterr().out.splitlines()
    token = first.rsplit(" ", 1)[1]
    assert setting.startswith("AFFLUENT_DEVICES__TOKENS=") and token not in setting
    _paste(setting, monkeypatch)
    (entry,) = load_settings().devices.tokens
    assert entry.sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert (entry.sender, entry.mappings) == ("GW-0042", ["gateway-batch"])


def test_opposition_token_prints_the_setting_to_paste(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from affluent.core.auth import StaticTokens

    principal = "dpo-chu@hospital.test"
    monkeypatch.setattr("affluent.audit_cli.record_now", lambda *a, **k: None)  # the token_created entry
    assert main(["opposition", "token", principal]) == 0
    first, setting = capsys.readouterr().out.splitlines()
    token = first.rsplit(" ", 1)[1]
    assert setting.startswith("AFFLUENT_OPPOSITION__TOKENS=") and token not in setting
    _paste(setting, monkeypatch)
    tokens = load_settings().opposition.tokens
    assert json.dumps(tokens) == json.dumps({principal: hashlib.sha256(token.encode()).hexdigest()})
    assert StaticTokens(tokens).principal(f"Bearer {token}") == principal
