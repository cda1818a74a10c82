"""HL7 v2 (ADT with IHE PAM France, BAR^P01/P05/P12, ORU^R01 including IHE PCD-01) → canonical events.

A pure function of (message text, raw context, options), so that a replay of a raw record yields
byte-identical canonical records with the same event ids (DESIGN §4, §7). The rules every mapper shares
(times, INS, units, event ids) live in formats.clinical and streams.normalize.envelope; this package
only knows where HL7 keeps things.

Why the code looks the way it does:

* Speed. The normalizer must keep up with a whole region's interface engines on a few cores, so the
  message is tokenized once by :mod:`formats.hl7.er7`, each segment used is split once with
  ``str.split``, and records are built as plain dicts in their Avro shape. No regular expression runs
  per field, nothing is validated twice, and hl7apy (milliseconds per message) is not used.
* Strictness where a wrong guess would corrupt data, leniency elsewhere. A missing patient, a bad INS
  key, an unreadable date or a result without a code rejects the message (it goes to the dead-letter
  topic with a precise location); an unknown segment, an odd unit or a text in a numeric result does
  not, because refusing those would stop a feed for something the canonical model can still carry.
* No message value ever appears in an exception: reasons name HL7 positions and rules only, since
  rejections end up in logs, metrics and dead-letter metadata (DESIGN §6).

The decisions (what A08, cancellations, A40, NTE, PCD-01 containment rows become) are listed in
docs/mapping-hl7.md.

The package is split by what a reviewer changes together: reading fields (fields), what a run shares
(state), one module per canonical record family (patient, encounter, merges, observations, results,
diagnoses: DG1 and PR1) and the entry point that chooses among them (dispatch). Imports go one way
only, from dispatch down to fields. HL7 times, fast paths included, are read by formats.clinical.times alone.
"""

from __future__ import annotations

from formats.clinical.times import fast_hl7_date_text, fast_hl7_ts
from streams.normalize.hl7.dispatch import map_hl7

__all__ = ["fast_hl7_date_text", "fast_hl7_ts", "map_hl7"]
