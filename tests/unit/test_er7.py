"""Tests of the ER7 tokenizer: oracles (hl7apy, python-hl7) on the synthetic corpus, then units.

The corpus (tests/corpus/hl7) is synthetic: every name, NIR, IPP and RPPS number is invented.
Files are stored in the charset their MSH-18 declares, with CR segment separators, and are read
as bytes: ``Path.read_text`` would translate the CRs into LFs.
"""

from __future__ import annotations

import collections
import pickle
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from formats.hl7.er7 import (
    Delimiters,
    Er7Error,
    Message,
    Segment,
    escape,
    parse,
    unescape,
)

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "hl7"
CODECS = {"": "ascii", "ASCII": "ascii", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8"}
# python-hl7 maps some escapes differently from us by default; this aligns it with our documented
# choices (highlight markers removed, formatted-text line breaks as "\n", indentation dropped).
PYHL7_APP_MAP = {"H": "", "N": "", ".br": "\n", ".sp": "\n", ".ce": "\n", ".sk": " ", ".in": "", ".ti": ""}
_NAME_POSITION = re.compile(r"_(\d+)$")
CANARY = "ZORGLUBETTE"  # a "patient name" that must never leak into an error message


def decode_file(raw: bytes) -> str:
    """Decode per MSH-18: the MSH segment itself is ASCII in every charset of the corpus."""
    header = raw.split(b"\r", 1)[0].decode("latin-1")
    charsets = parse(header).charsets
    return raw.decode(CODECS[charsets[0] if charsets else ""])


@cache
def corpus() -> dict[str, str]:
    return {path.name: decode_file(path.read_bytes()) for path in sorted(CORPUS.glob("*.hl7"))}


def corpus_ids() -> list[str]:
    return list(corpus())


def leaves(seg: Segment) -> Iterator[tuple[int, int, int, int, str, str]]:
    """(field, rep, comp, sub, raw leaf, unescaped leaf) for every leaf, MSH-1/2 excluded."""
    sub_sep = seg._d.subcomponent
    first = 3 if seg.name == "MSH" else 1
    for n in range(first, len(seg) + 1):
        field = seg.field(n)
        assert field is not None
        for r, rep in enumerate(field.repetitions, 1):
            for c, comp in enumerate(rep.components, 1):
                for s, (raw, value) in enumerate(
                    zip(comp.raw.split(sub_sep), comp.subcomponents, strict=True), 1
                ):
                    yield n, r, c, s, raw, value


# --------------------------------------------------------------------------------------------
# Corpus sanity: it must cover what the brief asks, or the oracles prove little.


def test_corpus_covers_the_french_use_cases() -> None:
    messages = {name: parse(text) for name, text in corpus().items()}
    assert len(messages) >= 12
    events = {m.message_type[:2] for m in messages.values()}
    for wanted in [
        ("ADT", "A01"),
        ("ADT", "A03"),
        ("ADT", "A04"),
        ("ADT", "A08"),
        ("ADT", "A40"),
        ("ORU", "R01"),
    ]:
        assert wanted in events
    names = {seg.name for m in messages.values() for seg in m.segments}
    assert {"ZBE", "ZFD", "MRG", "OBX", "NTE", "PV1", "NK1"} <= names
    ins = [m for m in messages.values() if m.get("PID-3[1].5") == "INS" and m.get("PID-3[2].5") == "PI"]
    assert ins, "an INS next to an IPP in PID-3"
    assert ins[0].get("PID-3[1].4.2") == "1.2.250.1.213.1.4.8"
    assert {m.get("PID-32") for m in messages.values()} >= {"VALI", "PROV"}
    value_types = {m.get(f"OBX({i})-2") for m in messages.values() for i in range(1, 6)}
    assert {"NM", "ST", "CE", "FT"} <= value_types
    assert any(m.delimiters != Delimiters() for m in messages.values())
    charsets = {tuple(m.charsets) for m in messages.values()}
    assert {("8859/1",), ("UNICODE UTF-8",), ()} <= charsets
    wire = "".join(corpus().values())
    for sequence in ["\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\X0D", "\\.br\\", "\\H\\", "\\N\\"]:
        assert sequence in wire
    assert all(ch in wire for ch in "éèçïŒ")


def test_corpus_bytes_match_declared_charset() -> None:
    for path in sorted(CORPUS.glob("*.hl7")):
        raw = path.read_bytes()
        assert b"\n" not in raw and raw.endswith(b"\r")
        declared = parse(raw.split(b"\r", 1)[0].decode("latin-1")).charsets
        if declared == ["8859/1"]:
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")  # genuinely latin-1 bytes, not UTF-8 mislabelled
        raw.decode(CODECS[declared[0] if declared else ""])


# --------------------------------------------------------------------------------------------
# Oracle 1: hl7apy. Parsed in TOLERANT mode with find_groups=False so that Z-segments and all
# corpus messages are accepted (every corpus message parses; if one ever did not, the python-hl7
# oracle below still covers it, as it runs on everything).
#
# hl7apy quirks handled here, found while writing this oracle:
#  * it drops empty fields, components and subcomponents; positions are recovered from the
#    element names (PID_3, CX_4, HD_2). Children without a positional name are kept by hl7apy
#    only when none was dropped, so their list index is their position.
#  * it has no unescaping at all: a leaf's ``.value.value`` is the escaped wire text, and
#    ``to_er7()`` escapes that again, turning \X0D\ and \.br\ into \E\X0D\E\ and \E\.br\E\
#    (only \H\ \N\ \F\ \S\ \T\ \R\ \E\ are left alone); unescaped values are therefore checked
#    against python-hl7.
#  * ``to_er7()`` omits trailing empty components and subcomponents.
#  * date/time leaves (DTM) are parsed into datetime objects; their ``to_er7()`` is compared.

_HL7APY_REESCAPE = re.compile(r"(?<!\\[HNFSTRE])\\(?![HNFSTRE]\\)")


def _positions(children: list[object]) -> list[int | None]:
    named = [_NAME_POSITION.search(getattr(child, "name", None) or "") for child in children]
    if all(match is not None for match in named):
        return [int(match.group(1)) for match in named if match is not None]
    if all(match is None for match in named):
        return list(range(1, len(children) + 1))
    return [int(match.group(1)) if match else None for match in named]


def _hl7apy_leaf(sub: object) -> str:
    value = sub.value  # type: ignore[attr-defined]
    inner = getattr(value, "value", None)
    return inner if isinstance(inner, str) else sub.to_er7()  # type: ignore[attr-defined]


def _as_hl7apy_er7(rep_raw: str, d: Delimiters) -> str:
    """What hl7apy's to_er7() gives for a repetition: leaves re-escaped, trailing empties dropped."""
    comps = []
    for comp in rep_raw.split(d.component):
        subs = [_HL7APY_REESCAPE.sub(r"\\E\\", s) for s in comp.split(d.subcomponent)]
        while subs and not subs[-1]:
            subs.pop()
        comps.append(d.subcomponent.join(subs))
    while comps and not comps[-1]:
        comps.pop()
    return d.component.join(comps)


@pytest.mark.parametrize("name", corpus_ids())
def test_oracle_hl7apy(name: str) -> None:
    text = corpus()[name]
    ours = parse(text)
    d = ours.delimiters
    theirs = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
    assert [s.name for s in theirs.children] == [s.name for s in ours.segments]
    counts: collections.Counter[str] = collections.Counter()
    occurrences: collections.Counter[str] = collections.Counter()
    for their_seg, our_seg in zip(theirs.children, ours.segments, strict=True):
        occurrences[our_seg.name] += 1
        prefix = f"{our_seg.name}({occurrences[our_seg.name]})"
        reps_seen: collections.Counter[int] = collections.Counter()
        for their_field, fno in zip(their_seg.children, _positions(their_seg.children), strict=True):
            if fno is None:
                counts["skipped"] += 1
                continue
            reps_seen[fno] += 1
            rep_no = reps_seen[fno]
            our_field = our_seg.field(fno)
            assert our_field is not None, (name, prefix, fno)
            if our_seg.name == "MSH" and fno <= 2:
                assert their_field.to_er7() == our_field.raw == ours.get(f"MSH-{fno}")
                counts["fields"] += 1
                continue
            our_rep = our_field.repetitions[rep_no - 1]
            assert their_field.to_er7() == _as_hl7apy_er7(our_rep.raw, d), (name, prefix, fno, rep_no)
            counts["fields"] += 1
            for their_comp, cno in zip(their_field.children, _positions(their_field.children), strict=True):
                if cno is None:
                    counts["skipped"] += 1
                    continue
                our_comp = our_rep.components[cno - 1]
                for their_sub, sno in zip(their_comp.children, _positions(their_comp.children), strict=True):
                    if sno is None:
                        counts["skipped"] += 1
                        continue
                    raw_leaf = our_comp.raw.split(d.subcomponent)[sno - 1]
                    assert _hl7apy_leaf(their_sub) == raw_leaf, (name, prefix, fno, rep_no, cno, sno)
                    counts["leaves"] += 1
    assert counts["skipped"] <= counts["leaves"] // 20  # position recovery must stay the rule
    assert counts["leaves"] >= 40 and counts["fields"] >= 20, counts


def test_oracle_hl7apy_compares_enough_values() -> None:
    """Guards against the oracle above silently comparing nothing (e.g. after an hl7apy upgrade)."""
    total = 0
    for text in corpus().values():
        theirs = parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)
        total += sum(
            len(comp.children) for seg in theirs.children for f in seg.children for comp in f.children
        )
    assert total >= 1000


