"""Tests for MSH-18 character set handling (formats.hl7.charset)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats.hl7.charset import (
    Decoded,
    UnknownCharset,
    codec_for,
    decode,
    encode_for_reply,
    sniff_declared_charset,
)

BOM = b"\xef\xbb\xbf"
ACCENTS = "é è ç ï à ô"  # all in latin-1 and 8859-15
PID_TEXT = "PID|1||123^^^HOP||HÉLOÏSE^François^Zoë"  # É Ï ç ë


def msh(charset: str = "", sep: str = "|", enc: str = "^~\\&", term: str = "\r") -> bytes:
    """An MSH segment whose MSH-18 is ``charset`` (MSH-19 present so MSH-18 is not the last field)."""
    fields = [
        "MSH",
        enc,
        "SENDAPP",
        "SENDFAC",
        "RECAPP",
        "RECFAC",
        "20240101120000",
        "",
        "ADT^A01^ADT_A01",
        "MSG0001",
        "P",
        "2.5",
        "",
        "",
        "AL",
        "NE",
        "FRA",
        charset,
        "FRE",
    ]
    return (sep.join(fields[:1]) + sep + sep.join(fields[1:]) + term).encode("ascii")


def message(charset: str, body: bytes, term: str = "\r") -> bytes:
    return msh(charset, term=term) + body + term.encode("ascii")


# --- sniff_declared_charset --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "ASCII", "8859/1", "8859/15", "UNICODE UTF-8", "UNICODE", "UTF-8"])
def test_sniff_each_value(value: str) -> None:
    assert sniff_declared_charset(message(value, b"PID|1")) == value


@pytest.mark.parametrize("term", ["\r", "\n", "\r\n"])
def test_sniff_tolerates_segment_terminators(term: str) -> None:
    raw = message("8859/1", b"PID|1", term=term)
    assert sniff_declared_charset(raw) == "8859/1"


def test_sniff_last_field_without_terminator() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5|||AL|NE|FRA|UNICODE UTF-8"
    assert sniff_declared_charset(raw) == "UNICODE UTF-8"


def test_sniff_with_bom() -> None:
    assert sniff_declared_charset(BOM + message("UNICODE UTF-8", b"PID|1")) == "UNICODE UTF-8"


def test_sniff_after_leading_blank_lines() -> None:
    assert sniff_declared_charset(b"\r\n" + message("8859/15", b"")) == "8859/15"


def test_sniff_takes_first_repetition() -> None:
    assert sniff_declared_charset(message("UNICODE UTF-8~8859/1", b"")) == "UNICODE UTF-8"


def test_sniff_uses_declared_separators() -> None:
    raw = msh("8859/1", sep="#", enc="^!\\&") + b"PID#1\r"
    assert sniff_declared_charset(raw) == "8859/1"
    raw = msh("8859/1!UNICODE UTF-8", sep="#", enc="^!\\&")
    assert sniff_declared_charset(raw) == "8859/1"


def test_sniff_strips_whitespace() -> None:
    assert sniff_declared_charset(message(" 8859/1 ", b"")) == "8859/1"


def test_sniff_does_not_read_beyond_msh_segment() -> None:
    # MSH with too few fields; the 17th "|" item of the *next* segment must not be taken.
    raw = b"MSH|^~\\&|A|B\rOBX|" + b"|".join(b"x" for _ in range(20)) + b"|8859/1\r"
    assert sniff_declared_charset(raw) == ""


def test_sniff_msh18_absent_because_segment_is_short() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1\r"
    assert sniff_declared_charset(raw) == ""


@pytest.mark.parametrize(
    "raw",
    [b"", b"PID|1||123\r", b"MSH", b"MSH\r", b"garbage", BOM, b"XMSH|^~\\&|" + b"|" * 16 + b"UTF-8\r"],
)
def test_sniff_without_usable_msh(raw: bytes) -> None:
    assert sniff_declared_charset(raw) == ""


def test_sniff_ignores_msh_text_inside_a_field_but_finds_msh_segment_start() -> None:
    raw = b"\rMSH|^~\\&|" + b"|" * 15 + b"8859/15|FRE\r"
    assert sniff_declared_charset(raw) == "8859/15"
    raw = b"FHS|xMSH|foo\rMSH|^~\\&|" + b"|" * 15 + b"8859/1\r"
    assert sniff_declared_charset(raw) == "8859/1"


def test_sniff_does_not_decode_non_ascii_body() -> None:
    # Body bytes invalid in every multi-byte charset: only MSH is looked at.
    raw = message("UNICODE UTF-8", b"\xff\xfe\xc3" * 1000)
    assert sniff_declared_charset(raw) == "UNICODE UTF-8"


# --- codec_for ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "codec"),
    [
        ("", "ascii"),
        ("ASCII", "ascii"),
        ("8859/1", "latin-1"),
        ("8859/15", "iso8859-15"),
        ("UNICODE UTF-8", "utf-8"),
        ("UNICODE", "utf-8"),
        ("UTF-8", "utf-8"),
        ("ascii", "ascii"),
        ("  unicode   utf-8 ", "utf-8"),
        ("Unicode\tUTF-8", "utf-8"),
        ("utf-8", "utf-8"),
        (" 8859/15\n", "iso8859-15"),
        ("   ", "ascii"),
    ],
)
def test_codec_for_known(declared: str, codec: str) -> None:
    assert codec_for(declared) == codec


@pytest.mark.parametrize("declared", ["ISO IR100", "8859/2", "EBCDIC", "UTF-16", "latin-1", "8859/", "UTF8X"])
def test_codec_for_unknown(declared: str) -> None:
    assert codec_for(declared) is None


# --- decode: absent and ASCII declarations -----------------------------------------------------


def test_absent_declaration_pure_ascii() -> None:
    raw = message("", b"PID|1||123^^^HOP||DUPONT^JEAN")
    assert decode(raw) == Decoded(raw.decode("ascii"), "", "ascii", False)


def test_absent_declaration_latin1_bytes() -> None:
    raw = message("", PID_TEXT.encode("latin-1"))
    result = decode(raw)
    assert (result.codec, result.mismatch, result.declared) == ("latin-1", True, "")
    assert PID_TEXT in result.text


def test_absent_declaration_utf8_bytes() -> None:
    raw = message("", PID_TEXT.encode("utf-8"))
    result = decode(raw)
    assert (result.codec, result.mismatch) == ("utf-8", True)
    assert PID_TEXT in result.text


def test_absent_declaration_uses_default_codec() -> None:
    raw = message("", b"PID|1||\x80")  # 0x80 is EUR in cp1252, a C1 control in latin-1
    assert decode(raw).text.endswith("\x80\r")
    result = decode(raw, default_codec="cp1252")
    assert (result.codec, result.mismatch) == ("cp1252", True)
    assert result.text.endswith("€\r")


def test_default_codec_with_undefined_bytes_never_raises() -> None:
    raw = message("", b"PID|1||\x81")  # undefined in cp1252
    result = decode(raw, default_codec="cp1252")
    assert result.mismatch
    assert "\ufffd" in result.text


def test_declared_ascii_matching() -> None:
    raw = message("ASCII", b"PID|1||DUPONT")
    assert decode(raw) == Decoded(raw.decode("ascii"), "ASCII", "ascii", False)


def test_declared_ascii_with_latin1_bytes() -> None:
    raw = message("ASCII", ACCENTS.encode("latin-1"))
    result = decode(raw)
    assert (result.declared, result.codec, result.mismatch) == ("ASCII", "latin-1", True)
    assert ACCENTS in result.text


def test_declared_ascii_with_utf8_bytes() -> None:
    raw = message("ASCII", "Œuvre œ".encode())
    result = decode(raw)
    assert (result.codec, result.mismatch) == ("utf-8", True)
    assert "Œuvre œ" in result.text


# --- decode: 8859/1 and 8859/15 ----------------------------------------------------------------


def test_declared_8859_1_matching() -> None:
    raw = message("8859/1", PID_TEXT.encode("latin-1"))
    result = decode(raw)
    assert (result.declared, result.codec, result.mismatch) == ("8859/1", "latin-1", False)
    assert PID_TEXT in result.text


def test_declared_8859_1_pure_ascii_is_no_mismatch() -> None:
    assert decode(message("8859/1", b"PID|1")).mismatch is False


def test_declared_8859_1_with_utf8_bytes_is_mismatch_but_decoded_as_declared() -> None:
    raw = message("8859/1", "é".encode())  # b"\xc3\xa9"
    result = decode(raw)
    assert (result.codec, result.mismatch) == ("latin-1", True)
    assert "Ã©" in result.text  # never guessing against an explicit declaration


def test_declared_8859_1_invalid_utf8_high_bytes_no_mismatch() -> None:
    # Any isolated high byte is legitimate latin-1 and cannot be UTF-8.
    raw = message("8859/1", bytes(range(0xA0, 0x100)))
    result = decode(raw)
    assert result.mismatch is False
    assert bytes(range(0xA0, 0x100)).decode("latin-1") in result.text


def test_oe_ligature_8859_15_vs_8859_1() -> None:
    body = b"C\xbdur"  # "Cœur" in 8859-15
    assert "Cœur" in decode(message("8859/15", body)).text
    assert decode(message("8859/15", body)).mismatch is False
    assert "C½ur" in decode(message("8859/1", body)).text  # 0xBD is ½ in latin-1


def test_euro_sign_8859_15() -> None:
    result = decode(message("8859/15", "12 € - naïve".encode("iso8859-15")))
    assert (result.codec, result.mismatch) == ("iso8859-15", False)
    assert "12 € - naïve" in result.text


def test_declared_8859_15_with_utf8_bytes_is_mismatch() -> None:
    raw = message("8859/15", "Cœur".encode())
    result = decode(raw)
    assert (result.codec, result.mismatch) == ("iso8859-15", True)
    assert "Cœur" not in result.text


# --- decode: UTF-8 -----------------------------------------------------------------------------


@pytest.mark.parametrize("declared", ["UNICODE UTF-8", "UNICODE", "UTF-8", "unicode utf-8"])
def test_declared_utf8_matching(declared: str) -> None:
    text = "HÉLOÏSE^François^Cœur"
    result = decode(message(declared, text.encode()))
    assert (result.declared, result.codec, result.mismatch) == (declared, "utf-8", False)
    assert text in result.text


def test_declared_utf8_with_latin1_bytes_falls_back() -> None:
    raw = message("UNICODE UTF-8", PID_TEXT.encode("latin-1"))
    result = decode(raw)
    assert (result.codec, result.mismatch) == ("latin-1", True)
    assert PID_TEXT in result.text


# --- decode: BOM, terminators, no MSH, unknown charset ---------------------------------------


def test_bom_stripped_with_utf8_declaration() -> None:
    raw = BOM + message("UNICODE UTF-8", "é".encode())
    result = decode(raw)
    assert result.text.startswith("MSH|")
    assert (result.codec, result.mismatch) == ("utf-8", False)


def test_bom_contradicts_latin1_declaration() -> None:
    result = decode(BOM + message("8859/1", b"PID|1"))
    assert result.text.startswith("MSH|")
    assert (result.codec, result.mismatch) == ("latin-1", True)


def test_bom_without_declaration() -> None:
    result = decode(BOM + message("", b"PID|1"))
    assert result.text.startswith("MSH|")
    assert (result.codec, result.mismatch) == ("utf-8", True)


def test_crlf_message() -> None:
    raw = message("8859/1", "ç".encode("latin-1"), term="\r\n")
    result = decode(raw)
    assert (result.declared, result.codec, result.mismatch) == ("8859/1", "latin-1", False)
    assert result.text == raw.decode("latin-1")


def test_missing_msh() -> None:
    result = decode("PID|1||Zoë".encode("latin-1"))
    assert (result.declared, result.codec, result.mismatch) == ("", "latin-1", True)
    assert result.text == "PID|1||Zoë"


def test_empty_input() -> None:
    assert decode(b"") == Decoded("", "", "ascii", False)


def test_unknown_charset_raises() -> None:
    with pytest.raises(UnknownCharset) as info:
        decode(message("8859/2", b"PID|1"))
    assert isinstance(info.value, ValueError)
    assert info.value.declared == "8859/2"
    assert "8859/2" in str(info.value)


def test_unknown_charset_name_is_truncated() -> None:
    # A shifted field could put patient data into MSH-18: only 20 chars may reach the error.
    declared = "DUPONT^JEAN^1234567890123^SECRET"
    with pytest.raises(UnknownCharset) as info:
        decode(message(declared, b""))
    assert info.value.declared == declared[:20]
    assert "SECRET" not in str(info.value)
    assert "DUPONT^JEAN^12345678" in str(info.value)


# --- encode_for_reply --------------------------------------------------------------------------

ACK = "MSA|AE|1|Caractère non supporté: œ €"


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("8859/1", "MSA|AE|1|Caractère non supporté: ? ?".encode("latin-1")),
        ("8859/15", ACK.encode("iso8859-15")),
        ("UNICODE UTF-8", ACK.encode()),
        ("UNICODE", ACK.encode()),
        ("ASCII", b"MSA|AE|1|Caract?re non support?: ? ?"),
        ("", b"MSA|AE|1|Caract?re non support?: ? ?"),
        ("NOT-A-CHARSET", b"MSA|AE|1|Caract?re non support?: ? ?"),
    ],
)
def test_encode_for_reply(declared: str, expected: bytes) -> None:
    assert encode_for_reply(ACK, declared) == expected


def test_encode_for_reply_8859_15_oe() -> None:
    assert encode_for_reply("œ", "8859/15") == b"\xbd"
    assert encode_for_reply("œ", "8859/1") == b"?"


def test_encode_for_reply_lone_surrogate_never_raises() -> None:
    assert encode_for_reply("a\udcffb", "UNICODE UTF-8") == b"a?b"


# --- properties --------------------------------------------------------------------------------

KNOWN = ["", "ASCII", "8859/1", "8859/15", "UNICODE UTF-8", "UNICODE", "UTF-8"]


@settings(max_examples=300)
@given(declared=st.sampled_from(KNOWN), body=st.binary(max_size=200), bom=st.booleans())
def test_decode_never_raises_for_known_charsets(declared: str, body: bytes, bom: bool) -> None:
    raw = message(declared, body.replace(b"\r", b"").replace(b"\n", b""))
    result = decode((BOM if bom else b"") + raw)
    assert result.declared == declared
    assert result.codec in {"ascii", "latin-1", "iso8859-15", "utf-8"}
    assert result.text == raw.decode(result.codec)  # BOM stripped, nothing replaced or lost
    if not bom and raw.isascii():
        assert result.mismatch is False


@settings(max_examples=300)
@given(
    declared=st.sampled_from(["8859/1", "8859/15", "UNICODE UTF-8"]),
    text=st.text(alphabet="abcXYZ 0123^&éèàçïôùÉÈÇÀœŒ€", max_size=60),
)
def test_round_trip_when_declaration_is_truthful(declared: str, text: str) -> None:
    codec = codec_for(declared)
    assert codec is not None
    body = encode_for_reply(text, declared)
    expected = body.decode(codec)  # "?" where the charset cannot represent a character
    result = decode(msh(declared).decode("ascii").encode(codec) + body)
    assert result.text.endswith(expected)
    assert result.codec == codec
    if codec in {"utf-8", "latin-1"}:
        assert result.mismatch is False


def test_8859_15_heuristic_false_positive_is_flagged_but_decoded_as_declared() -> None:
    # "Éœ" in 8859-15 is C9 BD, which happens to be valid UTF-8 ("ɽ"): the mismatch heuristic fires,
    # but the declaration is still honoured, so the text is right.
    result = decode(message("8859/15", "Éœ".encode("iso8859-15")))
    assert result.mismatch is True
    assert "Éœ" in result.text
