"""``agogctl agents init``: role definitions from the registry, where each CLI reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from orchestrator.core import registry
from orchestrator.core.roles import role_text
from orchestrator.ctl.commands import main

PIPELINE = registry.load()


def init(directory: Path, cli: str, *more: str) -> str:
    result = CliRunner().invoke(
        main, ["agents", "init", "--cli", cli, "--dir", str(directory), *more]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_claude_gets_one_agent_file_each_with_its_frontmatter(tmp_path: Path) -> None:
    out = init(tmp_path, "claude")
    for stage in (*PIPELINE.stages, *PIPELINE.followups):
        path = tmp_path / ".claude" / "agents" / f"{stage.agent}.md"
        text = path.read_text()
        front = re.match(r"---\nname: (\w+)\ndescription: (.+)\n---\n", text)
        assert front and front.group(1) == stage.agent, text[:200]
        assert f"written    {path}" in out
        # The notice contract, as JSON an agent can copy.
        block = re.search(r"```json\n(.*?)\n```", text, re.S)
        assert block is not None
        contract = json.loads(block.group(1))
        assert contract["agent"] == stage.agent and contract["status"] == "COMPLETE"
        if stage.gate == "critique":
            assert "critique_verdict" in contract
        if stage.gate == "qa":
            assert {"tests_passed", "rework_agents"} <= set(contract)
        assert "Never write outside it" in text


def test_an_edited_file_is_kept_unless_forced_and_an_unedited_one_is_updated(
    tmp_path: Path,
) -> None:
    init(tmp_path, "claude")
    roy = tmp_path / ".claude" / "agents" / "roy.md"
    jen = tmp_path / ".claude" / "agents" / "jen.md"
    roy.write_text(roy.read_text() + "\nAlways write tests first.\n")
    out = init(tmp_path, "claude")
    assert f"kept (edited; --force replaces it) {roy}" in out
    assert f"unchanged  {jen}" in out
    assert "Always write tests first." in roy.read_text()
    out = init(tmp_path, "claude", "--force")
    assert f"replaced   {roy}" in out and "Always write tests first." not in roy.read_text()


def test_codex_and_gemini_get_one_shared_file(tmp_path: Path) -> None:
    for cli, name in (("codex", "AGENTS.md"), ("gemini", "GEMINI.md")):
        init(tmp_path, cli)
        text = (tmp_path / name).read_text()
        for stage in PIPELINE.stages:
            assert f"## {stage.agent}: {stage.name}" in text
        assert text.count("```json") == len(PIPELINE.stages) + len(PIPELINE.followups)


def test_role_texts_come_from_the_registry_not_from_code() -> None:
    data = registry.tomllib.loads(registry.DEFAULT_PIPELINE_FILE.read_text())
    data["stages"][5] = {**data["stages"][5], "name": "Analytics", "role": "analytics"}
    renamed = registry.from_mapping(data)
    stage = renamed.stage(5)
    text = role_text(renamed, stage)
    assert text.startswith(f"# {stage.agent}: Analytics (analytics)")
    assert "the Analytics stage" in text and "Do the analytics work" in text