# --------------------------------------------------------------------------------------------
# Oracle 2: python-hl7, which keeps every position (empty or not), so the whole structure is
# compared, and whose unescape() is the reference for unescaped values.


def _pyhl7_tree(node: object, depth: int) -> object:
    """python-hl7 returns a bare string where no deeper separator occurs: expand it to `depth`."""
    if isinstance(node, str):
        tree: object = node
        for _ in range(depth):
            tree = [tree]
        return tree
    return [_pyhl7_tree(child, depth - 1) for child in node]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", corpus_ids())
def test_oracle_python_hl7(name: str) -> None:
    text = corpus()[name]
    ours = parse(text)
    d = ours.delimiters
    theirs = hl7.parse(text)
    assert len(theirs) == len(ours.segments)
    compared = 0
    occurrences: collections.Counter[str] = collections.Counter()
    for their_seg, our_seg in zip(theirs, ours.segments, strict=True):
        occurrences[our_seg.name] += 1
        occ = occurrences[our_seg.name]
        assert str(their_seg[0]) == our_seg.name
        assert len(their_seg) - 1 == len(our_seg)
        assert str(their_seg) == our_seg.raw
        for n in range(1, len(our_seg) + 1):
            field = our_seg.field(n)
            assert field is not None
            assert str(their_seg[n]) == field.raw
            if our_seg.name == "MSH" and n <= 2:
                continue
            expected = _pyhl7_tree(their_seg[n], 3)
            got = [[comp.raw.split(d.subcomponent) for comp in rep.components] for rep in field.repetitions]
            assert got == expected, (name, our_seg.name, n)
            compared += 1
        for n, r, c, s, raw, value in leaves(our_seg):
            assert value == theirs.unescape(raw, PYHL7_APP_MAP), (name, our_seg.name, n, r, c, s)
            path = f"{our_seg.name}({occ})-{n}[{r}].{c}.{s}"
            assert ours.get(path) == value == our_seg.value(n, r, c, s)
            compared += 1
    assert compared >= 50


