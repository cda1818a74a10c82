"""``affluent risk-report``'s reader on a real topic: national inca patient records, decoded through the
registry, assessed per patient."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from affluent.core.kafka import producer_config
from schemas.registry import decode
from streams.pseudonymize.cli import read_window
from streams.pseudonymize.policy import load_policy
from streams.pseudonymize.risk import DEFAULT_QUASI_IDENTIFIERS, assess
from streams.pseudonymize.stage import national_headers
from streams.pseudonymize.transform import Feed
from tests.support import canonical_samples as cs

pytestmark = [pytest.mark.integration]


def test_risk_report_reads_a_window_and_counts_small_classes(
    settings, live_kafka, registry, new_topic
) -> None:
    keys = cs.load_test_keys()
    feed = Feed(load_policy("inca"), keys)
    header = national_headers(registry, [feed])["national.inca.patient.v1"]
    topic = new_topic("test.risk", partitions=2)
    producer = Producer(producer_config(live_kafka))
    # six women born in July 1984 (one class of 6), one man born 1950 (a class of 1), each sent twice
    births = [("female", "1984-07-23")] * 6 + [("male", "1950-01-02")]
    for i, (sex, birth) in enumerate(births):
        record = cs.sample("patient", patient=cs.patient_ref(ipp=f"R{i:06d}", ins=False, qualified=False))
        record["sex"], record["birth_date"] = sex, birth
        national = feed.apply("patient", record)
        assert national is not None
        for _ in range(2):
            producer.produce(topic, header + feed.encode(national), national.key.encode())
    assert producer.flush(10) == 0

    values = read_window(settings, topic, None)
    assert len(values) == 14
    report = assess((decode(registry, v) for v in values), "inca", DEFAULT_QUASI_IDENTIFIERS["inca"], k=5)
    assert (report.patients, report.classes, report.smallest_class) == (7, 2, 1)
    assert (report.patients_below_k, report.records_below_k) == (1, 2)
    assert sorted(read_window(settings, topic, since_hours=0.5)) == sorted(values)
