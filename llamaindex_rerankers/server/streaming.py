"""The Vercel AI SDK's UI message stream protocol (v1), which ``/v1/chat`` speaks.

Server-sent events, one JSON object per ``data:`` line, ended by ``data: [DONE]``; the response
carries ``x-vercel-ai-ui-message-stream: v1``. Only the part types the protocol defines are
written, each with exactly its fields (the AI SDK's client validates parts strictly):
``start``, ``data-<name>``, ``source-document``, ``start-step``, ``text-start``,
``text-delta``, ``text-end``, ``finish-step``, ``error`` and ``finish``. Our own records travel
in two data parts, ``data-sources`` (first) and ``data-report`` (last).
``docs/guides/serving.md`` has a full transcript.

Example:
    >>> sse({"type": "text-delta", "id": "t1", "delta": "Hi"})
    'data: {"type":"text-delta","id":"t1","delta":"Hi"}\\n\\n'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: Headers of a UI message stream response (as the AI SDK's own server helpers send them).
STREAM_HEADERS = {
    "cache-control": "no-cache",
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",  # keep reverse proxies (nginx) from buffering the stream
}
MEDIA_TYPE = "text/event-stream"
#: The last event of every stream.
DONE = "data: [DONE]\n\n"


def sse(part: Mapping[str, Any]) -> str:
    """One stream part as a server-sent event."""
    return f"data: {json.dumps(part, ensure_ascii=False, separators=(',', ':'))}\n\n"


def start(message_id: str) -> dict[str, Any]:
    return {"type": "start", "messageId": message_id}


def data(name: str, payload: Any) -> dict[str, Any]:
    """A custom data part, ``data-<name>``."""
    return {"type": f"data-{name}", "data": payload}


def source_document(source_id: str, title: str, media_type: str = "text/plain") -> dict[str, Any]:
    return {
        "type": "source-document",
        "sourceId": source_id,
        "mediaType": media_type,
        "title": title,
    }


def text_start(text_id: str) -> dict[str, Any]:
    return {"type": "text-start", "id": text_id}


def text_delta(text_id: str, delta: str) -> dict[str, Any]:
    return {"type": "text-delta", "id": text_id, "delta": delta}


def text_end(text_id: str) -> dict[str, Any]:
    return {"type": "text-end", "id": text_id}


def error(text: str) -> dict[str, Any]:
    return {"type": "error", "errorText": text}


def finish(reason: str) -> dict[str, Any]:
    """``finish`` with a ``finishReason`` (``"error"`` after an ``error`` part)."""
    return {"type": "finish", "finishReason": reason}


START_STEP: dict[str, Any] = {"type": "start-step"}
FINISH_STEP: dict[str, Any] = {"type": "finish-step"}
FINISH: dict[str, Any] = {"type": "finish"}


def parse(body: str) -> list[Any]:
    """The parts of a stream body, ``"[DONE]"`` included as a string (for tests and clients).

    Example:
        >>> parse('data: {"type":"finish"}\\n\\ndata: [DONE]\\n\\n')
        [{'type': 'finish'}, '[DONE]']
    """
    parts: list[Any] = []
    for event in body.split("\n\n"):
        lines = [line[len("data: ") :] for line in event.splitlines() if line.startswith("data: ")]
        if not lines:
            continue
        payload = "\n".join(lines)
        parts.append(payload if payload == "[DONE]" else json.loads(payload))
    return parts