def test_oracle_python_hl7_unescapes_escaped_values() -> None:
    """The unescape comparison above must have met real escape sequences, not just plain text."""
    escaped = 0
    for text in corpus().values():
        m = parse(text)
        escaped += sum(1 for seg in m.segments for *_, raw, value in leaves(seg) if raw != value)
    assert escaped >= 10


# --------------------------------------------------------------------------------------------
# get(): path grammar, leaves versus non-leaves, empty versus absent.

ADT = (
    "MSH|^~\\&|SIH|CHU|||20240101120000||ADT^A01^ADT_A01|MSG0001|P|2.5|||||FRA|8859/1~UNICODE UTF-8\r"
    "EVN||20240101120000\r"
    "PID|1||123^^^HOP&1.2.3&ISO^PI~456^^^INS&1.2.250&ISO^INS||"
    'DUPONT\\S\\X^Jean\\T\\Luc^^^^^L||19700101|M|||1 rue \\F\\A\\F\\^^Paris||""|\r'
    "OBX|1|NM|1^A||42\r"
    "OBX|2|ST|2^B||texte \\E\\ brut\r"
    "ZZZ\r"
)


@pytest.fixture
def adt() -> Message:
    return parse(ADT)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("MSH-1", "|"),
        ("MSH-2", "^~\\&"),
        ("MSH-1.1", "|"),
        ("MSH-2[1].1.1", "^~\\&"),
        ("MSH-2.2", None),
        ("MSH-3", "SIH"),
        ("MSH-9", "ADT^A01^ADT_A01"),  # non-leaf: raw
        ("MSH-9.1", "ADT"),
        ("MSH-9.3", "ADT_A01"),
        ("MSH-9.4", None),
        ("MSH-10", "MSG0001"),
        ("MSH-18", "8859/1"),
        ("MSH-18[2]", "UNICODE UTF-8"),
        ("MSH-18[3]", None),
        ("PID-3", "123^^^HOP&1.2.3&ISO^PI"),  # first repetition, raw
        ("PID-3[2]", "456^^^INS&1.2.250&ISO^INS"),
        ("PID-3[2].1", "456"),
        ("PID-3[2].4", "INS&1.2.250&ISO"),  # has subcomponents: raw
        ("PID-3[2].4.2", "1.2.250"),
        ("PID-3[2].4.4", None),
        ("PID-3.4.1", "HOP"),
        ("PID-3[1].2", ""),
        ("PID-3[1].2.1", ""),
        ("PID-3[1].2.2", None),
        ("PID-5", "DUPONT\\S\\X^Jean\\T\\Luc^^^^^L"),  # non-leaf stays escaped
        ("PID-5.1", "DUPONT^X"),  # leaf is unescaped
        ("PID-5.2", "Jean&Luc"),
        ("PID-5.7", "L"),
        ("PID-5.8", None),
        ("PID-11.1", "1 rue |A|"),
        ("PID-11", "1 rue \\F\\A\\F\\^^Paris"),
        ("PID-2", ""),  # present but empty
        ("PID-13", '""'),  # HL7 null kept verbatim
        ("PID-14", ""),  # trailing empty field exists
        ("PID-15", None),
        ("PID-99", None),
        ("OBX-5", "42"),
        ("OBX(1)-5", "42"),
        ("OBX(2)-5", "texte \\ brut"),
        ("OBX(3)-5", None),
        ("NTE-1", None),
        ("ZZZ-1", None),
        ("EVN-2", "20240101120000"),
    ],
)
def test_get(adt: Message, path: str, expected: str | None) -> None:
    assert adt.get(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "PID",
        "PID-",
        "pid-3",
        "PI-3",
        "PIDX-3",
        "PID-0",
        "PID-3[0]",
        "PID-3.0",
        "PID-3.1.0",
        "PID(0)-3",
        "PID-3.1.2.3",
        "PID-3[1][2]",
        "PID-٣",  # non-ASCII digit
        "PID-3 ",
        " PID-3",
        "PID.3",
        "PID-3[-1]",
        "PID-1234567",
    ],
)
def test_get_rejects_bad_paths(adt: Message, path: str) -> None:
    with pytest.raises(ValueError, match="HL7 path"):
        adt.get(path)


