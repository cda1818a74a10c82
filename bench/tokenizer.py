"""Tokenizer suite: how many HL7 v2 messages one core turns into the values a router reads.

The hot path of the hub is "tokenize, read a handful of fields": the MLLP door reads MSH, the
normalizer PID and OBX. So the headline figure is parse plus eight typical reads, not parse alone,
and the same reads are done with python-hl7 so that the comparison is like for like (the values
read are checked to be equal, else the comparison would be meaningless). Two yardsticks frame it:
a bare ``str.split`` of every segment into fields, which no tokenizer can beat by much, and
hl7apy, the library this tokenizer replaced on the hot path.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from bench import Options, register
from bench.corpus import CorpusMessage, load_corpus
from bench.machine import CpuWindow
from bench.report import SuiteResult, Table, Target, fmt_count, fmt_percent, fmt_rate, fmt_ratio, fmt_us
from formats.hl7 import er7

HOT_PATH_TARGET = 100_000  # msgs/s on one core

# PID-3 is read repetition by repetition: the INS and the local IPP sit in different repetitions,
# so a router reads them all.
_MAX_REPETITIONS = 32
_PID3_FIELDS = tuple(f"PID-3[{r}]" for r in range(1, _MAX_REPETITIONS + 1))
_PID3_COMPONENTS = tuple(
    (f"PID-3[{r}].1", f"PID-3[{r}].4.1", f"PID-3[{r}].5") for r in range(1, _MAX_REPETITIONS + 1)
)

# None where affluent says "absent"; the comparison with python-hl7 reads it as "".
Values = Sequence[str | None]


def read_fields(msg: er7.Message) -> Values:
    """The hot path's typical reads, field by field: MSH-9, MSH-10, PID-3 (every repetition), PID-5,
    PID-7, and the first OBX-3 and OBX-5. Non-leaf fields come back as wire text, as a router
    forwarding or hashing them would take them."""
    get = msg.get
    found = [get("MSH-9"), get("MSH-10")]
    for path in _PID3_FIELDS:
        repetition = get(path)
        if repetition is None:
            break
        found.append(repetition)
    found += (get("PID-5"), get("PID-7"), get("OBX-3"), get("OBX-5"))
    return found


def read_components(msg: er7.Message) -> Values:
    """The same fields down to the components the normalizer uses: MSH-9.1/.2/.3, MSH-10, for each
    PID-3 repetition its id, authority namespace and type, PID-5.1/.2, PID-7.1, OBX-3.1, OBX-5.1."""
    get = msg.get
    found = [get("MSH-9.1"), get("MSH-9.2"), get("MSH-9.3"), get("MSH-10.1")]
    for id_path, authority_path, type_path in _PID3_COMPONENTS:
        identifier = get(id_path)
        if identifier is None:
            break
        found += (identifier, get(authority_path), get(type_path))
    found += (get("PID-5.1"), get("PID-5.2"), get("PID-7.1"), get("OBX-3.1"), get("OBX-5.1"))
    return found


def _first(msg: Any, name: str) -> Any:
    try:
        return msg.segment(name)
    except KeyError:
        return None


def _repetitions(segment: Any, n: int) -> list[Any]:
    if segment is None or n >= len(segment):
        return []
    value = segment[n]
    if value and isinstance(value[0], hl7.Repetition):
        return list(value)
    return [value]


def _field_text(segment: Any, n: int) -> str:
    """First repetition as wire text, like affluent's get("SEG-n") on a non-leaf."""
    repetitions = _repetitions(segment, n)
    return str(repetitions[0]) if repetitions else ""


