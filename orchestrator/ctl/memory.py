"""``agogctl memory search``: ranked recall from the deliverable memory."""

from __future__ import annotations

import json
import sys
import urllib.parse
from typing import Any

import click

from orchestrator.core.safe_text import excerpt, neutralise, neutralise_data
from orchestrator.ctl.client import auth_hint, call, target

EXCERPT = 160  # characters of a memory shown per result (the JSON has it all)


def render(body: dict[str, Any]) -> list[str]:
    """The human form: the mode, then one ranked block per result. Memories
    are agents' text: every string is neutralised (orchestrator.core.safe_text)."""
    body = neutralise_data(body)
    head = f"mode: {body.get('mode')}  provider: {body.get('provider')}"
    head += f"  results: {body.get('count', 0)}"
    if body.get("min_similarity"):
        head += f"  min cosine: {body['min_similarity']}"
    lines = [head]
    if body.get("note"):
        lines.append(f"note: {body['note']}")
    for rank, item in enumerate(body.get("results", []), start=1):
        sim = item.get("similarity")
        text = item.get("text_rank")
        scores = f"score {item.get('score', 0):.4f}"
        scores += f"  cosine {sim:.3f}" if sim is not None else "  cosine -"
        scores += f"  text {text:.3f}" if text is not None else "  text -"
        where = " ".join(
            str(x)
            for x in (
                item.get("kind"),
                item.get("agent"),
                item.get("req_number") or "-",
                f"stage {item['stage']}" if item.get("stage") is not None else "",
                (item.get("created_at") or "")[:19],
            )
            if x
        )
        if item.get("title"):
            where += f' "{item["title"]}"'
        content = excerpt(str(item.get("content") or ""), EXCERPT)
        lines += [f"{rank:>3}. {scores}  {where}", f"     {content}"]
    return lines


@click.group()
def memory() -> None:
    """The deliverable memory (what agents recall)."""


@memory.command("search")
@click.argument("text")
@click.option("--agent", "agents", multiple=True, help="Only memories of this agent; repeat.")
@click.option("--kind", "kinds", multiple=True, help="deliverable, qa_failure...; repeat.")
@click.option("--req", default=None, help="Only memories of this REQ.")
@click.option("--max-age-days", type=float, default=None, help="Only memories this recent.")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--mode",
    type=click.Choice(["auto", "hybrid", "vector", "fulltext"]),
    default="auto",
    show_default=True,
    help="auto: hybrid when the query can be embedded, else full text.",
)
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Drop vector matches below this cosine similarity (default: the daemon's cut).",
)
@click.option(
    "--token", envvar="AGOG_API_TOKEN", default=None, help="API token (for AGOG_API_READ_AUTH)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.pass_context
def search(
    ctx: click.Context,
    text: str,
    agents: tuple[str, ...],
    kinds: tuple[str, ...],
    req: str | None,
    max_age_days: float | None,
    limit: int,
    mode: str,
    min_similarity: float | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Search memories for TEXT: ranked results with their scores and the mode used."""
    found = target(ctx, token)
    query: dict[str, Any] = {"q": text, "limit": limit, "mode": mode}
    if agents:
        query["agent"] = ",".join(agents)
    if kinds:
        query["kind"] = ",".join(kinds)
    if req:
        query["req"] = req
    if max_age_days is not None:
        query["max_age_days"] = max_age_days
    if min_similarity is not None:
        query["min_similarity"] = min_similarity
    path = "/api/memory/search?" + urllib.parse.urlencode(query)
    status, body = call(found.url, "GET", path, token=found.token, timeout=60)
    if status >= 300:
        error = str(body.get("error", status))
        if status in (401, 403):
            error = auth_hint(status, error)
        click.echo(f"agogctl: {neutralise(error)}", err=True)
        sys.exit(3 if status in (502, 503, 504) else 5 if status in (401, 403) else 1)
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo("\n".join(neutralise(line) for line in render(body)))