def test_get_reads_fields_past_the_partial_split() -> None:
    """get() splits a segment only a few fields past the one asked; later fields must still work."""
    fields = "|".join(f"v{i}" for i in range(1, 40))
    m = parse(f"MSH|^~\\&|A\rPID|{fields}\r")
    assert m.get("PID-2") == "v2"
    assert m.get("PID-30") == "v30"
    assert m.get("PID-39") == "v39"
    assert m.get("PID-40") is None
    seg = m.segment("PID")
    assert seg is not None and len(seg) == 39
    assert seg.value(39) == "v39"
    m2 = parse(f"MSH|^~\\&|A\rPID|{fields}\r")
    assert m2.get("PID-1") == "v1"
    seg2 = m2.segment("PID")
    assert seg2 is not None
    field = seg2.field(39)
    assert field is not None and field.raw == "v39"
    assert len(seg2) == 39


def test_repeated_and_interleaved_segments() -> None:
    m = parse("MSH|^~\\&|A\rOBX|1|a\rNTE|1|n1\rOBX|2|b\rNTE|2|n2\rNTE|3|n3\rOBX|3|c\r")
    assert [seg.value(2) for seg in m.segments_named("OBX")] == ["a", "b", "c"]
    assert [seg.value(2) for seg in m.segments_named("NTE")] == ["n1", "n2", "n3"]
    assert m.get("OBX(3)-2") == "c" and m.get("NTE(3)-2") == "n3" and m.get("NTE(4)-2") is None
    third = m.segment("OBX", 3)
    assert third is not None and third is m.segments[6]


