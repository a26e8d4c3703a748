"""The agent loop end to end: the real `anthropic` SDK against the scripted fake Messages API on
loopback, tool calls carried out in a real bubblewrap sandbox. Nothing is mocked.

Each test scripts the model's turns (`FakeAnthropic` scenarios, chosen by a key in the first
message) and checks three things: what the agent returned, what the sandbox really holds, and
what the model was really sent (the request bodies the fake recorded).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import pytest

from backspace.orchestrator.agent import (
    Agent,
    AgentLimits,
    AgentResult,
    AnthropicModel,
    ModelError,
    prompts,
)
from backspace.orchestrator.agent.bash import CWD_MARKER
from backspace.orchestrator.sandboxes.local import LocalSandbox
from tests.fakes.anthropic import (
    CutStream,
    Fail,
    FakeAnthropic,
    Hang,
    MidStreamError,
    Reply,
    Step,
    Text,
    ToolCall,
)

MODEL = "claude-sonnet-4-6"
EDITOR = "str_replace_based_edit_tool"
Events = list[tuple[str, dict[str, Any]]]


# --- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="test-key") as server:
        yield server


async def run_agent(
    fake: FakeAnthropic,
    sandbox: LocalSandbox,
    first_message: str,
    steps: Sequence[Step],
    *,
    key: str | None = None,
    tool_mode: Literal["builtin", "schema"] = "builtin",
    retries: int = 3,
    timeout: float = 5.0,
    events: Events | None = None,
    **limits: Any,
) -> tuple[AgentResult, Events]:
    """Script `steps` under `key` (default: the first word of the message) and run the agent."""
    fake.scenarios[key or first_message.split()[0]] = steps
    model = AnthropicModel(
        name=MODEL,
        api_key="test-key",
        base_url=fake.url,
        retries=retries,
        retry_delay=0.01,
        timeout=timeout,
    )
    collected: Events = [] if events is None else events
    limits.setdefault("max_turns", 20)
    limits.setdefault("command_timeout", 10.0)
    agent = Agent(
        model,
        sandbox,
        lambda kind, data: collected.append((kind, data)),
        AgentLimits(**limits),
        tool_mode=tool_mode,
    )
    try:
        return await agent.run(first_message), collected
    finally:
        await model.close()


def finish(title: str = "Add the change", body: str = "What and why.", **extra: str) -> ToolCall:
    return ToolCall("finish", {"title": title, "body": body, **extra}, id="toolu_finish")


def bash(command: str, id: str) -> ToolCall:
    return ToolCall("bash", {"command": command}, id=id)


def edit(id: str, **tool_input: Any) -> ToolCall:
    return ToolCall(EDITOR, tool_input, id=id)


def results_by_id(requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every tool_result the model was sent, by tool_use id."""
    found: dict[str, dict[str, Any]] = {}
    for body in requests:
        for message in body["messages"]:
            if message["role"] != "user" or not isinstance(message["content"], list):
                continue
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    found.setdefault(block["tool_use_id"], block)
    return found


def of_type(events: Events, kind: str) -> list[dict[str, Any]]:
    return [data for event_type, data in events if event_type == kind]


