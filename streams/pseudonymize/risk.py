"""Re-identification risk of what a destination received: k-anonymity of its quasi-identifiers.

Pseudonyms stop direct re-identification; what remains is the combination of quasi-identifiers a
platform receives (sex, birth year-month, département of residence, the hospital that sent the
record, …). A patient whose combination is shared by fewer than k patients is at risk of being singled
out by someone who knows those facts. ``affluent risk-report --destination inca`` reads a window of the
destination's patient topic and reports, per the chosen combination, the size of the smallest class and
how many patients (and records) sit in classes smaller than k.

Counted per patient (pseudonym), not per record: a patient with ten updates is one person. When a
patient's records disagree (an address changed), the latest record read wins, as it would on the
platform. Nothing identifying is printed: classes are reported by size only, never by their values,
unless ``--show-classes`` is asked for, which prints the generalized values of the small classes (they
are what the platform already holds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from affluent.core.errors import ConfigError

# Quasi-identifiers each shipped destination receives in its patient records (docs/pseudonymization.md).
DEFAULT_QUASI_IDENTIFIERS: dict[str, tuple[str, ...]] = {
    "inca": ("sex", "birth_date", "envelope.source.facility"),
    "hdh": ("sex", "birth_date", "birth_place_code", "addresses[].postal_code", "envelope.source.facility"),
}
DEFAULT_K = 5


def value_at(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; ``name[]`` collects over an array (as a sorted tuple, so that the
    same set of départements in another order is the same class). Missing → None."""
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        items = record.get(head[:-2]) or []
        values = {value_at(item, rest) if rest else item for item in items if isinstance(item, Mapping)}
        return tuple(sorted((v for v in values if v is not None), key=str))
    value = record.get(head)
    if not rest:
        return value
    return value_at(value, rest) if isinstance(value, Mapping) else None


def check_paths(schema_fields: Iterable[str], paths: Sequence[str]) -> None:
    """Refuse a quasi-identifier the destination does not receive (a typo would report k = everyone)."""
    known = set(schema_fields)
    unknown = [p for p in paths if p.replace("[]", "") not in known]
    if unknown:
        raise ConfigError(f"not a field of the destination's patient records: {', '.join(unknown)}")


@dataclass(frozen=True, slots=True)
class RiskReport:
    destination: str
    quasi_identifiers: tuple[str, ...]
    k: int
    records: int
    patients: int
    classes: int
    smallest_class: int
    patients_below_k: int
    classes_below_k: int
    records_below_k: int
    small_classes: tuple[tuple[tuple[Any, ...], int], ...]

    @property
    def k_anonymity(self) -> int:
        """The k the data set achieves: the size of its smallest class (0 when empty)."""
        return self.smallest_class

    def lines(self, show_classes: bool = False) -> list[str]:
        share = self.patients_below_k / self.patients if self.patients else 0.0
        out = [
            f"destination {self.destination}: {self.records} patient records, {self.patients} patients",
            f"quasi-identifiers: {', '.join(self.quasi_identifiers)}",
            f"equivalence classes: {self.classes}; smallest: {self.smallest_class} "
            f"(the data set is {self.k_anonymity}-anonymous)",
            f"classes smaller than k={self.k}: {self.classes_below_k}, holding {self.patients_below_k} "
            f"patients ({share:.1%}) and {self.records_below_k} records",
        ]
        if show_classes:
            for values, size in self.small_classes:
                out.append(f"  {size:>4}  {values}")
        return out


def assess(
    records: Iterable[Mapping[str, Any]],
    destination: str,
    quasi_identifiers: Sequence[str],
    k: int = DEFAULT_K,
) -> RiskReport:
    """k-anonymity of ``quasi_identifiers`` over the patients of ``records`` (national patient records)."""
    if k < 2:
        raise ConfigError("k must be at least 2")
    latest: dict[str, tuple[Any, ...]] = {}
    records_of: Counter[str] = Counter()
    count = 0
    for record in records:
        count += 1
        patient = record.get("patient") or {}
        pseudonym = str(patient.get("pseudonym") or "")
        if not pseudonym:
            continue
        latest[pseudonym] = tuple(value_at(record, path) for path in quasi_identifiers)
        records_of[pseudonym] += 1
    sizes: Counter[tuple[Any, ...]] = Counter(latest.values())
    small = {values: size for values, size in sizes.items() if size < k}
    return RiskReport(
        destination=destination,
        quasi_identifiers=tuple(quasi_identifiers),
        k=k,
        records=count,
        patients=len(latest),
        classes=len(sizes),
        smallest_class=min(sizes.values(), default=0),
        patients_below_k=sum(small.values()),
        classes_below_k=len(small),
        records_below_k=sum(records_of[p] for p, values in latest.items() if values in small),
        small_classes=tuple(sorted(small.items(), key=lambda item: (item[1], str(item[0])))),
    )


def schema_paths(schema: Mapping[str, Any]) -> list[str]:
    """Dotted paths of an Avro record schema's leaves (arrays of records as ``name[]``)."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, list):
            for branch in node:
                if branch != "null":
                    walk(branch, prefix)
            return
        if isinstance(node, dict) and node.get("type") == "record":
            for field in node["fields"]:
                walk(field["type"], f"{prefix}.{field['name']}" if prefix else field["name"])
            return
        if isinstance(node, dict) and node.get("type") == "array":
            walk(node["items"], prefix)
            return
        out.append(prefix)

    walk(schema, "")
    return out