def test_messages_sharing_a_structure_keep_their_own_values() -> None:
    first = parse("MSH|^~\\&|A|X\rPID|1||111\r")
    second = parse("MSH|^~\\&|B|Y\rPID|1||222\r")  # same structure: cached validation and index
    assert (first.get("PID-3"), second.get("PID-3")) == ("111", "222")
    assert (first.get("MSH-3"), second.get("MSH-3")) == ("A", "B")
    blank_lines = parse("MSH|^~\\&|C\r\rPID|1||333\r  \r")
    assert blank_lines.get("PID-3") == "333" and len(blank_lines.segments) == 2


def test_long_messages_beyond_the_structure_cache() -> None:
    obx = "".join(f"OBX|{i}|NM|CODE{i}||{i * 2}\r" for i in range(1, 301))
    m = parse("MSH|^~\\&|LAB\rPID|1||42\r" + obx)
    assert m.get("OBX(300)-5") == "600" and m.get("OBX(1)-3") == "CODE1" and m.get("OBX(301)-5") is None
    assert len(m.segments_named("OBX")) == 300
    assert parse(m.encode()).get("OBX(150)-5") == "300"


def test_get_and_segment_api_agree_on_every_leaf() -> None:
    for text in corpus().values():
        m = parse(text)
        occurrences: collections.Counter[str] = collections.Counter()
        for seg in m.segments:
            occurrences[seg.name] += 1
            for n, r, c, s, _raw, value in leaves(seg):
                assert m.get(f"{seg.name}({occurrences[seg.name]})-{n}[{r}].{c}.{s}") == value
                assert seg.value(n, r, c, s) == value


# --------------------------------------------------------------------------------------------
# MSH numbering and message-level properties.


def test_msh_numbering(adt: Message) -> None:
    msh = adt.segment("MSH")
    assert msh is not None
    assert msh.name == "MSH"
    field1, field2, field3 = msh.field(1), msh.field(2), msh.field(3)
    assert field1 is not None and field1.raw == "|"
    assert field2 is not None and field2.raw == "^~\\&"
    # MSH-2 holds the delimiters: it must not be split into components nor unescaped.
    assert [c.subcomponents for r in field2.repetitions for c in r.components] == [["^~\\&"]]
    assert field3 is not None and field3.raw == "SIH"
    assert msh.value(1) == "|" and msh.value(2) == "^~\\&" and msh.value(2, comp=2) is None
    assert msh.value(9, comp=2) == "A01"
    assert msh.value(10) == "MSG0001"
    assert len(msh) == 18
    assert msh.field(19) is None
    assert adt.message_type == ("ADT", "A01", "ADT_A01")
    assert adt.control_id == "MSG0001"
    assert adt.version == "2.5"
    assert adt.charsets == ["8859/1", "UNICODE UTF-8"]


def test_message_properties_when_msh_is_short() -> None:
    m = parse("MSH|^~\\&|A||||||ADT\r")
    assert m.message_type == ("ADT", "", "")
    assert m.control_id == "" and m.version == "" and m.charsets == []
    bare = parse("MSH|^~\\&")
    assert bare.message_type == ("", "", "") and bare.get("MSH-2") == "^~\\&" and bare.get("MSH-3") is None


def test_version_reads_first_component() -> None:
    assert parse(corpus()["adt_a01_admission_ins.hl7"]).version == "2.5"


def test_second_msh_segment_uses_msh_numbering() -> None:
    m = parse("MSH|^~\\&|A\rMSH|^~\\&|B\rMSH\r")
    assert m.get("MSH(2)-1") == "|" and m.get("MSH(2)-2") == "^~\\&" and m.get("MSH(2)-3") == "B"
    assert m.get("MSH(3)-1") is None and m.get("MSH(3)-2") is None
    bare = m.segment("MSH", 3)
    assert bare is not None and len(bare) == 0 and bare.field(1) is None and bare.value(2) is None


# --------------------------------------------------------------------------------------------
# Object API.


