"""The reference design's own wiring against a running taskchat stack.

An OpenAI Agents SDK agent whose tools come from task-service's MCP endpoint
(`MCPServerStreamableHttp` with a bearer header) and whose model is offline-llm through
the SDK's chat-completions model, as the reference runs it with Gemini's
OpenAI-compatible endpoint. It holds one conversation that adds, lists, completes,
renames and deletes tasks, and checks after each turn that the user's tasks really
changed, read back through the gateway (`GET /api/{user}/tasks`).

Run by tests/tests/agents_sdk.rs, which starts the stack and sets:
  TASKCHAT_MCP_URL      task-service's MCP endpoint (…/mcp)
  TASKCHAT_LLM_URL      offline-llm's OpenAI base URL (…/v1)
  TASKCHAT_GATEWAY_URL  the gateway's base URL
  TASKCHAT_USER         the user the token is for
  TASKCHAT_TOKEN        a bearer token for TASKCHAT_USER
and one argument, `strict` or `loose`: the MCP setting `convert_schemas_to_strict`;
or `failure`, which also needs TASKCHAT_TASK_SERVICE_PID: it adds a task, kills
task-service (SIGKILL, as a crash would), and asks for another, which the SDK reports to
the model with its failure text; the reply must say the task was not added.
Exits 0 when every check passed; otherwise prints what differed and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from typing import Any

from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from agents.items import ToolCallItem
from agents.mcp import MCPServerStreamableHttp
from openai import AsyncOpenAI
from taskchat_env import READ_TIMEOUT_SECS, env


def tasks(gateway: str, user: str, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{gateway}/api/{user}/tasks", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["items"]


def wait_for_tasks(gateway: str, user: str, token: str, *expected: tuple[int, str, bool]) -> None:
    """Waits until the user's tasks read back as `expected`: (id, title, completed) each."""
    deadline = time.monotonic() + READ_TIMEOUT_SECS
    while True:
        seen = [(t["id"], t["title"], t["completed"]) for t in tasks(gateway, user, token)]
        if seen == list(expected):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks never became {list(expected)}; last read {seen}")
        time.sleep(0.1)


def wait_until_down(url: str) -> None:
    """Waits until nothing answers at `url` any more."""
    deadline = time.monotonic() + READ_TIMEOUT_SECS
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} still answers after task-service was killed")


async def main(mode: str) -> None:
    if mode not in ("strict", "loose", "failure"):
        sys.exit(f"usage: {sys.argv[0]} strict|loose|failure (got {mode!r})")
    gateway, user, token = env("TASKCHAT_GATEWAY_URL"), env("TASKCHAT_USER"), env("TASKCHAT_TOKEN")
    set_tracing_disabled(True)
    model = OpenAIChatCompletionsModel(
        model="offline-llm",
        openai_client=AsyncOpenAI(base_url=env("TASKCHAT_LLM_URL"), api_key="x"),
    )
    async with MCPServerStreamableHttp(
        name="Todo MCP Server",
        params={
            "url": env("TASKCHAT_MCP_URL"),
            "headers": {"Authorization": f"Bearer {token}"},
        },
        cache_tools_list=True,
    ) as server:
        listed = sorted(tool.name for tool in await server.list_tools())
        assert listed == [
            "add_task",
            "complete_task",
            "delete_task",
            "list_tasks",
            "update_task",
        ], listed
        agent = Agent(
            name="Todo Assistant",
            instructions="Help users manage tasks.",
            mcp_servers=[server],
            mcp_config={"convert_schemas_to_strict": mode == "strict"},
            model=model,
        )
        history: list[Any] = []

        async def say(message: str, tool: str, reply_has: str) -> str:
            """One turn: `tool` must be called and the reply must contain `reply_has`."""
            nonlocal history
            result = await Runner.run(agent, history + [{"role": "user", "content": message}])
            history = result.to_input_list()
            calls = [item.raw_item for item in result.new_items if isinstance(item, ToolCallItem)]
            called = [call.name for call in calls]
            reply = str(result.final_output)
            print(f"[{mode}] {message!r} -> {[(c.name, c.arguments) for c in calls]} {reply!r}")
            assert called == [tool], f"{message!r}: called {called}, expected [{tool}]"
            # Strict schemas make every property required, so the model sends user_id,
            # as null (never a guessed user); otherwise it leaves it out.
            user_ids = [json.loads(call.arguments).get("user_id", "absent") for call in calls]
            expected = None if mode == "strict" else "absent"
            assert user_ids == [expected], f"{message!r}: user_id {user_ids}, expected {expected!r}"
            assert reply_has in reply, f"{message!r}: {reply!r} does not say {reply_has!r}"
            return reply

        if mode == "failure":
            await say("add a task to buy bread", "add_task", "added task #1")
            bread = (1, "Buy bread", False)
            wait_for_tasks(gateway, user, token, bread)
            os.kill(int(env("TASKCHAT_TASK_SERVICE_PID")), signal.SIGKILL)
            wait_until_down(env("TASKCHAT_MCP_URL").removesuffix("/mcp") + "/healthz")
            # The SDK turns the failed call into its failure text for the model; the
            # reply must say the task was not added, never that it was.
            failed = await say("add a task to buy eggs", "add_task", "couldn't add \"Buy eggs\"")
            assert "added task" not in failed, failed
            wait_for_tasks(gateway, user, token, bread)
            print(f"[{mode}] agents sdk conversation passed")
            return

        await say("add a task to buy milk", "add_task", "added task #1")
        await say("remind me to walk the dog", "add_task", "added task #2")
        wait_for_tasks(gateway, user, token, (1, "Buy milk", False), (2, "Walk the dog", False))
        listing = await say("show my tasks", "list_tasks", "Here are your tasks:")
        assert "1. [ ] Buy milk" in listing and "2. [ ] Walk the dog" in listing, listing

        await say("complete 1", "complete_task", "Marked task #1")
        await say("rename 2 to walk the cat", "update_task", "Updated task #2")
        wait_for_tasks(gateway, user, token, (1, "Buy milk", True), (2, "Walk the cat", False))
        pending = await say("what's still open?", "list_tasks", "pending tasks")
        assert "Walk the cat" in pending and "Buy milk" not in pending, pending

        await say("delete 1", "delete_task", "Deleted task #1")
        wait_for_tasks(gateway, user, token, (2, "Walk the cat", False))

        # A refused call is reported as a failure, never as done, and changes nothing.
        missing = await say("complete 7", "complete_task", "couldn't find task #7")
        assert "Marked" not in missing, missing
        wait_for_tasks(gateway, user, token, (2, "Walk the cat", False))
    print(f"[{mode}] agents sdk conversation passed")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else ""))
    except AssertionError as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
