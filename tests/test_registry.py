"""The canonical stage registry: pure, property-tested."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core import registry
from orchestrator.core.registry import RegistryError, parse_duration, subject_matches

SEVEN = ["cynthia", "sylvia", "roy", "jen", "billy", "priya", "berry"]


def test_default_pipeline_is_the_seven_stages_then_tim() -> None:
    p = registry.load()
    assert [s.agent for s in p.stages] == SEVEN
    assert [s.index for s in p.stages] == list(range(7))
    assert [s.role for s in p.stages] == [
        "research",
        "critique",
        "backend",
        "frontend",
        "qa",
        "statistics",
        "devops",
    ]
    assert [(f.agent, f.after) for f in p.followups] == [("tim", "berry")]
    assert [r.agent for r in p.reporters] == ["miki"]
    assert p.stage_for_agent("sylvia").gate == "critique"
    assert p.stage_for_agent("billy").gate == "qa"
    assert p.stage_for_agent("berry").gate == "deploy"
    assert p.next_stage(6) is None and p.next_stage(0).agent == "sylvia"


def test_streams_match_the_old_daemon_plus_missing_ones() -> None:
    p = registry.load()
    names = {s.name for s in p.streams}
    assert {
        "agog_features_research",
        "agog_features_critique",
        "agog_features_backend",
        "agog_features_frontend",
        "agog_features_qa",
        "agog_features_statistics",
        "agog_features_devops",
        "agog_orchestration_events",
        "agog_strategic_decisions",
        "agog_strategic_escalations",
        "agog_features_documentation",
        "agog_requirements",
    } == names
    qa = p.stream("agog_features_qa")
    assert (qa.max_msgs, qa.max_bytes, qa.max_msg_size) == (10000, 1 << 30, 10 << 20)
    assert qa.max_age == 7 * 86400 and qa.duplicate_window == 120
    assert p.stream("agog_strategic_decisions").max_age == 30 * 86400
    assert p.stream("agog_strategic_escalations").max_age == 90 * 86400
    assert set(p.stream("agog_features_devops").subjects) == {
        "agog.deliverables.berry.>",
        "agog.deliverables.miki.>",
    }


def test_every_used_subject_is_bound_by_exactly_one_stream() -> None:
    p = registry.load()
    subjects = p.sample_subjects()
    assert "agog.deliverables.billy.qa.REQ-SAMPLE-1" in subjects
    assert "agog.strategic.escalations.human" in subjects
    assert "agog.requirements.new" in subjects
    for subject in subjects:
        assert len(p.streams_binding(subject)) == 1, subject


def test_deliverable_subject_follows_the_old_contract() -> None:
    p = registry.load()
    billy = p.stage_for_agent("billy")
    assert p.deliverable_subject(billy, "REQ-ITEM-001") == "agog.deliverables.billy.qa.REQ-ITEM-001"
    assert (
        p.deliverable_subject(p.reporters[0], "feature") == "agog.deliverables.miki.devops.feature"
    )


@pytest.mark.parametrize("bad", ["REQ.1", "REQ*", "REQ>", "REQ 1", "REQ/1", ""])
def test_subject_fields_must_be_single_safe_tokens(bad: str) -> None:
    with pytest.raises(ValueError, match="safe subject token"):
        registry.load().subject("decision", req=bad)


def _raw() -> dict:
    return tomllib.loads(registry.DEFAULT_PIPELINE_FILE.read_text())


def test_an_eleven_stage_pipeline_is_a_configuration_change(tmp_path: Path) -> None:
    data = _raw()
    extra = [
        ("liz", "frontend_qa"),
        ("todd", "security"),
        ("vic", "compliance"),
        ("zed", "release"),
    ]
    stages = data["stages"]
    for i, (agent, role) in enumerate(extra):
        data["streams"].append(
            {"name": f"agog_features_{role}", "subjects": [f"agog.deliverables.{agent}.>"]}
        )
        stages.append(
            {
                "index": 7 + i,
                "name": role.title(),
                "agent": agent,
                "role": role,
                "stream": f"agog_features_{role}",
                "timeout": "30m",
                "retries": 1,
            }
        )
    text = _to_toml(data)
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    p = registry.load(path)
    assert len(p.stages) == 11 and p.stages[-1].agent == "zed"
    assert p.streams_binding("agog.deliverables.liz.frontend_qa.REQ-1") == [
        "agog_features_frontend_qa"
    ]
    assert p.runner_consumer("zed").name == "agogd_runner_zed"


def _to_toml(data: dict) -> str:
    """A tiny TOML writer for the test (tomllib only reads)."""
    import json

    def val(v: object) -> str:
        return json.dumps(v)

    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {val(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {val(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["stages"][2].update(index=5), "index"),
        (lambda d: d["stages"][3].update(stream="agog_nowhere"), "unknown stream"),
        (lambda d: d["stages"][1].update(gate="vibes"), "unknown gate"),
        (
            lambda d: d["streams"].append(
                {"name": "agog_dup", "subjects": ["agog.deliverables.roy.>"]}
            ),
            "overlapping",
        ),
        (
            lambda d: d["streams"].__setitem__(
                0, {"name": "agog_features_research", "subjects": ["agog.other.>"]}
            ),
            "bound by 0",
        ),
        (lambda d: d["stages"][0].update(agent="cyn.thia"), "safe subject token"),
        (lambda d: d["stages"][0].update(timeout="soon"), "not a duration"),
        (lambda d: d["stages"][0].pop("agent"), "missing the key"),
    ],
)
def test_inconsistent_pipelines_are_refused(tmp_path: Path, mutate, message: str) -> None:
    _refused(tmp_path, mutate, message)


def _refused(tmp_path: Path, mutate, message: str) -> None:
    data = _raw()
    mutate(data)
    path = tmp_path / "pipeline.toml"
    path.write_text(_to_toml(data))
    with pytest.raises(RegistryError, match=message):
        registry.load(path)


def test_each_agent_has_a_runner_consumer_named_from_the_template() -> None:
    p = registry.load()
    engine = {c.name for c in p.consumers}
    for stage in (*p.stages, *p.followups):
        spec = p.runner_consumer(stage.agent)
        # The names existing deployments have; not one of the engine's consumers.
        assert spec.name == f"agogd_runner_{stage.agent}" and spec.name not in engine
        assert spec.streams == ("agog_orchestration_events",)
        assert spec.filter_subject == f"agog.orchestration.events.stage.started.{stage.agent}.>"
        assignment = p.subject("assignment", agent=stage.agent, req="REQ-1")
        assert subject_matches(spec.filter_subject, assignment)
        # Every stored assignment, redelivered for as long as it is nak'd.
        assert (spec.deliver, spec.max_deliver, spec.ack_wait) == ("all", -1, 60)
        assert spec.description == f"agogd runner: {stage.agent}'s stage assignments"
    assert {c.deliver for c in p.consumers} == {"backfill"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["runner_consumer"].update(name="agogd_runner"), "does not contain"),
        (lambda d: d["runner_consumer"].update(name="runner_{agent}_{role}"), "cannot be filled"),
        (lambda d: d["runner_consumer"].update(name="runner_{agent}_{"), "cannot be filled"),
        (lambda d: d["runner_consumer"].update(name="agogd.{agent}"), "safe consumer name"),
        (lambda d: d["runner_consumer"].update(stream="agog_requirements"), "does not store"),
        (lambda d: d["runner_consumer"].update(stream="agog_nowhere"), "does not store"),
        (lambda d: d["runner_consumer"].update(deliver="latest"), "deliver 'latest'"),
        (lambda d: d["runner_consumer"].update(max_deliver=0), "max_deliver"),
        (lambda d: d["runner_consumer"].pop("stream"), "missing the key"),
        (lambda d: d.pop("runner_consumer"), r"no \[runner_consumer\]"),
        (lambda d: d["consumers"][0].update(deliver="sometimes"), "deliver 'sometimes'"),
    ],
)
def test_a_bad_runner_consumer_is_refused(tmp_path: Path, mutate, message: str) -> None:
    _refused(tmp_path, mutate, message)


def test_timeout_overrides() -> None:
    p = registry.load(timeouts={"roy": 60, "tim": 30})
    assert p.stage_for_agent("roy").timeout == 60
    assert p.stage_for_agent("tim").timeout == 30
    with pytest.raises(RegistryError, match="unknown agent"):
        registry.load(timeouts={"bob": 1})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("2m", 120), ("2h", 7200), ("7d", 604800), ("1.5h", 5400), (30, 30)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "-1s", "0", "1w", True])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(RegistryError):
        parse_duration(bad)  # type: ignore[arg-type]


# --- subject matching against an independent regex oracle --------------------
token = st.sampled_from(["a", "b", "c", "REQ-1"])
pattern_token = st.sampled_from(["a", "b", "c", "REQ-1", "*"])


def _oracle(pattern: str, subject: str) -> bool:
    parts = pattern.split(".")
    rx = ""
    for i, part in enumerate(parts):
        sep = r"\." if i else ""
        if part == ">":
            rx += sep + r"[^.]+(\.[^.]+)*"
        elif part == "*":
            rx += sep + r"[^.]+"
        else:
            rx += sep + re.escape(part)
    return re.fullmatch(rx, subject) is not None


@given(
    st.lists(pattern_token, min_size=1, max_size=4),
    st.booleans(),
    st.lists(token, min_size=1, max_size=6),
)
def test_subject_matching_agrees_with_oracle(
    p_tokens: list[str], tail: bool, s_tokens: list[str]
) -> None:
    pattern = ".".join([*p_tokens, ">"] if tail else p_tokens)
    subject = ".".join(s_tokens)
    assert subject_matches(pattern, subject) == _oracle(pattern, subject)


@given(
    st.lists(pattern_token, min_size=1, max_size=3),
    st.booleans(),
    st.lists(pattern_token, min_size=1, max_size=3),
    st.booleans(),
    st.lists(token, min_size=1, max_size=5),
)
def test_overlap_is_implied_by_a_common_match(
    a: list[str], a_tail: bool, b: list[str], b_tail: bool, s: list[str]
) -> None:
    pa = ".".join([*a, ">"] if a_tail else a)
    pb = ".".join([*b, ">"] if b_tail else b)
    subject = ".".join(s)
    if subject_matches(pa, subject) and subject_matches(pb, subject):
        assert registry.patterns_overlap(pa, pb)


def test_no_agent_name_is_written_in_the_code() -> None:
    """The registry is the whole truth: no string in orchestrator/ or workers/
    (docstrings aside) is an agent's name; agents are found by stage, gate
    (qa, deploy), rework_to, recall or reporter in pipeline.toml."""
    repo = Path(__file__).resolve().parent.parent
    agents = set(registry.load().agents)
    found = []
    for base in ("orchestrator", "workers"):
        for path in sorted((repo / base).rglob("*.py")):
            tree = ast.parse(path.read_text())
            docs = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(
                    node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                )
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            found += [
                f"{path.relative_to(repo)}:{node.lineno}: {node.value!r}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in agents
                and id(node) not in docs
            ]
    assert not found, "agent names in code:\n" + "\n".join(found)