def test_segment_objects(adt: Message) -> None:
    assert [s.name for s in adt.segments] == ["MSH", "EVN", "PID", "OBX", "OBX", "ZZZ"]
    assert adt.segment("OBX", 2) is adt.segments_named("OBX")[1]
    assert adt.segment("OBX", 3) is None and adt.segment("NTE") is None
    assert adt.segments_named("NTE") == []
    pid = adt.segment("PID")
    assert pid is not None and pid is adt.segment("PID")  # cached
    assert pid.raw.startswith("PID|1||123")
    assert len(pid) == 14
    field = pid.field(3)
    assert field is not None and field is pid.field(3)
    assert [r.raw for r in field.repetitions] == ["123^^^HOP&1.2.3&ISO^PI", "456^^^INS&1.2.250&ISO^INS"]
    comps = field.repetitions[1].components
    assert [c.raw for c in comps] == ["456", "", "", "INS&1.2.250&ISO", "INS"]
    assert comps[3].subcomponents == ["INS", "1.2.250", "ISO"]
    name = pid.field(5)
    assert name is not None and name.repetitions[0].components[0].subcomponents == ["DUPONT^X"]
    assert pid.field(15) is None
    assert pid.value(3, 2, 4, 2) == "1.2.250" and pid.value(3, 3) is None and pid.value(99) is None
    zzz = adt.segment("ZZZ")
    assert zzz is not None and len(zzz) == 0 and zzz.field(1) is None


@pytest.mark.parametrize("call", ["segment", "field", "value_n", "value_rep", "value_comp", "value_sub"])
def test_positions_are_one_based(adt: Message, call: str) -> None:
    pid = adt.segment("PID")
    assert pid is not None
    with pytest.raises(ValueError, match="1-based"):
        if call == "segment":
            adt.segment("PID", 0)
        elif call == "field":
            pid.field(0)
        elif call == "value_n":
            pid.value(0)
        elif call == "value_rep":
            pid.value(3, rep=0)
        elif call == "value_comp":
            pid.value(3, comp=0)
        else:
            pid.value(3, sub=0)


def test_reprs_carry_no_content(adt: Message) -> None:
    pid = adt.segment("PID")
    assert pid is not None
    field = pid.field(5)
    assert field is not None
    texts = [
        repr(adt),
        repr(pid),
        repr(field),
        repr(field.repetitions[0]),
        repr(field.repetitions[0].components[0]),
    ]
    assert not any("DUPONT" in t or "Jean" in t for t in texts)


# --------------------------------------------------------------------------------------------
# Line endings, blank lines, round trip.


def test_lf_crlf_and_blank_lines_are_tolerated() -> None:
    cr = parse(ADT)
    for variant in [
        ADT.replace("\r", "\n"),
        ADT.replace("\r", "\r\n"),
        ADT + "\r\n\r\n",
        ADT + "   \n\t\n",
        "\r\n" + ADT,
        "\n  \n" + ADT,
        ADT.replace("EVN|", "\n\nEVN|"),
        "\ufeff" + ADT,
        ADT.rstrip("\r"),
    ]:
        m = parse(variant)
        assert [s.raw for s in m.segments] == [s.raw for s in cr.segments]
        assert m.encode() == ADT
        assert m.get("PID-5.1") == "DUPONT^X"


def test_encode_round_trips_the_corpus() -> None:
    for text in corpus().values():
        m = parse(text)
        assert m.encode() == text
        again = parse(m.encode())
        assert [s.raw for s in again.segments] == [s.raw for s in m.segments]


def test_three_character_segment_round_trips() -> None:
    m = parse("MSH|^~\\&|A\rZZZ\rZZ1|x\r")
    assert m.encode() == "MSH|^~\\&|A\rZZZ\rZZ1|x\r"
    assert m.segment("ZZZ") is not None and m.get("ZZ1-1") == "x"


# --------------------------------------------------------------------------------------------
# Custom delimiters: never hard-coded.


def test_custom_delimiters_from_corpus() -> None:
    m = parse(corpus()["adt_a04_delimiteurs_custom.hl7"])
    assert m.delimiters == Delimiters(field="#", component="!", repetition="~", escape="\\", subcomponent="&")
    assert m.get("MSH-1") == "#" and m.get("MSH-2") == "!~\\&"
    assert m.message_type == ("ADT", "A04", "ADT_A01")
    assert m.get("PID-3[2].1") == "180059912345064" and m.get("PID-3[2].4.1") == "ASIP-SANTE-INS-NIR"
    assert m.get("PID-5.1") == "DE LA FONTAINE"
    # \F\ and \S\ mean this message's delimiters; "^" is plain text here.
    assert m.get("PID-11.1") == "7 place du Marché #Hall# ! côté Rhône (accès ^ nord)"
    assert m.get("PID-32") == "VALI"