def _extract(segment: Any, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    if segment is None:
        return ""
    # python-hl7 raises IndexError where affluent answers None ("absent"): both mean "".
    try:
        return str(segment.extract_field(1, field, rep, comp, sub))
    except IndexError:
        return ""


def python_hl7_fields(msg: Any) -> Values:
    """read_fields() with python-hl7; segments are looked up once, as affluent's index does."""
    msh, pid, obx = msg.segment("MSH"), _first(msg, "PID"), _first(msg, "OBX")
    found = [_field_text(msh, 9), _field_text(msh, 10)]
    found += [str(r) for r in _repetitions(pid, 3)[:_MAX_REPETITIONS]]
    found += (_field_text(pid, 5), _field_text(pid, 7), _field_text(obx, 3), _field_text(obx, 5))
    return found


def python_hl7_components(msg: Any) -> Values:
    """read_components() with python-hl7's documented accessor, ``extract_field`` (it unescapes)."""
    msh, pid, obx = msg.segment("MSH"), _first(msg, "PID"), _first(msg, "OBX")
    found = [_extract(msh, 9, 1, 1), _extract(msh, 9, 1, 2), _extract(msh, 9, 1, 3), _extract(msh, 10)]
    for r in range(1, min(len(_repetitions(pid, 3)), _MAX_REPETITIONS) + 1):
        found += (_extract(pid, 3, r, 1), _extract(pid, 3, r, 4, 1), _extract(pid, 3, r, 5))
    found += (_extract(pid, 5, 1, 1), _extract(pid, 5, 1, 2), _extract(pid, 7, 1, 1))
    found += (_extract(obx, 3, 1, 1), _extract(obx, 5, 1, 1))
    return found


def _ceiling(texts: list[str]) -> None:
    for text in texts:
        fs = text[3]
        [segment.split(fs) for segment in text.split("\r")]


def _affluent(read: Callable[[er7.Message], Values] | None) -> Callable[[list[str]], None]:
    parse = er7.parse

    def work(texts: list[str]) -> None:
        for text in texts:
            msg = parse(text)
            if read is not None:
                read(msg)

    return work


def _python_hl7(read: Callable[[Any], Values] | None) -> Callable[[list[str]], None]:
    parse = hl7.parse

    def work(texts: list[str]) -> None:
        for text in texts:
            msg = parse(text)
            if read is not None:
                read(msg)

    return work


def _hl7apy(texts: list[str]) -> None:
    for text in texts:
        parse_message(text, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)


@dataclass(frozen=True, slots=True)
class Measurement:
    label: str
    what: str
    seconds_per_message: float
    messages_timed: int
    others: float  # CPU used by the rest of the machine while this row was measured, fraction of one core

    @property
    def rate(self) -> float:
        return 1.0 / self.seconds_per_message


def time_per_message(
    work: Callable[[list[str]], None], texts: list[str], min_seconds: float, repeats: int = 3
) -> tuple[float, int]:
    """Best of ``repeats`` rounds of at least ``min_seconds`` each, in seconds per message.

    Best, not mean: on a shared 2-core machine every disturbance (the broker's GC, another
    process) only ever adds time, so the minimum is the figure closest to the code's own cost.
    The corpus is processed whole each time so that every round has the same message mix.
    """
    work(texts)  # warm caches (paths, structures, the interpreter's specialisations)
    best = float("inf")
    total = 0
    for _ in range(repeats):
        gc.collect()
        loops = 0
        start = time.perf_counter()
        while True:
            work(texts)
            loops += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        total += loops * len(texts)
        best = min(best, elapsed / (loops * len(texts)))
    return best, total


def _has_escapes(text: str) -> bool:
    escape = er7.parse(text).delimiters.escape
    return escape in text.split("\r", 1)[-1]


def compare_reads(
    corpus: list[CorpusMessage],
    ours: Callable[[er7.Message], Values],
    theirs: Callable[[Any], Values],
) -> tuple[list[str], bool]:
    """Messages on which affluent and python-hl7 read different values, and whether every such
    message holds escape sequences (which the two libraries render differently by design)."""
    differing: list[str] = []
    explained = True
    for m in corpus:
        a = [v or "" for v in ours(er7.parse(m.text))]
        b = [v or "" for v in theirs(hl7.parse(m.text))]
        count = sum(x != y for x, y in zip(a, b, strict=False)) + abs(len(a) - len(b))
        if count:
            differing.append(f"{m.name} ({count} of {len(a)})")
            explained = explained and _has_escapes(m.text)
    return differing, explained


def _comparison_note(kind: str, differing: list[str], explained: bool) -> str:
    if not differing:
        return f"{kind}: affluent and python-hl7 read identical values on every corpus message."
    text = f"{kind}: affluent and python-hl7 read identical values except on {', '.join(differing)}"
    if explained:
        return (
            text + "; each such message holds escape sequences, which the two render differently: affluent "
            "unescapes leaves (`\\.br\\` → LF, `\\H\\` dropped), python-hl7's `str()` keeps the wire "
            "text and its `extract_field` maps `\\.br\\` → CR and `\\H\\` → `_`."
        )
    return text + "; **some of these messages hold no escape sequence: a bug in one of the two libraries**."


@register("tokenizer")
def run(options: Options) -> SuiteResult:
    started = time.perf_counter()
    corpus = load_corpus()
    texts = [m.text for m in corpus]
    min_s = options.seconds(1.0, 0.25)
    hl7apy_min_s = options.seconds(0.7, 0.2)

    # Like-for-like check: the same reads must give the same values, or the comparison is void.
    field_diff = compare_reads(corpus, read_fields, python_hl7_fields)
    component_diff = compare_reads(corpus, read_components, python_hl7_components)
    n_fields = sum(len(read_fields(er7.parse(t))) for t in texts) / len(texts)
    n_components = sum(len(read_components(er7.parse(t))) for t in texts) / len(texts)
    field_reads = f"parse + {n_fields:.0f} field reads"
    component_reads = f"parse + {n_components:.0f} component reads"

    plan: list[tuple[str, str, Callable[[list[str]], None], float]] = [
        ("ceiling: `str.split`", "split every segment into fields, nothing else", _ceiling, min_s),
        ("**affluent `er7`: hot path**", f"**{field_reads}**", _affluent(read_fields), min_s),
        ("affluent `er7`", component_reads, _affluent(read_components), min_s),
        ("affluent `er7`", "parse only", _affluent(None), min_s),
        ("python-hl7 0.4", field_reads, _python_hl7(python_hl7_fields), min_s),
        ("python-hl7 0.4", component_reads, _python_hl7(python_hl7_components), min_s),
        ("python-hl7 0.4", "parse only", _python_hl7(None), min_s),
        ("hl7apy 1.3 (tolerant, no groups)", "parse only", _hl7apy, hl7apy_min_s),
    ]
    measured: list[Measurement] = []
    for label, what, work, seconds in plan:
        window = CpuWindow()
        per_message, count = time_per_message(work, texts, seconds)
        window.stop()
        rest = window.stack + window.others + window.kernel + window.steal
        measured.append(Measurement(label, what, per_message, count, rest))
        print(f"  tokenizer: {label} ({what}): {fmt_rate(1 / per_message)} msgs/s", flush=True)

    ceiling, hot, components, hl7apy_rate = (measured[i].rate for i in (0, 1, 2, -1))
    rows = [
        [
            m.label,
            m.what,
            fmt_rate(m.rate),
            fmt_us(m.seconds_per_message),
            fmt_ratio(m.rate / ceiling),
            fmt_ratio(m.rate / hl7apy_rate),
            fmt_count(m.messages_timed),
            fmt_percent(m.others),
        ]
        for m in measured
    ]
    table = Table(
        [
            "implementation",
            "what is timed",
            "msgs/s",
            "µs/msg",
            "vs ceiling",
            "vs hl7apy",
            "msgs timed",
            "rest of machine",
        ],
        rows,
        align=["l", "l", "r", "r", "r", "r", "r", "r"],
    )
    notes = [
        f"Corpus: {len(corpus)} messages ({', '.join(sorted({m.message_type for m in corpus}))}), "
        f"{sum(len(m.raw) for m in corpus) / len(corpus):,.0f} bytes on average; one has custom "
        "delimiters, others escapes, repetitions and long OBX text.",
        _comparison_note("Field reads", *field_diff),
        _comparison_note("Component reads", *component_diff),
    ]
    how = (
        "One process, one thread, on the corpus `tests/corpus/hl7/*.hl7`, each file decoded per its "
        "MSH-18 (`UNICODE UTF-8` → utf-8, `8859/15` → iso8859-15, else latin-1) before timing, so "
        "only tokenizing and reading is timed. Each row processes the whole corpus in a loop for at "
        f"least {min_s:g} s ({hl7apy_min_s:g} s for hl7apy, three orders of magnitude slower), after "
        "one untimed warm-up pass; the best of 3 such rounds is kept (`time.perf_counter`, GC on). "
        "The hot path is the target's definition: `parse` then `get` of MSH-9, MSH-10, every PID-3 "
        "repetition, PID-5, PID-7 and the first OBX-3 and OBX-5 (non-leaf fields come back as wire "
        "text). The component reads go one level deeper, as the normalizer does: MSH-9.1/.2/.3, "
        "MSH-10.1, for every PID-3 repetition .1, .4.1 and .5, PID-5.1, PID-5.2, PID-7.1, OBX-3.1, "
        "OBX-5.1. python-hl7 does the same reads, segments looked up once, with `str()` of the first "
        "repetition for fields and its documented `Segment.extract_field` for components; its parse "
        "is eager, so reads add little. hl7apy is timed on "
        "`parse_message(text, find_groups=False, validation_level=TOLERANT)` only. The ceiling splits "
        "every segment of the message into fields with `str.split` and reads nothing. 'Rest of "
        "machine' is the CPU everything else used meanwhile (other processes, broker and registry "
        "included, interrupts, hypervisor steal; 100 % = one core): this suite needs one core of "
        "two, so above ~100 % it had to share its own. On this virtual machine the absolute rates "
        "have moved by up to 2× from one run to the next with nothing else visible on the machine "
        "(the host's own load), while the ratios to the ceiling stayed within a few per cent: read "
        "the ratios first."
    )
    return SuiteResult(
        name="tokenizer",
        title="HL7 v2 tokenizer (one core)",
        tables=[table],
        how_measured=how,
        targets=[
            Target(
                f"tokenizer hot path ({field_reads}), one core",
                f"≥ {fmt_count(HOT_PATH_TARGET)} msgs/s",
                # Not rounded like the table: a figure just under the target must not read as on it.
                f"{fmt_count(hot)} msgs/s ({fmt_us(1 / hot)}/msg); with {n_components:.0f} component "
                f"reads instead: {fmt_rate(components)} msgs/s",
                hot >= HOT_PATH_TARGET,
            )
        ],
        notes=notes,
        seconds=time.perf_counter() - started,
    )
