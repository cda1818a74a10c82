"""Property tests of the ER7 tokenizer.

They check what unit tests cannot enumerate: no input makes parse() fail other than with
Er7Error, escape() is a true inverse of unescape(), and a message built from arbitrary values
reads back the same values through every access path (the inlined get() fast path, the segment
API and the object tree), before and after an encode()/parse() round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats.hl7.er7 import Delimiters, Er7Error, Message, escape, parse, unescape

SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
# Generated messages are costly to draw; fewer examples keep the suite well under a minute.
HEAVY = settings(SETTINGS, max_examples=120)

DELIMITER_SETS = [
    Delimiters(),
    Delimiters(truncation="#"),
    Delimiters(field="#", component="!", repetition="~", escape="\\", subcomponent="&"),
    Delimiters(field="*", component=":", repetition="+", escape="$", subcomponent="%", truncation="@"),
    Delimiters(field="§", component="«", repetition="¤", escape="/", subcomponent="."),
]
delimiter_sets = st.sampled_from(DELIMITER_SETS)

# Text made mostly of the characters that matter to a tokenizer, so that examples hit the
# interesting paths (delimiters, escapes, segment starts, line ends) rather than plain letters.
SPICY = list("MSHPIDOBXZ0129|^~\\&#!*:+$%@FSTREXHN.br\r\n \t\ufeffé\x00")
spicy_text = st.text(alphabet=st.sampled_from(SPICY) | st.characters(), max_size=200)


def exercise(m: Message) -> None:
    """Touch every public accessor: none may raise on a message that parsed."""
    assert isinstance(m.message_type, tuple) and isinstance(m.control_id, str)
    assert isinstance(m.version, str) and isinstance(m.charsets, list)
    repr(m)
    for index, seg in enumerate(m.segments, 1):
        repr(seg)
        assert m.segment(seg.name) is not None
        assert seg in m.segments_named(seg.name)
        for n in range(1, len(seg) + 2):
            field = seg.field(n)
            seg.value(n, 2, 2, 2)
            m.get(f"{seg.name}-{n}")
            m.get(f"{seg.name}({index})-{n}[2].2.2")
            if field is None:
                assert n == len(seg) + 1
                continue
            if seg.name == "MSH" and n <= 2:
                continue  # the delimiters themselves: atomic
            for rep in field.repetitions:
                for comp in rep.components:
                    assert len(comp.subcomponents) == comp.raw.count(m.delimiters.subcomponent) + 1
    again = parse(m.encode())
    assert again.encode() == m.encode()


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text_only_raises_er7error(text: str) -> None:
    try:
        m = parse(text)
    except Er7Error as err:
        assert err.code in {
            "empty",
            "nul_character",
            "no_msh",
            "msh_too_short",
            "bad_delimiters",
            "bad_segment_name",
        }
        return
    exercise(m)


@SETTINGS
@given(
    header=st.sampled_from(["MSH|^~\\&|", "MSH#!~\\&#", "MSH|^~\\&#|", "MSH|", "MSH", ""]), body=spicy_text
)
def test_message_like_text_only_raises_er7error(header: str, body: str) -> None:
    try:
        m = parse(header + body)
    except Er7Error as err:
        assert "\x00" not in str(err)
        return
    exercise(m)


@SETTINGS
@given(text=st.text(), d=delimiter_sets)
def test_unescape_inverts_escape(text: str, d: Delimiters) -> None:
    escaped = escape(text, d)
    assert "\r" not in escaped and "\n" not in escaped and "\x00" not in escaped
    for char in (d.field, d.component, d.repetition, d.subcomponent):
        assert char not in escaped
    assert unescape(escaped, d) == text


@SETTINGS
@given(text=spicy_text, d=delimiter_sets)
def test_unescape_never_raises_and_is_identity_without_escape_char(text: str, d: Delimiters) -> None:
    value = unescape(text, d)
    if d.escape not in text:
        assert value is text


# --------------------------------------------------------------------------------------------
# Generated well-formed messages.

Leaf = str
Component = list[Leaf]
Repetition = list[Component]
Field = list[Repetition]


@dataclass
class Spec:
    d: Delimiters
    segments: list[tuple[str, list[Field]]]  # MSH first; its fields start at MSH-3

    def encode_field(self, field: Field) -> str:
        d = self.d
        return d.repetition.join(
            d.component.join(d.subcomponent.join(escape(leaf, d) for leaf in comp) for comp in rep)
            for rep in field
        )

    def wire(self) -> str:
        d = self.d
        enc = d.component + d.repetition + d.escape + d.subcomponent + (d.truncation or "")
        lines = []
        for name, fields in self.segments:
            encoded = [self.encode_field(f) for f in fields]
            if name == "MSH":
                lines.append(d.field.join(["MSH", enc, *encoded]))
            else:
                lines.append(d.field.join([name, *encoded]))
        return "\r".join(lines) + "\r"


leaf_values = st.text(max_size=8) | st.sampled_from(["", "a", "\\F\\", "x|y^z", "\r\n", "Élodie Œ"])
fields = st.lists(
    st.lists(st.lists(leaf_values, min_size=1, max_size=3), min_size=1, max_size=3), min_size=1, max_size=3
)
segment_names = st.from_regex(r"[A-Z][A-Z0-9]{2}", fullmatch=True).filter(lambda name: name != "MSH")


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    d = draw(delimiter_sets)
    msh_fields = draw(st.lists(fields, max_size=14))
    body = draw(st.lists(st.tuples(segment_names, st.lists(fields, max_size=14)), max_size=6))
    return Spec(d, [("MSH", msh_fields), *body])


def check_reads_back(m: Message, spec: Spec) -> None:
    occurrences: dict[str, int] = {}
    assert [seg.name for seg in m.segments] == [name for name, _ in spec.segments]
    for seg, (name, field_values) in zip(m.segments, spec.segments, strict=True):
        occurrences[name] = occ = occurrences.get(name, 0) + 1
        first = 3 if name == "MSH" else 1
        assert len(seg) == len(field_values) + first - 1
        for n, field in enumerate(field_values, first):
            obj = seg.field(n)
            assert obj is not None and obj.raw == spec.encode_field(field)
            assert [[c.subcomponents for c in r.components] for r in obj.repetitions] == field
            for r, rep in enumerate(field, 1):
                for c, comp in enumerate(rep, 1):
                    for s, leaf in enumerate(comp, 1):
                        assert m.get(f"{name}({occ})-{n}[{r}].{c}.{s}") == leaf
                        assert seg.value(n, r, c, s) == leaf
                    assert m.get(f"{name}({occ})-{n}[{r}].{c}.{len(comp) + 1}") is None
                    # Without a subcomponent: the leaf when there is one, else the raw text.
                    expected = (
                        comp[0]
                        if len(comp) == 1
                        else m.delimiters.subcomponent.join(escape(x, spec.d) for x in comp)
                    )
                    assert m.get(f"{name}({occ})-{n}[{r}].{c}") == expected
                assert m.get(f"{name}({occ})-{n}[{r}].{len(rep) + 1}") is None
            assert m.get(f"{name}({occ})-{n}[{len(field) + 1}]") is None
            whole = m.get(f"{name}({occ})-{n}")
            first_rep = field[0]
            if len(first_rep) == 1 and len(first_rep[0]) == 1:
                assert whole == first_rep[0][0]
            else:
                assert whole == obj.repetitions[0].raw
        assert m.get(f"{name}({occ})-{len(seg) + 1}") is None


@HEAVY
@given(spec=specs())
def test_generated_messages_read_back_and_round_trip(spec: Spec) -> None:
    wire = spec.wire()
    m = parse(wire)
    assert m.delimiters == spec.d
    assert m.get("MSH-1") == spec.d.field
    assert m.encode() == wire
    check_reads_back(m, spec)
    again = parse(m.encode())
    assert again.encode() == wire
    check_reads_back(again, spec)
    # Line-ending variants read back the same.
    check_reads_back(parse(wire.replace("\r", "\r\n")), spec)


@HEAVY
@given(spec=specs(), data=st.data())
def test_get_in_any_order_matches_object_tree(spec: Spec, data: st.DataObject) -> None:
    """get() splits segments lazily and partially; reading in random order must not matter."""
    m = parse(spec.wire())
    reference = parse(spec.wire())
    for _ in range(10):
        index = data.draw(st.integers(0, len(spec.segments) - 1))
        name = spec.segments[index][0]
        occ = [n for n, _ in spec.segments[: index + 1]].count(name)
        n = data.draw(st.integers(1, 18))
        r, c, s = (data.draw(st.integers(1, 4)) for _ in range(3))
        seg = reference.segment(name, occ)
        assert seg is not None
        assert m.get(f"{name}({occ})-{n}[{r}].{c}.{s}") == seg.value(n, r, c, s)
        if data.draw(st.booleans()):
            live = m.segment(name, occ)
            assert live is not None and len(live) == len(seg)
