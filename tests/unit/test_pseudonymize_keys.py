"""Key providers: where keys come from, rotation, and secrets that never show up in any text."""

from __future__ import annotations

import base64
import hmac
import json
import pickle

import pytest

from affluent.core.errors import ConfigError
from streams.pseudonymize import Feed, load_policy
from streams.pseudonymize.keys import (
    ENV_PREFIX,
    FirstOf,
    Key,
    KeyConfigError,
    StaticKeyProvider,
    env_provider,
    file_provider,
    require_key,
)
from tests.support.canonical_samples import TEST_KEYS_PATH, load_test_keys

SECRET = b"TEST-ONLY-NOT-A-SECRET/unit/keys/0123456789abcdef"
SECRET_B64 = base64.b64encode(SECRET).decode()


def _texts(obj: object) -> str:
    return f"{obj!r} {obj!s}"


def _write(tmp_path, data) -> str:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------ Key


def test_key_mac_is_hmac_sha256():
    key = Key("k1", SECRET, "hdh")
    for message in (b"", b"patient\x1fINS|284072505631127", b"x" * 500):
        assert key.mac(message) == hmac.digest(SECRET, message, "sha256")


def test_a_key_longer_than_the_hash_block_is_hashed_first_like_hmac_does():
    long_secret = SECRET * 3
    assert Key("k1", long_secret).mac(b"m") == hmac.digest(long_secret, b"m", "sha256")


def test_key_repr_and_str_hide_the_secret():
    key = Key("k1", SECRET, "hdh")
    text = _texts(key)
    assert "k1" in text and "hdh" in text and "redacted" in text
    assert SECRET.decode() not in text and SECRET_B64 not in text and repr(SECRET) not in text


def test_keys_cannot_be_pickled():
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Key("k1", SECRET))


@pytest.mark.parametrize("key_id", ["", "has space", "a:b", "é", "x" * 65])
def test_key_ids_are_restricted_because_they_prefix_pseudonyms(key_id):
    with pytest.raises(KeyConfigError, match="key id"):
        Key(key_id, SECRET, "hdh")


def test_short_secrets_are_refused_without_showing_them():
    with pytest.raises(KeyConfigError, match="shorter than 32 bytes") as info:
        Key("k1", b"short-secret", "hdh")
    assert "short-secret" not in str(info.value)


# ------------------------------------------------------------------ file provider


def test_the_test_key_file_is_obviously_test_only():
    data = json.loads(TEST_KEYS_PATH.read_text(encoding="utf-8"))
    for destination, ring in data.items():
        if destination.startswith("_"):
            assert "TEST ONLY" in ring
            continue
        for entry in ring:
            assert entry["key_id"].startswith("TEST-ONLY-NOT-A-SECRET-")
            assert base64.b64decode(entry["secret"]).startswith(b"TEST-ONLY-NOT-A-SECRET/")


def test_file_provider_gives_the_active_key_and_keeps_retired_ones_by_id():
    keys = load_test_keys()
    current = keys.current("hdh")
    assert current.key_id == "TEST-ONLY-NOT-A-SECRET-hdh-k2"
    assert keys.by_id("hdh", "TEST-ONLY-NOT-A-SECRET-hdh-k1").key_id.endswith("hdh-k1")
    assert [k.key_id for k in keys.all("hdh")] == [
        "TEST-ONLY-NOT-A-SECRET-hdh-k2",
        "TEST-ONLY-NOT-A-SECRET-hdh-k1",
    ]
    assert keys.current("inca").destination == "inca"


def test_file_provider_repr_lists_ids_not_secrets():
    keys = load_test_keys()
    text = repr(keys)
    assert "TEST-ONLY-NOT-A-SECRET-hdh-k2" in text
    data = json.loads(TEST_KEYS_PATH.read_text(encoding="utf-8"))
    assert all(
        entry["secret"] not in text for ring in data.values() if isinstance(ring, list) for entry in ring
    )


def test_unknown_destination_and_unknown_key_id_name_what_is_missing():
    keys = load_test_keys()
    with pytest.raises(KeyConfigError, match="no pseudonymization key for destination snds"):
        keys.current("snds")
    with pytest.raises(KeyConfigError, match="destination hdh has no key with id k9"):
        keys.by_id("hdh", "k9")


