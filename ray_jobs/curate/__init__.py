"""Curate a corpus on Ray Data: read, run per-document steps, dedup, write Parquet.

Input and output are folders or ``s3://`` URIs, read and written through ``llm.storage``: pods
share no disk, so everything a later task reads is on the output URI. Phase 1 (``parts``) runs
each input part (file × part index) as one task: read (JSONL, Parquet, WARC, WET), run the
per-document steps in the spec's order, write ``_parts/<key>.parquet`` and then the completion
marker ``_done/<key>.json``; a rerun skips parts with a marker. Phase 2 (``corpus``) reads every
part file and runs the corpus steps over the whole corpus (exact dedup, MinHash dedup, a
top-fraction quality cut; in the spec's order), then ``output`` has the workers write kept rows
to ``data/``, the rest to ``rejected/`` with their reason, and ``job`` the funnel per step to
``stats.json``.

The steps are the blocks of ``llm.data.registry``; ``spec`` and ``steps`` turn them into the
job spec. Importing this package imports no Ray: the control plane reads ``spec`` from it.
"""
