"""What this process has learnt about endpoints: does ``(base_url, model)`` give logprobs?

Reasoning models answer HTTP 400 to the ``logprobs`` parameter and some servers silently leave
them out of a 200 answer; the chat client records what it sees here, keyed by ``(base_url,
model)``, and the reranker reads it to stop asking. :func:`record_logprobs_support` sets or
forgets an endpoint by hand (tests, and applications that know better).

Example:
    >>> logprobs_supported(("http://127.0.0.1:1/v1", "never-asked")) is None
    True
"""

from __future__ import annotations

import threading

_LOGPROBS_SUPPORT: dict[tuple[str, str], bool] = {}
_CAPABILITY_LOCK = threading.Lock()


def logprobs_supported(identity: tuple[str, str]) -> bool | None:
    """Whether the endpoint ``(base_url, model)`` gives logprobs, as learnt by this process.

    Returns ``None`` while unknown (no call with logprobs made yet).

    Example:
        >>> logprobs_supported(("http://127.0.0.1:1/v1", "never-asked")) is None
        True
    """
    with _CAPABILITY_LOCK:
        return _LOGPROBS_SUPPORT.get(identity)


def record_logprobs_support(identity: tuple[str, str], supported: bool | None) -> bool:
    """Set (or, with ``None``, forget) what is known about an endpoint's logprobs.

    Returns whether the stored value changed. The client calls this itself; it is public so that
    tests and applications can reset or preset the memory.

    Example:
        >>> record_logprobs_support(("http://127.0.0.1:1/v1", "m"), False)
        True
        >>> record_logprobs_support(("http://127.0.0.1:1/v1", "m"), None)
        True
    """
    with _CAPABILITY_LOCK:
        before = _LOGPROBS_SUPPORT.get(identity)
        if supported is None:
            _LOGPROBS_SUPPORT.pop(identity, None)
        else:
            _LOGPROBS_SUPPORT[identity] = supported
        return before != supported