@pytest.mark.parametrize(
    ("ring", "problem"),
    [
        (
            [
                {"key_id": "a", "secret": SECRET_B64, "active": True},
                {"key_id": "b", "secret": SECRET_B64, "active": True},
            ],
            "exactly one active key, has 2",
        ),
        ([{"key_id": "a", "secret": SECRET_B64, "active": False}], "exactly one active key, has 0"),
        ([], "at least one key"),
        ([{"secret": SECRET_B64, "active": True}], "key #1 has no key_id"),
        ([{"key_id": "a", "secret": SECRET_B64, "active": "yes"}], "active must be true/false"),
        ([{"key_id": "a", "secret": SECRET_B64, "active": True, "algo": "md5"}], "unknown entries"),
        (
            [{"key_id": "a", "secret": SECRET_B64, "active": True}, {"key_id": "a", "secret": SECRET_B64}],
            "lists a key id twice",
        ),
    ],
)
def test_file_provider_refuses_ambiguous_or_malformed_rings(tmp_path, ring, problem):
    with pytest.raises(KeyConfigError, match=problem) as info:
        file_provider(_write(tmp_path, {"hdh": ring}))
    assert "hdh" in str(info.value)
    assert SECRET_B64 not in str(info.value) and SECRET.decode() not in str(info.value)


def test_a_bad_secret_is_reported_by_destination_and_key_id_only(tmp_path):
    bad = "not base64 !!! TEST-ONLY-NOT-A-SECRET"
    with pytest.raises(KeyConfigError) as info:
        file_provider(_write(tmp_path, {"hdh": [{"key_id": "k1", "secret": bad, "active": True}]}))
    text = str(info.value)
    assert "hdh" in text and "k1" in text and "not valid base64" in text
    assert bad not in text and "!!!" not in text


def test_unreadable_or_invalid_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        file_provider(tmp_path / "missing.json")
    path = tmp_path / "broken.json"
    path.write_text('{"hdh": [{"secret": "' + SECRET_B64, encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        file_provider(path)
    assert SECRET_B64 not in str(info.value)


def test_destination_names_are_topic_safe(tmp_path):
    with pytest.raises(KeyConfigError, match="destination names"):
        file_provider(_write(tmp_path, {"HDH!": [{"key_id": "a", "secret": SECRET_B64, "active": True}]}))


# ------------------------------------------------------------------ environment provider


def test_env_provider_reads_current_then_retired_keys():
    other = base64.b64encode(SECRET[::-1]).decode()
    keys = env_provider(
        {
            f"{ENV_PREFIX}HDH": f"k2:{SECRET_B64}, k1:{other}",
            "PATH": "/usr/bin",
            f"{ENV_PREFIX}SNDS_X": f"s1:{SECRET_B64}",
        }
    )
    assert keys.current("hdh").key_id == "k2" and keys.current("hdh").secret == SECRET
    assert keys.by_id("hdh", "k1").secret == SECRET[::-1]
    assert keys.current("snds_x").key_id == "s1"
    assert SECRET_B64 not in repr(keys)


@pytest.mark.parametrize(
    "value", ["no-colon-here", ":" + SECRET_B64, "k1:###", "k1:" + base64.b64encode(b"short").decode()]
)
def test_env_provider_errors_name_the_variable_never_the_secret(value):
    with pytest.raises(KeyConfigError) as info:
        env_provider({f"{ENV_PREFIX}HDH": value})
    text = str(info.value)
    assert "HDH" in text or "hdh" in text
    assert SECRET_B64 not in text and "###" not in text


def test_first_of_lets_the_environment_override_the_file_per_destination():
    env = env_provider({f"{ENV_PREFIX}HDH": f"env-k:{SECRET_B64}"})
    keys = FirstOf(env, load_test_keys())
    assert keys.current("hdh").key_id == "env-k"
    assert [k.key_id for k in keys.all("hdh")] == ["env-k"]  # never merged across providers
    assert keys.current("inca").key_id.startswith("TEST-ONLY")
    assert keys.by_id("inca", "TEST-ONLY-NOT-A-SECRET-inca-k1")
    with pytest.raises(KeyConfigError, match="destination snds in any key provider"):
        keys.current("snds")


def test_static_provider_is_the_seam_for_kms_providers():
    ring = StaticKeyProvider({"hdh": [Key("kms-1", SECRET, "hdh")]}, "kms")
    assert ring.current("hdh").key_id == "kms-1"
    assert ring.destinations() == ("hdh",)


# ------------------------------------------------------------------ refusing to build a feed


def test_require_key_names_the_destination():
    with pytest.raises(KeyConfigError, match="cannot build the national feed for destination hdh"):
        require_key(StaticKeyProvider({}), "hdh")


def test_a_feed_is_not_built_without_a_key_for_its_destination():
    keys = StaticKeyProvider({"hdh": [Key("k", SECRET, "hdh")]})
    Feed(load_policy("hdh"), keys)  # fine
    with pytest.raises(KeyConfigError) as info:
        Feed(load_policy("inca"), keys)
    assert "destination inca" in str(info.value)
    assert SECRET.decode() not in str(info.value)
