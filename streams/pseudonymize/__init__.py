"""The national feed's pure core: keys, keyed pseudonyms, declarative policies and the transform (design §6).

No Kafka here. The worker builds one :class:`Feed` per destination at start-up (which fails if the
destination has no key), drops events of objecting patients with :func:`is_opposed`, and produces what
:meth:`Feed.apply` returns, encoded with the national schema of its topic. See docs/pseudonymization.md.
"""

from __future__ import annotations

from streams.pseudonymize.keys import (
    FirstOf,
    Key,
    KeyConfigError,
    KeyProvider,
    StaticKeyProvider,
    env_provider,
    file_provider,
    require_key,
)
from streams.pseudonymize.opposition import is_opposed, opposition_key, opposition_keys, withheld
from streams.pseudonymize.policy import Policy, PolicyError, load_policy, parse_policy
from streams.pseudonymize.pseudonym import (
    OPPOSITION_KEYRING,
    PatientIdentity,
    chain,
    date_shift_days,
    national_event_id,
    patient_identity,
    pseudonym,
)
from streams.pseudonymize.transform import Feed, NationalRecord, TransformError, apply, build_feed

__all__ = [
    "OPPOSITION_KEYRING",
    "Feed",
    "FirstOf",
    "Key",
    "KeyConfigError",
    "KeyProvider",
    "NationalRecord",
    "PatientIdentity",
    "Policy",
    "PolicyError",
    "StaticKeyProvider",
    "TransformError",
    "apply",
    "build_feed",
    "chain",
    "date_shift_days",
    "env_provider",
    "file_provider",
    "is_opposed",
    "load_policy",
    "national_event_id",
    "opposition_key",
    "opposition_keys",
    "parse_policy",
    "patient_identity",
    "pseudonym",
    "require_key",
    "withheld",
]