def test_fully_custom_delimiters_and_truncation() -> None:
    text = "MSH*:+$%#*APP****20240101**ADT:A01*ID1*P*2.7\rPID*1**a:b%c+d**x$F$y$S$z$T$w$R$v$E$u$P$t\r"
    m = parse(text)
    d = m.delimiters
    assert (d.field, d.component, d.repetition, d.escape, d.subcomponent, d.truncation) == (
        "*",
        ":",
        "+",
        "$",
        "%",
        "#",
    )
    assert m.get("MSH-2") == ":+$%#" and m.message_type == ("ADT", "A01", "") and m.control_id == "ID1"
    assert m.get("PID-3") == "a:b%c" and m.get("PID-3.2.2") == "c" and m.get("PID-3[2]") == "d"
    assert m.get("PID-5") == "x*y:z%w+v$u#t"
    assert m.encode() == text


# --------------------------------------------------------------------------------------------
# Escape sequences.

D = Delimiters()
DT = Delimiters(truncation="#")


@pytest.mark.parametrize(
    ("wire", "delimiters", "value"),
    [
        ("a\\F\\b", D, "a|b"),
        ("a\\S\\b", D, "a^b"),
        ("a\\T\\b", D, "a&b"),
        ("a\\R\\b", D, "a~b"),
        ("a\\E\\b", D, "a\\b"),
        ("a\\P\\b", DT, "a#b"),
        ("a\\P\\b", D, "a\\P\\b"),  # no truncation character declared: unknown, kept
        ("\\H\\gras\\N\\ normal", D, "gras normal"),
        ("a\\X0D\\b", D, "a\rb"),
        ("a\\X0D0A\\b", D, "a\r\nb"),
        ("a\\X0d0a\\b", D, "a\r\nb"),
        ("\\XC9\\t\\XE9\\", D, "Été"),  # hex bytes read as latin-1
        ("a\\X\\b", D, "a\\X\\b"),
        ("a\\X0\\b", D, "a\\X0\\b"),
        ("a\\XZZ\\b", D, "a\\XZZ\\b"),
        ("a\\X0 D\\b", D, "a\\X0 D\\b"),
        ("l1\\.br\\l2", D, "l1\nl2"),
        ("l1\\.sp\\l2", D, "l1\nl2"),
        ("l1\\.sp3\\l2", D, "l1\n\n\nl2"),
        ("l1\\.sp999\\l2", D, "l1\\.sp999\\l2"),  # bounded
        ("l1\\.spx\\l2", D, "l1\\.spx\\l2"),
        ("l1\\.ce\\l2", D, "l1\nl2"),
        ("a\\.sk\\b", D, "a b"),
        ("a\\.sk3\\b", D, "a   b"),
        ("\\.fi\\a\\.nf\\b", D, "ab"),
        ("\\.in4\\a\\.ti-2\\b\\.in+1\\", D, "ab"),
        ("\\.inx\\a", D, "\\.inx\\a"),
        ("a\\.zz\\b", D, "a\\.zz\\b"),
        ("a\\Q\\b", D, "a\\Q\\b"),
        ("a\\C2842\\b", D, "a\\C2842\\b"),  # charset switches cannot be honoured on str: kept
        ("a\\M248444\\b", D, "a\\M248444\\b"),
        ("a\\Zlocal\\b", D, "a\\Zlocal\\b"),
        ("a\\\\b", D, "a\\\\b"),  # empty sequence
        ("a\\F", D, "a\\F"),  # unterminated
        ("a\\F\\b\\", D, "a|b\\"),
        ("\\", D, "\\"),
        ("plain", D, "plain"),
        ("", D, ""),
        ("\\F\\\\S\\\\E\\\\E\\", D, "|^\\\\"),
        ("a$F$b$E$c", Delimiters(escape="$"), "a|b$c"),
        ("a\\F\\b", Delimiters(escape="$"), "a\\F\\b"),
        (
            "x!S!y",
            Delimiters(field="#", component="!", escape="\\", repetition="~", subcomponent="&"),
            "x!S!y",
        ),
        ("x\\S\\y", Delimiters(field="#", component="!"), "x!y"),
    ],
)
def test_unescape(wire: str, delimiters: Delimiters, value: str) -> None:
    assert unescape(wire, delimiters) == value


