"""Where the local model's cosine similarities separate related from unrelated.

The memory's vector side returns its nearest rows however far they are; a
cut (``AGOG_MEMORY_MIN_SIMILARITY``) keeps unrelated memories out of search
results and assignments. This measures, for all-MiniLM-L6-v2, the similarity
of each query to memories written about the same topic (related) and about
the other topics (unrelated), and what each candidate cut keeps of both.
The texts are pipeline-like: requirements, deliverables, QA failures and
rejections in one voice, with paraphrases rather than shared keywords.

    .venv/bin/python bench/similarity_cut.py
"""

from __future__ import annotations

import asyncio
import statistics

from orchestrator.embeddings.local import LocalEmbeddings

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "stock": (
        ["negative stock after a customer return", "inventory counts drop below zero"],
        [
            "Returned items made the stock ledger go below zero; fixed by reversing the movement.",
            "QA failure: stock quantity negative when a return is processed twice.",
            "GET /stock returns -3 cartons after a partial refund.",
        ],
    ),
    "labels": (
        ["pallet label printing for the warehouse", "barcode stickers for shipments"],
        [
            "Generate printable pallet labels with barcodes for shipments.",
            "Warehouse label printer integration, ZPL templates for pallets.",
            "Sylvia rejected the label research: no GS1 citation for SSCC codes.",
        ],
    ),
    "auth": (
        ["login with two-factor authentication", "second factor when users sign in"],
        [
            "Added TOTP second factor to the sign-in flow.",
            "MFA enrollment screen for users, with recovery codes.",
            "The login form loses what the user typed after a failed password check.",
        ],
    ),
    "invoices": (
        ["invoice PDF export in the billing module", "billing amounts wrong after a discount"],
        [
            "Billing: export invoices as PDF documents.",
            "Invoice totals are wrong when a discount applies.",
            "Invoice rendering to PDF with the company logo.",
        ],
    ),
    "deploy": (
        ["roll back a failed frontend deploy", "container health check fails after release"],
        [
            "Berry rolled back the frontend container: health check timed out after deploy.",
            "Deploy the frontend container behind the reverse proxy with TLS.",
            "Compose restart loop on the backend after the release; previous image restored.",
        ],
    ),
    "backup": (
        ["nightly database backup duration", "restore the orders database from a dump"],
        [
            "The nightly backup of the orders database finished in 40 minutes.",
            "pg_dump of the orders schema, restored and verified on staging.",
            "Backups are kept for 30 days in object storage.",
        ],
    ),
}
CUTS = (0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def main() -> None:
    provider = LocalEmbeddings()
    await asyncio.to_thread(provider.load)
    queries = [(topic, q) for topic, (qs, _) in TOPICS.items() for q in qs]
    memories = [(topic, m) for topic, (_, ms) in TOPICS.items() for m in ms]
    qv = await provider.embed([q for _, q in queries])
    mv = await provider.embed([m for _, m in memories])
    related: list[float] = []
    unrelated: list[float] = []
    for (qt, _), q in zip(queries, qv, strict=True):
        for (mt, _), m in zip(memories, mv, strict=True):
            (related if qt == mt else unrelated).append(dot(q, m))
    print(f"model {provider.name}: {len(queries)} queries x {len(memories)} memories")
    for name, values in (("related", related), ("unrelated", unrelated)):
        print(
            f"  {name:>9}: n={len(values):>3}  min {min(values):.3f}"
            f"  median {statistics.median(values):.3f}  max {max(values):.3f}"
        )
    print("  cut    related kept   unrelated kept")
    for cut in CUTS:
        kept = sum(v >= cut for v in related) / len(related)
        noise = sum(v >= cut for v in unrelated) / len(unrelated)
        print(f"  {cut:<5}  {kept:>11.0%}   {noise:>14.1%}")


if __name__ == "__main__":
    asyncio.run(main())
