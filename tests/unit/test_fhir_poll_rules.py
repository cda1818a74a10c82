"""Pure rules of the FHIR puller: raw records, checkpoints at the _lastUpdated boundary, back-off,
sources file, SMART client assertions, and that a pulled record is what the normalize stage maps."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from affluent.core.errors import ConfigError
from connectors.fhir_poll.auth import client_assertion
from connectors.fhir_poll.checkpoint import MAX_BOUNDARY_KEYS, Checkpoint
from connectors.fhir_poll.config import SmartAuth, SourceConfig, parse_sources
from connectors.fhir_poll.http import RetryPolicy, backoff_s, retry_after_s
from connectors.fhir_poll.records import (
    BadResource,
    bundle_resources,
    ndjson_lines,
    next_link,
    pulled,
    search_params,
    sort_out,
    version_key,
)
from streams.normalize.envelope import RawContext
from streams.normalize.fhir import map_fhir
from streams.normalize.options import MappingOptions
from tests.support.fhir_server import synthetic_observation, synthetic_patient

SOURCE = SourceConfig(name="eds-test", base_url="http://127.0.0.1:1/fhir", facility="CHU-TEST")


def resource(rid: str, last_updated: str, version: str | None = "1") -> dict[str, object]:
    meta: dict[str, str] = {"lastUpdated": last_updated}
    if version:
        meta["versionId"] = version
    return {"resourceType": "Patient", "id": rid, "meta": meta}


def test_message_id_and_raw_id_follow_the_version():
    first = pulled(resource("p1", "2026-03-01T08:00:00Z"), SOURCE, "search").message
    again = pulled(resource("p1", "2026-03-01T08:00:00Z"), SOURCE, "bulk").message
    newer = pulled(resource("p1", "2026-03-02T08:00:00Z", "2"), SOURCE, "search").message
    assert first.message_id == "Patient/p1/_history/1"
    assert (first.protocol, first.connector, first.facility, first.application) == (
        "fhir",
        "fhir_poll",
        "CHU-TEST",
        "EDS-FHIR",
    )
    assert first.raw_id == again.raw_id  # a resumed page or a bulk re-export collapses
    assert newer.raw_id != first.raw_id
    assert version_key(resource("p1", "2026-03-01T08:00:00Z", None))[0] == (
        "Patient/p1/_history/2026-03-01T08:00:00Z"
    )
    with pytest.raises(BadResource):
        version_key({"resourceType": "Patient", "id": "p1"})
    with pytest.raises(BadResource):
        version_key({"resourceType": "Patient", "meta": {"versionId": "1"}})


def test_search_params_use_ge_sort_and_count():
    assert search_params(SOURCE, None) == {"_sort": "_lastUpdated", "_count": "100"}
    assert search_params(SOURCE, "2026-03-01T08:00:00Z")["_lastUpdated"] == "ge2026-03-01T08:00:00Z"


def marks(*items: tuple[str, str]) -> list[tuple[str, str]]:
    return [(ts, f"Patient/{rid}/_history/1") for ts, rid in items]


def test_checkpoint_keeps_the_boundary_instant_and_its_resources():
    t1, t2 = "2026-03-01T08:00:00.001Z", "2026-03-01T08:00:00.002Z"
    cp = Checkpoint().advance(marks((t1, "a"), (t2, "b"), (t2, "c")))
    assert cp.last_updated == t2
    # A resumed search (ge t2) sees b and c again: skipped; d shares t2 but is new: stored.
    seen = marks((t2, "b"), (t2, "c"), (t2, "d"))
    assert [cp.already_stored(m) for m in seen] == [True, True, False]
    # The same instant written with another offset is the same instant.
    assert cp.already_stored(("2026-03-01T09:00:00.002+01:00", "Patient/b/_history/1"))
    # Moving within the same instant accumulates; moving past it starts afresh.
    same = cp.advance(marks((t2, "d")))
    assert same.already_stored(seen[2]) and same.already_stored(seen[0])
    later = same.advance(marks(("2026-03-01T08:00:01Z", "e")))
    assert not later.already_stored(seen[0]) and len(later.boundary) == 1
    assert Checkpoint.from_bytes(later.to_bytes()) == later
    assert Checkpoint.from_bytes(None) == Checkpoint()


def test_checkpoint_never_moves_back_and_bounds_its_set():
    cp = Checkpoint().advance(marks(("2026-03-02T00:00:00Z", "a")))
    assert cp.advance(marks(("2026-03-01T00:00:00Z", "z"))) == cp
    crowd = Checkpoint().advance(
        marks(*[("2026-03-02T00:00:00Z", f"p{i}") for i in range(MAX_BOUNDARY_KEYS + 50)])
    )
    assert len(crowd.boundary) == MAX_BOUNDARY_KEYS
    assert len(crowd.to_bytes()) < 200_000  # well under Kafka's default message size


def test_bundle_paging_helpers():
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": "s"}, {"relation": "next", "url": "n"}],
        "entry": [
            {"resource": resource("a", "2026-03-01T00:00:00Z"), "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
            {"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}},
            {"resource": resource("b", "2026-03-01T00:00:00Z")},
        ],
    }
    assert next_link(bundle) == "n"
    assert next_link({"link": [{"relation": "self", "url": "s"}]}) is None
    assert [r["id"] for r in bundle_resources(bundle, "Patient")] == ["a", "b"]
    with pytest.raises(BadResource):
        list(bundle_resources({"resourceType": "OperationOutcome"}, "Patient"))


def test_ndjson_lines_keep_each_line_bytes_and_sort_out_the_unusable():
    body = (
        b'{"resourceType":"Patient","id":"a","meta":{"versionId":"1"}}\n\n{not json\n'
        b'{"resourceType":"Patient","meta":{"versionId":"1"}}\n[1]\n'
    )
    lines = list(ndjson_lines(body))
    assert [(r is not None, problem) for r, _, problem in lines] == [
        (True, ""),
        (False, "NDJSON line 3 is not JSON"),
        (True, ""),
        (False, "NDJSON line 5 is not a resource"),
    ]
    assert lines[0][1] == b'{"resourceType":"Patient","id":"a","meta":{"versionId":"1"}}'
    good, bad = sort_out(iter(lines), SOURCE, "bulk")
    assert [g.message.message_id for g in good] == ["Patient/a/_history/1"]
    assert good[0].message.payload == lines[0][1]  # the server's bytes, untouched
    assert [b.reason for b in bad] == [
        "NDJSON line 3 is not JSON",
        "resource without resourceType or id",
        "NDJSON line 5 is not a resource",
    ]
    assert bad[1].payload == b'{"resourceType":"Patient","meta":{"versionId":"1"}}'


def test_retry_after_and_backoff():
    now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Sun, 01 Mar 2026 08:00:30 GMT", now) == 30.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    policy = RetryPolicy(max_attempts=5, base_delay_s=0.5, max_delay_s=10.0)
    rng = random.Random(1)
    assert 7.0 <= backoff_s(1, 7.0, policy, rng) <= 7.5  # the server's wish is a floor
    assert backoff_s(1, 600.0, policy, rng) == 10.0  # but never past the bound
    waits = [backoff_s(attempt, None, policy, rng) for attempt in range(1, 9) for _ in range(20)]
    assert all(0 <= w <= 10.0 for w in waits) and len(set(waits)) > 100  # jittered


def test_sources_file_is_validated(tmp_path: Path):
    text = """
