"""ChatKit's server protocol against a running taskchat stack, judged by the
`openai-chatkit` package's own pydantic types (chatkit/types.py).

Every request this script sends is first validated as the package's `ChatKitReq`;
every streamed event is validated as `ThreadStreamEvent` and every JSON answer as
`Thread`, `Page[Thread]` or `Page[ThreadItem]`, and none may carry a field the
package's type does not have. Across one conversation it adds, lists and completes
tasks, pages through the thread's items both ways, lists threads, gives feedback,
regenerates the last answer, renames and deletes the thread; another user gets the
protocol's not-found answer for that thread; unknown, unsupported and malformed
requests are refused and change nothing.

Run by tests/tests/chatkit.rs, which starts the stack and sets:
  TASKCHAT_GATEWAY_URL  the gateway's base URL
  TASKCHAT_TOKEN        a bearer token for the user who talks
  TASKCHAT_OTHER_TOKEN  a bearer token for another user
Prints `[step] …` as it goes and `chatkit conversation passed` at the end; exits 1 on
the first difference.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from chatkit.types import (
    ChatKitReq,
    Page,
    Thread,
    ThreadItem,
    ThreadStreamEvent,
)
from pydantic import BaseModel, TypeAdapter
from taskchat_env import READ_TIMEOUT_SECS, env

REQUEST = TypeAdapter(ChatKitReq)
EVENT = TypeAdapter(ThreadStreamEvent)
THREAD = TypeAdapter(Thread)
THREADS = TypeAdapter(Page[Thread])
ITEMS = TypeAdapter(Page[ThreadItem])

GATEWAY = env("TASKCHAT_GATEWAY_URL")
TOKEN = env("TASKCHAT_TOKEN")
OTHER_TOKEN = env("TASKCHAT_OTHER_TOKEN")


def step(name: str) -> None:
    print(f"[step] {name}", flush=True)


def only_known_fields(raw: Any, model: Any, where: str) -> None:
    """`raw` (what the server sent) has no field that the validated `model` lacks."""
    if isinstance(model, BaseModel):
        model = model.model_dump(mode="json")
    if isinstance(raw, dict):
        assert isinstance(model, dict), f"{where}: {raw!r} is not {model!r}"
        for key, value in raw.items():
            assert key in model, f"{where}: field {key!r} is not in the protocol's type"
            only_known_fields(value, model[key], f"{where}.{key}")
    elif isinstance(raw, list):
        assert isinstance(model, list) and len(raw) == len(model), f"{where}: {raw!r}"
        for n, (value, known) in enumerate(zip(raw, model)):
            only_known_fields(value, known, f"{where}[{n}]")


def checked(adapter: TypeAdapter, raw: Any, where: str) -> Any:
    """`raw` validated by the package's type, with no unknown fields."""
    model = adapter.validate_python(raw)
    only_known_fields(raw, adapter.dump_python(model, mode="json"), where)
    return model