def assert_protocol(requests: list[dict[str, Any]]) -> None:
    """What the Messages API insists on, checked on every request that was sent.

    Every tool_use of an assistant turn is answered, in order and first, in the next user message;
    the final request ends with a user message; exactly one message block carries the moving
    cache breakpoint, on the last block of the last message.
    """
    assert requests
    for body in requests:
        messages = body["messages"]
        assert messages[0]["role"] == "user" and messages[-1]["role"] == "user"
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
            if not ids:
                continue
            answer = messages[index + 1]
            assert answer["role"] == "user"
            leading = answer["content"][: len(ids)]
            assert [b["type"] for b in leading] == ["tool_result"] * len(ids)
            assert [b["tool_use_id"] for b in leading] == ids
        marked = [
            (i, j)
            for i, message in enumerate(messages)
            for j, block in enumerate(message["content"])
            if "cache_control" in block
        ]
        assert marked == [(len(messages) - 1, len(messages[-1]["content"]) - 1)], marked
        assert messages[-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def everything_sent_and_emitted(requests: list[dict[str, Any]], events: Events) -> str:
    return json.dumps(requests) + json.dumps(events, default=str)


# --- a whole run ------------------------------------------------------------------------------
async def test_a_scripted_run_edits_the_sandbox_and_reports_each_step(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        Reply(
            [
                Text("I'll set up the package first."),
                bash("mkdir -p pkg && printf 'print(1)\\n' > pkg/main.py && ls pkg", "toolu_b1"),
            ],
            usage={"input_tokens": 1000, "output_tokens": 100, "cache_creation_input_tokens": 500},
        ),
        Reply(
            [
                edit(
                    "toolu_c1",
                    command="create",
                    path="pkg/greet.py",
                    file_text="def greet():\n    return 'hi'\n",
                ),
                edit(
                    "toolu_s1",
                    command="str_replace",
                    path="pkg/greet.py",
                    old_str="'hi'",
                    new_str="'hello'",
                ),
                edit("toolu_v1", command="view", path="/workspace/pkg/greet.py"),
            ]
        ),
        Reply(
            [
                Text("The greeting is in place."),
                finish("Add a greeting", "Adds `pkg/greet.py`.", tests="ran python -c"),
            ],
            usage={"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 2000},
        ),
    ]
    result, events = await run_agent(fake, sandbox, "task-scripted: add a greeting", steps)

    assert result.outcome == "finished", result.message
    assert (result.title, result.body, result.tests) == (
        "Add a greeting",
        "Adds `pkg/greet.py`.",
        "ran python -c",
    )
    assert result.turns == 3
    greet = await sandbox.read_file("/workspace/pkg/greet.py")
    assert greet == b"def greet():\n    return 'hello'\n"
    assert await sandbox.read_file("/workspace/pkg/main.py") == b"print(1)\n"

    assert [kind for kind, _ in events] == [
        "progress",
        "AI Message",
        "usage",
        "output",
        "Tool: Bash",
        "progress",
        "usage",
        "Tool: Write",
        "Tool: Edit",
        "Tool: Read",
        "progress",
        "AI Message",
        "usage",
    ]
    progress = of_type(events, "progress")
    assert [p["stage"] for p in progress] == ["agent"] * 3
    assert [p["message"] for p in progress] == ["Model turn 1", "Model turn 2", "Model turn 3"]
    percentages = [p["percentage"] for p in progress]
    assert percentages[0] == 30 and percentages == sorted(percentages)
    assert all(30 <= p < 80 for p in percentages)
    assert [m["message"] for m in of_type(events, "AI Message")] == [
        "I'll set up the package first.",
        "The greeting is in place.",
    ]
    (bash_event,) = of_type(events, "Tool: Bash")
    assert bash_event["command"].startswith("mkdir -p pkg")
    assert bash_event["output"] == "main.py\n"
    (live,) = of_type(events, "output")
    assert live["output"] == "main.py\n" and live["call_id"] == bash_event["call_id"] != ""
    assert bash_event["exit_code"] == 0
    assert isinstance(bash_event["duration_ms"], int) and bash_event["duration_ms"] >= 0
    assert of_type(events, "Tool: Write") == [
        {"filepath": "pkg/greet.py", "content": "def greet():\n    return 'hi'\n"}
    ]
    assert of_type(events, "Tool: Edit") == [
        {"filepath": "pkg/greet.py", "old_str": "'hi'", "new_str": "'hello'"}
    ]
    assert of_type(events, "Tool: Read") == [{"filepath": "pkg/greet.py"}]

    usage = of_type(events, "usage")
    assert [u["input_tokens"] for u in usage] == [1000, 1100, 1200]
    assert [u["output_tokens"] for u in usage] == [100, 120, 140]
    assert [u["cache_creation_input_tokens"] for u in usage] == [500, 500, 500]
    assert [u["cache_read_input_tokens"] for u in usage] == [0, 0, 2000]
    costs = [u["cost_usd"] for u in usage]
    assert costs[0] > 0 and costs[0] < costs[1] < costs[2]
    # Sonnet: $3 in, $15 out, cache writes 1.25x and reads 0.1x the input price, per MTok.
    assert costs[0] == pytest.approx((1000 * 3 + 500 * 3.75 + 100 * 15) / 1e6)
    assert costs[2] == pytest.approx(result.usage.cost_usd, abs=1e-6)
    assert result.usage.input_tokens == 1200 and result.usage.output_tokens == 140

    requests = fake.requests_for("task-scripted:")
    assert len(requests) == 3
    assert_protocol(requests)
    first = requests[0]
    assert first["model"] == MODEL and first["stream"] is True
    assert first["max_tokens"] == 16000
    assert first["tools"][:2] == [
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": EDITOR},
    ]
    finish_tool = first["tools"][2]
    assert finish_tool["name"] == "finish" and "type" not in finish_tool
    assert finish_tool["input_schema"]["required"] == ["title", "body"]
    assert finish_tool["cache_control"] == {"type": "ephemeral"}
    (system,) = first["system"]
    assert system["type"] == "text" and system["cache_control"] == {"type": "ephemeral"}
    assert "/workspace" in system["text"] and "10 seconds" in system["text"]
    assert first["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "task-scripted: add a greeting",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        }
    ]
    # The breakpoint moved on: the first message no longer carries it once others follow.
    assert "cache_control" not in requests[1]["messages"][0]["content"][0]

    results = results_by_id(requests)
    assert results["toolu_b1"]["content"] == "main.py\n\n[exit code 0]"
    for tool_id in ("toolu_b1", "toolu_c1", "toolu_s1", "toolu_v1"):
        assert "is_error" not in results[tool_id], results[tool_id]
    assert results["toolu_c1"]["content"] == "File created successfully at: pkg/greet.py"
    assert "     2\t    return 'hello'" in results["toolu_s1"]["content"]
    assert results["toolu_v1"]["content"] == (
        "Here's the result of running `cat -n` on pkg/greet.py:\n"
        "     1\tdef greet():\n     2\t    return 'hello'\n"
    )
    # Far from every limit, the model is never told to wrap up.
    assert "Wrap up" not in json.dumps(requests)


async def test_schema_mode_sends_custom_tools_and_runs_them_the_same(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        Reply([bash("echo made > made.txt", "toolu_b"), edit("toolu_v", command="view", path=".")]),
        Reply([finish()]),
    ]
    result, events = await run_agent(fake, sandbox, "task-schema: go", steps, tool_mode="schema")
    assert result.outcome == "finished"
    assert await sandbox.read_file("/workspace/made.txt") == b"made\n"

    requests = fake.requests_for("task-schema:")
    assert_protocol(requests)
    tools = requests[0]["tools"]
    assert [t["name"] for t in tools] == ["bash", EDITOR, "finish"]
    for tool in tools:
        assert "type" not in tool, tool
        assert tool["input_schema"]["type"] == "object"
        assert tool["description"]
    assert "command" in tools[0]["input_schema"]["properties"]
    assert tools[1]["input_schema"]["required"] == ["command", "path"]
    assert "insert_text" in tools[1]["input_schema"]["properties"]
    assert "cache_control" not in tools[0] and tools[2]["cache_control"] == {"type": "ephemeral"}
    results = results_by_id(requests)
    assert "made.txt" in results["toolu_v"]["content"]
    assert of_type(events, "Tool: Read") == [{"filepath": "."}]


async def test_tool_mistakes_come_back_as_errors_and_the_run_goes_on(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        Reply(
            [
                bash("printf 'x = 1\\ny = 2\\nx = 1\\n' > dup.py", "toolu_setup"),
                edit("toolu_none", command="str_replace", path="dup.py", old_str="z = 3"),
                edit("toolu_many", command="str_replace", path="dup.py", old_str="x = 1"),
                edit("toolu_up", command="view", path="../../etc/passwd"),
                edit("toolu_abs", command="view", path="/etc/passwd"),
                edit("toolu_write", command="create", path="/etc/passwd", file_text="pwned\n"),
                ToolCall("git_push", {"force": True}, id="toolu_unknown"),
                ToolCall("finish", {"body": "no title"}, id="toolu_bad_finish"),
            ]
        ),
        Reply([finish("Handle duplicates")]),
    ]
    result, events = await run_agent(fake, sandbox, "task-mistakes: try things", steps)
    assert result.outcome == "finished" and result.title == "Handle duplicates"
    assert result.turns == 2
    assert await sandbox.read_file("/workspace/dup.py") == b"x = 1\ny = 2\nx = 1\n"

    requests = fake.requests_for("task-mistakes:")
    assert len(requests) == 2
    assert_protocol(requests)
    results = results_by_id(requests)
    assert "is_error" not in results["toolu_setup"]
    expected = {
        "toolu_none": "did not appear verbatim in dup.py",
        "toolu_many": "Multiple occurrences of old_str in lines [1, 3]",
        "toolu_up": "../../etc/passwd is outside the repository",
        "toolu_abs": "/etc/passwd is outside the repository",
        "toolu_write": "/etc/passwd is outside the repository",
        "toolu_unknown": "unknown tool 'git_push'",
        "toolu_bad_finish": "`title` is required",
    }
    for tool_id, needle in expected.items():
        assert results[tool_id].get("is_error") is True, results[tool_id]
        assert needle in results[tool_id]["content"], results[tool_id]
    assert "root:" not in json.dumps(requests)
    edit_errors = [e for e in of_type(events, "Tool: Edit") if "error" in e]
    assert [e["filepath"] for e in edit_errors] == ["dup.py", "dup.py"]
    assert [e["filepath"] for e in of_type(events, "Tool: Read")] == [
        "../../etc/passwd",
        "/etc/passwd",
    ]
    assert "outside the repository" in of_type(events, "Tool: Write")[0]["error"]


# --- bash -------------------------------------------------------------------------------------
async def test_the_working_directory_persists_and_the_marker_stays_hidden(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        Reply([bash("mkdir -p subdir/inner && cd subdir", "toolu_cd")]),
        Reply([bash("pwd", "toolu_pwd")]),
        Reply([bash("cd inner && pwd; cd /nonexistent; echo still", "toolu_cd2")]),
        Reply([bash("pwd", "toolu_pwd2")]),
        Reply([finish()]),
    ]
    result, events = await run_agent(fake, sandbox, "task-cwd: move around", steps)
    assert result.outcome == "finished"
    requests = fake.requests_for("task-cwd:")
    assert_protocol(requests)
    results = results_by_id(requests)
    assert results["toolu_cd"]["content"] == "(no output)\n[exit code 0]"
    assert results["toolu_pwd"]["content"] == "/workspace/subdir\n\n[exit code 0]"
    assert results["toolu_cd2"]["content"].startswith("/workspace/subdir/inner\n")
    assert "still" in results["toolu_cd2"]["content"]
    assert results["toolu_pwd2"]["content"] == "/workspace/subdir/inner\n\n[exit code 0]"
    assert [e["output"] for e in of_type(events, "Tool: Bash")][1] == "/workspace/subdir\n"
    assert CWD_MARKER not in everything_sent_and_emitted(requests, events)


async def test_a_huge_output_is_cut_head_and_tail(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    command = "printf 'HEAD-'; head -c 100000 /dev/zero | tr '\\0' x; printf -- '-TAIL'"
    steps: list[Step] = [Reply([bash(command, "toolu_big")]), Reply([finish()])]
    result, events = await run_agent(fake, sandbox, "task-big: print a lot", steps)
    assert result.outcome == "finished"
    requests = fake.requests_for("task-big:")
    content = results_by_id(requests)["toolu_big"]["content"]
    assert content.startswith("HEAD-xxx")
    assert content.endswith("xxx-TAIL\n[exit code 0]")
    assert "characters cut from the middle of the output" in content
    assert 16000 < len(content) < 16500
    (event,) = of_type(events, "Tool: Bash")
    assert event["truncated"] is True
    assert len(event["output"]) <= 8000 and event["output"].endswith("-TAIL")
    assert CWD_MARKER not in everything_sent_and_emitted(requests, events)


async def test_a_command_past_its_timeout_is_killed_and_the_run_goes_on(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        Reply([bash("sleep 30", "toolu_sleep")]),
        Reply([bash("echo after; exit 3", "toolu_exit")]),
        Reply([finish()]),
    ]
    started = time.monotonic()
    result, events = await run_agent(
        fake, sandbox, "task-timeout: wait", steps, command_timeout=1.0
    )
    assert time.monotonic() - started < 10
    assert result.outcome == "finished" and result.turns == 3
    results = results_by_id(fake.requests_for("task-timeout:"))
    slept = results["toolu_sleep"]
    assert slept.get("is_error") is True
    assert "timed out after 1 s" in slept["content"] and "[exit code 124]" in slept["content"]
    exited = results["toolu_exit"]
    assert "is_error" not in exited
    assert exited["content"] == "after\n\n[exit code 3]"
    sleep_event, exit_event = of_type(events, "Tool: Bash")
    assert sleep_event["timed_out"] is True and sleep_event["exit_code"] == 124
    assert 900 <= sleep_event["duration_ms"] < 9000
    assert exit_event["exit_code"] == 3 and "timed_out" not in exit_event


async def test_shell_metacharacters_in_the_task_are_sent_verbatim_and_never_run(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    task = (
        "task-meta: fix $(touch /workspace/pwned1) ; `touch /workspace/pwned2` && "
        "touch /workspace/pwned3 | $(rm -rf /) ; `id` 'quote\" \\n"
    )
    first = prompts.first_message(
        task, repo="acme/widgets", base_branch="main", context={}, tree=""
    )
    steps: list[Step] = [
        Reply([bash("ls -A /workspace; echo listed", "toolu_ls")]),
        Reply([finish("Fix `$(id)` handling", "Body with $(whoami) and `id`.")]),
    ]
    result, _ = await run_agent(fake, sandbox, first, steps, key="task-meta:")
    assert result.title == "Fix `$(id)` handling"
    assert result.body == "Body with $(whoami) and `id`."

    requests = fake.requests_for("task-meta:")
    sent = requests[0]["messages"][0]["content"][0]["text"]
    assert sent == first and f"<task>\n{task}\n</task>" in sent
    assert results_by_id(requests)["toolu_ls"]["content"] == "listed\n\n[exit code 0]"
    listing = await sandbox.exec("ls -A /workspace")
    assert listing.output == ""


# --- limits -----------------------------------------------------------------------------------
async def test_the_turn_limit_ends_the_run_after_a_wrap_up_note(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [Reply([bash("true", f"toolu_t{n}")]) for n in range(5)]
    result, events = await run_agent(fake, sandbox, "task-turns: loop", steps, max_turns=2)
    assert result.outcome == "turn_limit"
    assert result.turns == 2
    assert "turn limit" in result.message and "2 model turns" in result.message
    assert result.title is None

    requests = fake.requests_for("task-turns:")
    assert len(requests) == 2
    assert_protocol(requests)
    first_turn = json.dumps(requests[0])
    assert "Wrap up" not in first_turn
    last = requests[1]["messages"][-1]["content"]
    assert [b["type"] for b in last] == ["tool_result", "text"]
    assert "Wrap up" in last[1]["text"] and "only 1 model turn(s) are left" in last[1]["text"]
    assert len(of_type(events, "Tool: Bash")) == 2


async def test_a_near_deadline_is_named_in_the_wrap_up_note(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [Reply([bash("true", "toolu_d")]), Reply([finish()])]
    result, _ = await run_agent(
        fake, sandbox, "task-deadline: hurry", steps, deadline=time.monotonic() + 30
    )
    assert result.outcome == "finished"
    last = fake.requests_for("task-deadline:")[1]["messages"][-1]["content"]
    assert "Wrap up" in last[-1]["text"]
    assert "less than a minute" in last[-1]["text"]
    assert "turn(s) are left" not in last[-1]["text"]


async def test_the_spend_limit_ends_the_run(fake: FakeAnthropic, sandbox: LocalSandbox) -> None:
    big = {"input_tokens": 150_000, "output_tokens": 10}  # $0.45 and change on Sonnet
    steps: list[Step] = [
        Reply([bash("true", "toolu_c1")], usage=big),
        Reply([bash("true", "toolu_c2")], usage=big),
        Reply([finish()]),
    ]
    result, events = await run_agent(fake, sandbox, "task-cost: spend", steps, max_cost_usd=0.5)
    assert result.outcome == "cost_limit"
    assert "spend limit" in result.message and "$0.50" in result.message
    assert result.turns == 2 and result.usage.cost_usd >= 0.5
    requests = fake.requests_for("task-cost:")
    assert len(requests) == 2
    note = requests[1]["messages"][-1]["content"][-1]["text"]
    assert "Wrap up" in note and "budget is spent" in note
    assert of_type(events, "usage")[-1]["cost_usd"] == pytest.approx(0.9003, abs=1e-6)


async def test_ending_without_finish_is_nudged_once_then_ends(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        Reply([Text("I think it is done.")]),
        Reply([Text("Yes, done.")]),
        Reply([finish()]),
    ]
    result, events = await run_agent(fake, sandbox, "task-ended: chat", steps)
    assert result.outcome == "ended"
    assert "without calling finish" in result.message
    assert result.turns == 2
    requests = fake.requests_for("task-ended:")
    assert len(requests) == 2
    assert_protocol(requests)
    nudge = requests[1]["messages"][-1]
    assert nudge["role"] == "user"
    assert "without calling `finish`" in nudge["content"][0]["text"]
    assert "without calling `finish`" not in json.dumps(requests[0])
    assert [m["message"] for m in of_type(events, "AI Message")] == [
        "I think it is done.",
        "Yes, done.",
    ]


async def test_a_nudge_can_still_lead_to_finish(fake: FakeAnthropic, sandbox: LocalSandbox) -> None:
    steps: list[Step] = [Reply([Text("Done, I believe.")]), Reply([finish("Late finish")])]
    result, _ = await run_agent(fake, sandbox, "task-late: chat", steps)
    assert result.outcome == "finished" and result.title == "Late finish"


# --- model failures ---------------------------------------------------------------------------
async def test_overloaded_answers_are_retried(fake: FakeAnthropic, sandbox: LocalSandbox) -> None:
    steps: list[Step] = [[Fail(529, times=2), Reply([finish("After retries")])]]
    result, events = await run_agent(fake, sandbox, "task-retry: go", steps)
    assert result.outcome == "finished" and result.title == "After retries"
    assert fake.attempts("task-retry:", 0) == 3
    assert len(fake.requests_for("task-retry:")) == 3
    assert len(of_type(events, "usage")) == 1  # failed attempts cost nothing


async def test_an_error_in_the_middle_of_a_stream_is_retried(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        [MidStreamError(), Reply([bash("echo second", "toolu_after")])],
        Reply([finish()]),
    ]
    result, events = await run_agent(fake, sandbox, "task-midstream: go", steps)
    assert result.outcome == "finished"
    assert fake.attempts("task-midstream:", 0) == 2
    assert [e["command"] for e in of_type(events, "Tool: Bash")] == ["echo second"]
    assert "Let me look at" not in json.dumps(events)


async def test_a_cut_stream_is_retried_and_nothing_of_it_is_used(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        [CutStream(), Reply([bash("echo ran > ran.txt", "toolu_after")])],
        Reply([finish()]),
    ]
    result, events = await run_agent(fake, sandbox, "task-cut: go", steps)
    assert result.outcome == "finished"
    assert fake.attempts("task-cut:", 0) == 2
    assert [e["command"] for e in of_type(events, "Tool: Bash")] == ["echo ran > ran.txt"]
    assert await sandbox.read_file("/workspace/ran.txt") == b"ran\n"
    assert "Let me look at" not in json.dumps(events)
    requests = fake.requests_for("task-cut:")
    assert len(requests) == 3  # cut attempt, its retry, the finishing turn
    assert_protocol(requests)
    (assistant,) = [m for m in requests[2]["messages"] if m["role"] == "assistant"]
    assert [b["type"] for b in assistant["content"]] == ["tool_use"]


async def test_a_persistent_overload_becomes_a_model_error(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    with pytest.raises(ModelError) as caught:
        await run_agent(fake, sandbox, "task-overloaded: go", [[Fail(529, times=99)]], retries=2)
    error = caught.value
    assert error.code == "model_overloaded"
    assert error.retryable is True and error.attempts == 3
    assert "after 3 attempts" in error.message and "overloaded" in error.message
    assert fake.attempts("task-overloaded:", 0) == 3


async def test_a_rejected_key_fails_at_once(fake: FakeAnthropic, sandbox: LocalSandbox) -> None:
    with pytest.raises(ModelError) as caught:
        await run_agent(fake, sandbox, "task-auth: go", [[Fail(401)]], retries=3)
    assert caught.value.code == "model_auth"
    assert caught.value.retryable is False and caught.value.attempts == 1
    assert "ANTHROPIC_API_KEY" in caught.value.message
    assert fake.attempts("task-auth:", 0) == 1


async def test_a_hanging_api_times_out(fake: FakeAnthropic, sandbox: LocalSandbox) -> None:
    started = time.monotonic()
    events: Events = []
    with pytest.raises(ModelError) as caught:
        await run_agent(
            fake, sandbox, "task-hang: go", [Hang(10)], retries=1, timeout=0.5, events=events
        )
    assert time.monotonic() - started < 5
    assert caught.value.code == "model_timeout"
    assert "did not answer in time (after 2 attempts)" in caught.value.message
    assert fake.attempts("task-hang:", 0) == 2
    assert [kind for kind, _ in events] == ["progress"]


async def test_a_tool_call_cut_by_max_tokens_is_not_run(
    fake: FakeAnthropic, sandbox: LocalSandbox
) -> None:
    steps: list[Step] = [
        Reply(
            [
                Text("Writing the whole module now."),
                edit("toolu_cut", command="create", path="big.py", file_text="x = 1\n"),
            ],
            stop_reason="max_tokens",
        ),
        Reply([finish()]),
    ]
    result, events = await run_agent(fake, sandbox, "task-maxtokens: go", steps)
    assert result.outcome == "finished"
    assert (await sandbox.exec("test -e /workspace/big.py")).exit_code == 1
    assert of_type(events, "Tool: Write") == []
    requests = fake.requests_for("task-maxtokens:")
    assert_protocol(requests)
    cut = results_by_id(requests)["toolu_cut"]
    assert cut.get("is_error") is True
    assert "max_tokens" in cut["content"] and "not run" in cut["content"]