sources:
  - name: eds-chu
    base_url: https://eds.chu.example/fhir
    facility: CHU-EXEMPLE
    resource_types: [Patient, Observation]
    mode: bulk
    auth: {kind: smart, client_id: affluent, private_key_file: /etc/affluent/key.pem, algorithm: ES384}
"""
    sources = parse_sources(text)
    assert sources["eds-chu"].mode == "bulk"
    assert isinstance(sources["eds-chu"].auth, SmartAuth)
    with pytest.raises(ConfigError, match="auth"):
        parse_sources(text.replace("kind: smart", "kind: magic"))
    with pytest.raises(ConfigError, match="extra_params"):
        parse_sources(text + "    extra_params: {_count: '5'}\n")
    with pytest.raises(ConfigError, match="two sources"):
        parse_sources(text + text.split("sources:")[1])


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_client_assertion_is_accepted_by_a_verifier(algorithm: str):
    from tests.support.fhir_server import FhirTestServer

    key = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    auth = SmartAuth(
        kind="smart", client_id="affluent-test", private_key_file=Path("k.pem"), algorithm=algorithm
    )
    server = FhirTestServer(clients={"affluent-test": key.public_key()})
    now = datetime.now(UTC).timestamp()
    assertion = client_assertion(auth, key, "http://t/auth/token", now)
    assert server.check_assertion(assertion, "http://t/auth/token") is None
    assert server.check_assertion(assertion, "http://t/auth/token") == "jti reused"
    assert (
        server.check_assertion(client_assertion(auth, key, "http://t/auth/token", now), "http://x")
        == "wrong audience"
    )
    stale = client_assertion(auth, key, "http://t/auth/token", now - 3600)
    assert server.check_assertion(stale, "http://t/auth/token") == "bad exp"
    other = (
        rsa.generate_private_key(65537, 2048)
        if algorithm == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    forged = client_assertion(auth, other, "http://t/auth/token", now)
    assert server.check_assertion(forged, "http://t/auth/token") == "bad signature"


def test_pulled_records_are_mapped_by_the_normalize_stage():
    rng = random.Random(3)
    patient = {
        **synthetic_patient(1, rng),
        "id": "pat-1",
        "meta": {"versionId": "1", "lastUpdated": "2026-03-01T08:00:00Z"},
    }
    obs = {
        **synthetic_observation(2, rng, 2),
        "id": "obs-2",
        "meta": {"versionId": "4", "lastUpdated": "2026-03-01T08:00:01Z"},
    }
    for res, kind in ((patient, "patient"), (obs, "observation")):
        message = pulled(res, SOURCE, "search").message
        record = message.record(datetime.now(UTC) - timedelta(seconds=1))
        events = map_fhir(record["payload"], RawContext.from_raw(record), MappingOptions())
        assert [e.kind for e in events] == [kind]
        assert json.loads(record["payload"])["id"] == res["id"]


def test_pull_command_names_an_unknown_source_without_touching_kafka(tmp_path: Path, capsys):
    from affluent.cli import main

    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  - {name: eds-a, base_url: 'http://127.0.0.1:1/fhir', facility: CHU-A}\n")
    assert main(["pull", "eds-b", "--sources", str(sources)]) == 2
    err = capsys.readouterr().err
    assert "source eds-b is not in" in err and "(known: eds-a)" in err
    assert main(["pull", "eds-a", "--sources", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the FHIR sources file" in capsys.readouterr().err


async def test_byte_lines_keep_bytes_across_chunk_breaks():
    from connectors.fhir_poll.bulk import byte_lines

    body = '{"family":"Lefèvre"}\n{"given":"Zoé"}\n\n{"x":1}'.encode()

    async def chunks(size: int):
        for n in range(0, len(body), size):
            yield body[n : n + size]

    for size in (1, 3, 7, len(body)):
        assert [line async for line in byte_lines(chunks(size))] == body.split(b"\n")


def test_pending_export_round_trip_and_key():
    from connectors.fhir_poll.checkpoint import PendingExport, checkpoint_key, export_key

    pending = PendingExport("http://eds/bulkstatus/42", ("Patient", "Observation"), None)
    assert PendingExport.from_bytes(pending.to_bytes()) == pending
    assert PendingExport.from_bytes(None) is None
    assert export_key("eds") not in {checkpoint_key("eds", t) for t in ("Patient", "Observation")}