def post(body: Any, token: str | None = TOKEN, raw: bytes | None = None):
    """POST /chatkit: (status, content type, body bytes)."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{GATEWAY}/chatkit", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def request(body: dict[str, Any], token: str = TOKEN):
    """A protocol-valid request (checked by `ChatKitReq` before it is sent)."""
    REQUEST.validate_python(body)
    return post(body, token)


def stream(body: dict[str, Any], token: str = TOKEN) -> list[Any]:
    """A streaming request: its events, each validated."""
    status, kind, payload = request(body, token)
    assert status == 200, f"{body['type']}: {status} {payload!r}"
    assert kind.startswith("text/event-stream"), f"{body['type']}: {kind}"
    events = []
    for block in payload.decode().split("\n\n"):
        data = [line[len("data:"):].strip() for line in block.split("\n") if line.startswith("data:")]
        if not data:
            continue  # keep-alive comments
        raw = json.loads("\n".join(data))
        events.append(checked(EVENT, raw, f"{body['type']} event {raw.get('type')}"))
    return events


def answer(body: dict[str, Any], adapter: TypeAdapter | None, token: str = TOKEN) -> Any:
    """A JSON request: its answer, validated (`None` adapter: the answer is `{}`)."""
    status, kind, payload = request(body, token)
    assert status == 200, f"{body['type']}: {status} {payload!r}"
    assert kind.startswith("application/json"), f"{body['type']}: {kind}"
    raw = json.loads(payload)
    if adapter is None:
        assert raw == {}, f"{body['type']}: {raw!r}"
        return raw
    return checked(adapter, raw, body["type"])


def refused(body: Any, status: int, code: str, token: str | None = TOKEN, raw: bytes | None = None) -> None:
    """The request is answered with `status` and the error `code`."""
    got, kind, payload = post(body, token, raw)
    assert got == status, f"{body!r}: {got} {payload!r}, expected {status}"
    assert kind.startswith("application/json"), f"{body!r}: {kind}"
    error = json.loads(payload)["error"]
    assert error["code"] == code, f"{body!r}: {error}, expected {code}"


def user_input(text: str) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


def types(events: list[Any]) -> list[str]:
    out = []
    for event in events:
        update = getattr(event, "update", None)
        out.append(f"{event.type}:{update.type}" if update is not None else event.type)
    return out


def reply_of(events: list[Any]) -> Any:
    """The assistant message the stream finished with."""
    done = [e for e in events if e.type == "thread.item.done" and e.item.type == "assistant_message"]
    assert len(done) == 1, f"one finished answer expected: {types(events)}"
    return done[0].item


def check_turn(events: list[Any], progress: str, reply_has: str) -> Any:
    """A turn with one tool call: progress, a workflow whose task completes, then a
    streamed answer saying `reply_has`."""
    kinds = types(events)
    assert "error" not in kinds, f"the turn failed: {events}"
    expected = [
        "progress_update",
        "thread.item.added",
        "thread.item.updated:workflow.task.updated",
        "thread.item.done",
        "thread.item.added",
        "thread.item.updated:assistant_message.content_part.added",
    ]
    assert "progress_update" in kinds, kinds
    seen = [k for k in kinds[kinds.index("progress_update"):] if k in expected]
    assert seen[: len(expected)] == expected, f"{kinds}"
    assert kinds[-2:] == ["thread.item.updated:assistant_message.content_part.done", "thread.item.done"], kinds
    updates = [e for e in events if e.type == "progress_update"]
    assert [u.text for u in updates] == [progress], f"{[u.text for u in updates]}"
    workflow = next(e.item for e in events if e.type == "thread.item.done" and e.item.type == "workflow")
    assert [t.status_indicator for t in workflow.workflow.tasks] == ["complete"], workflow
    reply = reply_of(events)
    text = reply.content[0].text
    deltas = "".join(
        e.update.delta for e in events
        if e.type == "thread.item.updated" and e.update.type == "assistant_message.content_part.text_delta"
    )
    assert deltas == text, f"the deltas {deltas!r} do not add up to the answer {text!r}"
    assert reply_has in text, f"{text!r} does not say {reply_has!r}"
    return reply


def items(thread_id: str, order: str = "asc", limit: int | None = None, token: str = TOKEN) -> list[Any]:
    """Every item of the thread, paged through with the protocol's cursors."""
    collected, after = [], None
    while True:
        params: dict[str, Any] = {"thread_id": thread_id, "order": order}
        if limit is not None:
            params["limit"] = limit
        if after is not None:
            params["after"] = after
        page = answer({"type": "items.list", "params": params}, ITEMS, token)
        collected.extend(page.data)
        if not page.has_more:
            assert page.after is None or page.data, page
            return collected
        assert page.after == page.data[-1].id, page
        after = page.after


def wait_for(what: str, probe) -> Any:
    deadline = time.monotonic() + READ_TIMEOUT_SECS
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened")
        time.sleep(0.1)


def wait_for_answers(thread_id: str, count: int) -> list[Any]:
    """The thread's items once it shows `count` answers."""
    return wait_for(
        f"{count} answers in the thread",
        lambda: (lambda got: got if sum(i.type == "assistant_message" for i in got) == count else None)(
            items(thread_id)
        ),
    )