def test_escape() -> None:
    assert escape("a|b^c~d\\e&f\rg\nh\x00i#", D) == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\X0D\\g\\X0A\\h\\X00\\i#"
    assert escape("a#b", DT) == "a\\P\\b"
    assert escape("Œuf é", D) == "Œuf é"
    assert escape("", D) == ""
    for s in ["a|b^c~d\\e&f\rg\nh\x00i#", "\\F\\", "\\X0D\\", "\\.br\\ \\H\\"]:
        assert unescape(escape(s, DT), DT) == s
        assert unescape(escape(s, D), D) == s


@pytest.mark.parametrize(
    "kwargs",
    [
        {"field": "^"},
        {"field": "||"},
        {"component": ""},
        {"escape": "A"},
        {"subcomponent": "1"},
        {"repetition": " "},
        {"truncation": "\r"},
        {"truncation": "|"},
    ],
)
def test_delimiters_are_validated(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="delimiter"):
        Delimiters(**kwargs)


# --------------------------------------------------------------------------------------------
# Errors: codes, locations, and no patient data in the text.


@pytest.mark.parametrize(
    ("text", "code", "location"),
    [
        ("", "empty", "message"),
        ("\r\n \r\t\n", "empty", "message"),
        ("\ufeff", "empty", "message"),
        (f"PID|1||{CANARY}\r", "no_msh", "segment 1"),
        (f"EVN||x\rMSH|^~\\&|{CANARY}\r", "no_msh", "segment 1"),
        (f" MSH|^~\\&|{CANARY}\r", "no_msh", "segment 1"),
        ("MSH", "msh_too_short", "MSH-2"),
        ("MSH|^~\\", "msh_too_short", "MSH-2"),
        (f"MSH|^~|{CANARY}", "bad_delimiters", "MSH-2"),
        (f"MSH|^~\\&#@|{CANARY}", "bad_delimiters", "MSH-2"),
        (f"MSH|^^\\&|{CANARY}", "bad_delimiters", "MSH-2"),
        (f"MSH|^~\\||{CANARY}", "bad_delimiters", "MSH-2"),
        (f"MSH|^~\\A|{CANARY}", "bad_delimiters", "MSH-2"),
        (f"MSHA^~\\&A{CANARY}", "bad_delimiters", "MSH-1"),
        (f"MSH ^~\\& {CANARY}", "bad_delimiters", "MSH-1"),
        (f"MSH|^~\\&|A\r{CANARY}|1\r", "bad_segment_name", "segment 2"),
        (f"MSH|^~\\&|A\rPID|1\rpid|{CANARY}\r", "bad_segment_name", "segment 3"),
        (f"MSH|^~\\&|A\rPI|{CANARY}\r", "bad_segment_name", "segment 2"),
        (f"MSH|^~\\&|A\rPIDX|{CANARY}\r", "bad_segment_name", "segment 2"),
        (f"MSH|^~\\&|A\r1PD|{CANARY}\r", "bad_segment_name", "segment 2"),
        (f"MSH|^~\\&|A\rPID^{CANARY}\r", "bad_segment_name", "segment 2"),
        (f"MSH|^~\\&|A\rPID|1|{CANARY}\rZ\r", "bad_segment_name", "segment 3"),
        (f"MSH#^~\\&#A\rPID|{CANARY}\r", "bad_segment_name", "segment 2"),
        (f"MSH|^~\\&|{CANARY}\x00\r", "nul_character", "offset 20"),
    ],
)
def test_errors(text: str, code: str, location: str) -> None:
    with pytest.raises(Er7Error) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.code, err.location) == (code, location)
    rendered = " ".join([str(err), repr(err), *map(str, err.args), err.detail])
    assert CANARY not in rendered and CANARY[:3] not in rendered


def test_bad_segment_name_that_is_patient_data_does_not_leak() -> None:
    # A stray CR inside a name field makes the rest of the name look like a segment.
    with pytest.raises(Er7Error) as info:
        parse(f"MSH|^~\\&|A\rPID|1||123||{CANARY}\rMARTIN^Jean|||\r")
    assert "MAR" not in str(info.value) and CANARY not in str(info.value)
    assert info.value.location == "segment 3"


def test_error_pickles() -> None:
    err = Er7Error("no_msh", "segment 1", "message does not start with an MSH segment")
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.location, str(again)) == (err.code, err.location, str(err))


def test_segment_validation_cache_is_per_separator() -> None:
    parse("MSH#^~\\&#A\rPID#1\r")  # teaches that "PID#" starts a valid segment when '#' separates
    with pytest.raises(Er7Error, match="bad_segment_name"):
        parse("MSH|^~\\&|A\rPID#1\r")
