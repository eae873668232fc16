"""Schemathesis hooks for ``test_schemathesis.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

They drop generated chat requests that break the one rule JSON Schema cannot state: the last
message is the user's question and has text (the schema's description says so, and the server
answers a 422 naming ``messages[i]``). Everything else the server enforces is in the schema.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis


def _text(message: dict[str, Any]) -> str:
    if isinstance(message.get("content"), str):
        return str(message["content"])
    parts = message.get("parts")
    if not isinstance(parts, list):
        return ""
    return "".join(
        str(p.get("text") or "") for p in parts if isinstance(p, dict) and p.get("type") == "text"
    )


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    operation = getattr(context, "operation", None)
    if operation is None or operation.path != "/v1/chat" or not isinstance(body, dict):
        return True
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return True
    last = messages[-1]
    return last.get("role") == "user" and bool(_text(last).strip())


#: The 422s that state the rule above (the coverage phase builds its cases without the body
#: filter, so they can still be generated there).
_QUESTION_RULE = re.compile(r"^messages\[\d+\]\.(role|content)$")


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    if case.operation.path != "/v1/chat" or response.status_code != 422:
        return True
    try:
        field = str(response.json().get("field") or "")
    except ValueError:
        return True
    rejected_valid = "accepted" in str(getattr(failure, "message", ""))
    return not (rejected_valid and _QUESTION_RULE.match(field))
