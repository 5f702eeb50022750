"""Deliverable memory (Layer 4): what the pipeline remembers, and who gets it.

Pure modules (no I/O; unit- and property-tested): ``model`` (shapes),
``chunking`` (hashes and chunks), ``capture`` (what is remembered, as
drafts), ``fusion`` (reciprocal rank fusion), ``policy`` (which memories each
stage gets), ``retention`` (rules), ``outage`` (warn once per outage),
``sql`` (recall statements).

I/O modules: ``writes`` (rows inside the caller's transaction), ``embedder``
(embeds pending rows after commit; the backfill), ``dimension`` (the vector
column's dimension against the provider's), ``recall`` (hybrid search),
``context`` (per-REQ recall for assignments), ``prune`` (retention),
``service`` (wires it all into the daemon).
"""
