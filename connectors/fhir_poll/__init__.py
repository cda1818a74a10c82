"""The FHIR puller: incremental sync of warehouse (EDS) FHIR servers into ``ingest.fhir.raw``.

``config`` reads the sources file, ``records`` turns resources into raw records (pure), ``checkpoint``
keeps the per (source, type) position in a compacted topic, ``auth`` and ``http`` speak to the source,
``search`` and ``bulk`` are the two sync modes, and ``puller`` runs them for one source.
"""