def main() -> None:
    step("threads.create with the first message adds a task")
    events = stream({"type": "threads.create", "params": {"input": user_input("add a task to buy milk")}})
    assert types(events)[:3] == ["thread.created", "thread.item.done", "stream_options"], types(events)
    thread_id = events[0].thread.id
    assert events[1].item.type == "user_message" and events[1].item.content[0].text == "add a task to buy milk"
    streamed = [events[1].item.id]
    streamed += [e.item.id for e in events if e.type == "thread.item.done"][1:]
    check_turn(events, "Adding task…", "added task #1")
    # The next message goes at once, as a client's would: the thread is found even if
    # the read models are still applying the first turn.

    step("threads.add_user_message adds, lists and completes tasks")
    for message, progress, reply_has in [
        ("remind me to walk the dog", "Adding task…", "added task #2"),
        ("show my tasks", "Listing tasks…", "1. [ ] Buy milk"),
        ("complete 1", "Completing task…", "Marked task #1"),
    ]:
        events = stream({
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": user_input(message)},
        })
        assert events[0].type == "thread.item.done" and events[0].item.content[0].text == message
        check_turn(events, progress, reply_has)
        streamed += [e.item.id for e in events if e.type == "thread.item.done"]
    listing = wait_for_answers(thread_id, 4)
    assert [i.id for i in listing] == streamed, f"streamed ids {streamed} are not the listed {[i.id for i in listing]}"
    assert [i.type for i in listing] == ["user_message", "workflow", "assistant_message"] * 4, listing

    step("items.list pages both ways with the protocol's cursors")
    for limit in (1, 5, 200):
        assert [i.id for i in items(thread_id, "asc", limit)] == streamed, limit
        assert [i.id for i in items(thread_id, "desc", limit)] == streamed[::-1], limit
    first = answer({"type": "items.list", "params": {"thread_id": thread_id, "limit": 5, "order": "asc"}}, ITEMS)
    assert first.has_more and first.after == streamed[4] and len(first.data) == 5, first

    step("threads.get_by_id and threads.list")
    thread = answer({"type": "threads.get_by_id", "params": {"thread_id": thread_id}}, THREAD)
    assert thread.id == thread_id and [i.id for i in thread.items.data] == streamed, thread
    events = stream({"type": "threads.create", "params": {"input": user_input("show my tasks")}})
    second = events[0].thread.id
    check_turn(events, "Listing tasks…", "[x] Buy milk")
    wait_for("the second thread in the list", lambda: len(answer({"type": "threads.list", "params": {}}, THREADS).data) == 2)
    newest = answer({"type": "threads.list", "params": {"limit": 1}}, THREADS)
    assert [t.id for t in newest.data] == [second] and newest.has_more and newest.after == second, newest
    older = answer({"type": "threads.list", "params": {"limit": 1, "after": newest.after}}, THREADS)
    assert [t.id for t in older.data] == [thread_id] and not older.has_more, older
    oldest = answer({"type": "threads.list", "params": {"order": "asc"}}, THREADS)
    assert [t.id for t in oldest.data] == [thread_id, second], oldest

    step("items.feedback is stored")
    answer({"type": "items.feedback", "params": {"thread_id": thread_id, "item_ids": [streamed[-1]], "kind": "positive"}}, None)
    refused({"type": "items.feedback", "params": {"thread_id": thread_id, "item_ids": [], "kind": "negative"}}, 422, "invalid_feedback")

    step("another user gets not found for the thread, and changes nothing")
    other = {"thread_id": thread_id}
    for body in [
        {"type": "threads.get_by_id", "params": other},
        {"type": "items.list", "params": other},
        {"type": "threads.update", "params": {**other, "title": "Mine now"}},
        {"type": "threads.delete", "params": other},
        {"type": "items.feedback", "params": {**other, "item_ids": [streamed[0]], "kind": "negative"}},
        {"type": "threads.add_user_message", "params": {**other, "input": user_input("delete task 1")}},
        {"type": "threads.retry_after_item", "params": {**other, "item_id": streamed[-3]}},
        {"type": "threads.add_client_tool_output", "params": {**other, "result": {}}},
    ]:
        REQUEST.validate_python(body)
        refused(body, 404, "not_found", token=OTHER_TOKEN)
    assert answer({"type": "threads.list", "params": {}}, THREADS, OTHER_TOKEN).data == []
    assert [i.id for i in items(thread_id)] == streamed

    step("unknown, unsupported and malformed requests are refused")
    refused({"type": "threads.explode", "params": {}}, 422, "unknown_request_type")
    refused({"params": {}}, 422, "invalid_body")
    refused({"type": "threads.get_by_id"}, 422, "invalid_body")
    refused({"type": "threads.list", "params": {"limit": 500}}, 422, "invalid_limit")
    refused({"type": "items.list", "params": {"thread_id": thread_id, "after": "nope"}}, 422, "invalid_cursor")
    refused({"type": "threads.update", "params": {"thread_id": thread_id, "title": "  "}}, 422, "invalid_title")
    refused(None, 400, "malformed_json", raw=b"{not json")
    refused({"type": "attachments.create", "params": {"name": "a", "size": 1, "mime_type": "text/plain"}}, 400, "unsupported_request")
    refused({"type": "threads.get_by_id", "params": {"thread_id": thread_id}}, 401, "missing_token", token=None)
    refused({"type": "threads.retry_after_item", "params": {"thread_id": thread_id, "item_id": streamed[0]}}, 422, "not_last_user_message")
    refused({"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input("   ")}}, 422, "empty_message")
    events = stream({"type": "threads.add_client_tool_output", "params": {"thread_id": thread_id, "result": {"ok": True}}})
    assert types(events) == ["error"] and "not supported" in events[0].message, events
    assert [i.id for i in items(thread_id)] == streamed, "a refused request changed the thread"

    step("threads.update renames the thread")
    renamed = answer({"type": "threads.update", "params": {"thread_id": thread_id, "title": "Groceries"}}, THREAD)
    assert renamed.id == thread_id and renamed.title == "Groceries", renamed
    wait_for("the new title in threads.get_by_id",
             lambda: answer({"type": "threads.get_by_id", "params": {"thread_id": thread_id}}, THREAD).title == "Groceries")
    assert [i.id for i in items(thread_id)] == streamed, "renaming changed the items"

    step("threads.delete deletes it")
    answer({"type": "threads.delete", "params": {"thread_id": thread_id}}, None)
    wait_for("the thread to be gone", lambda: post({"type": "threads.get_by_id", "params": {"thread_id": thread_id}})[0] == 404)
    refused({"type": "items.list", "params": {"thread_id": thread_id}}, 404, "not_found")
    refused({"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input("show my tasks")}}, 404, "not_found")
    assert [t.id for t in answer({"type": "threads.list", "params": {}}, THREADS).data] == [second]

    # Last, as it needs the workers' regenerate turns (issue 12).
    step("threads.retry_after_item regenerates the last answer")
    before = [i.id for i in items(second)]
    last_user = before[-3]
    events = stream({"type": "threads.retry_after_item", "params": {"thread_id": second, "item_id": last_user}})
    assert types(events)[:3] == ["stream_options", "thread.item.removed", "thread.item.done"], types(events)
    assert events[1].item_id == last_user, events[1]
    again = events[2].item
    assert again.type == "user_message" and again.content[0].text == "show my tasks" and again.id != last_user, again
    check_turn(events, "Listing tasks…", "[x] Buy milk")
    regenerated = [again.id] + [e.item.id for e in events[3:] if e.type == "thread.item.done"]
    expected = before[:-3] + regenerated
    wait_for("the regenerated answer to replace the old one",
             lambda: [i.id for i in items(second)] == expected)

    print("chatkit conversation passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}", flush=True)
        sys.exit(1)
