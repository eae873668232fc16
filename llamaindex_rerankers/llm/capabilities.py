"""What this process has learnt about endpoints: does ``(base_url, model)`` give logprobs?

Some endpoints never give log-probabilities: reasoning models answer HTTP 400 to the
``logprobs`` parameter, and some servers silently leave them out of a 200 answer. The reranker
then judges from the answer text. Because a whole service switches to the (coarser) text mode
for the life of the process, the evidence must be clear:

* a 400 whose message rejects the ``logprobs`` parameter switches at once
  (:func:`record_logprobs_rejected`): the server said so;
* answers without logprobs switch only after :data:`MISSES_BEFORE_TEXT_MODE` of them in a row
  (:func:`record_logprobs_answer`): one odd answer from a proxy or an overloaded server is not a
  capability. An answer with logprobs resets the count.

Each switch is logged at WARNING, once per endpoint. :func:`record_logprobs_support` sets or
forgets an endpoint by hand (tests, and applications that know better).

Example:
    >>> endpoint = ("http://127.0.0.1:1/v1", "doc-example")
    >>> [record_logprobs_answer(endpoint, has_logprobs=False) for _ in range(3)]
    [False, False, True]
    >>> logprobs_supported(endpoint)
    False
    >>> record_logprobs_support(endpoint, None)
    True
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Consecutive 200 answers without logprobs after which an endpoint is judged in text mode.
MISSES_BEFORE_TEXT_MODE = 3

Endpoint = tuple[str, str]


@dataclass
class _Known:
    supported: bool | None = None
    misses: int = 0
    warned: bool = False


_ENDPOINTS: dict[Endpoint, _Known] = {}
_LOCK = threading.Lock()


def logprobs_supported(identity: Endpoint) -> bool | None:
    """Whether the endpoint ``(base_url, model)`` gives logprobs, as learnt by this process.

    Returns ``None`` while unknown (no answer with logprobs yet, and not enough answers without).

    Example:
        >>> logprobs_supported(("http://127.0.0.1:1/v1", "never-asked")) is None
        True
    """
    with _LOCK:
        known = _ENDPOINTS.get(identity)
        return None if known is None else known.supported


def record_logprobs_support(identity: Endpoint, supported: bool | None) -> bool:
    """Set (or, with ``None``, forget everything about) an endpoint's logprobs support.

    Returns whether the stored value changed.

    Example:
        >>> record_logprobs_support(("http://127.0.0.1:1/v1", "m"), False)
        True
        >>> record_logprobs_support(("http://127.0.0.1:1/v1", "m"), None)
        True
    """
    with _LOCK:
        before = _ENDPOINTS.get(identity)
        if supported is None:
            _ENDPOINTS.pop(identity, None)
        else:
            _ENDPOINTS[identity] = _Known(supported=supported)
        return (None if before is None else before.supported) != supported


def record_logprobs_answer(identity: Endpoint, *, has_logprobs: bool, why: str = "") -> bool:
    """Note one 200 answer to a request that asked for logprobs.

    With logprobs, the endpoint supports them (and the count of misses restarts). Without, it
    is switched to text mode once :data:`MISSES_BEFORE_TEXT_MODE` such answers came in a row.

    Returns:
        True when this answer switched the endpoint to text mode.
    """
    with _LOCK:
        known = _ENDPOINTS.setdefault(identity, _Known())
        if has_logprobs:
            known.supported, known.misses = True, 0
            return False
        known.misses += 1
        if known.supported is False or known.misses < MISSES_BEFORE_TEXT_MODE:
            return False
        known.supported = False
        misses = known.misses
    _warn_once(identity, f"{misses} answers in a row without logprobs{_because(why)}")
    return True


def record_logprobs_rejected(identity: Endpoint, why: str) -> bool:
    """Note an answer that rejected the ``logprobs`` parameter: text mode at once.

    Returns:
        True when the endpoint was not in text mode before.
    """
    with _LOCK:
        known = _ENDPOINTS.setdefault(identity, _Known())
        changed = known.supported is not False
        known.supported = False
    if changed:
        _warn_once(identity, f"it rejected the logprobs parameter ({why})")
    return changed


def _warn_once(identity: Endpoint, reason: str) -> None:
    with _LOCK:
        known = _ENDPOINTS.setdefault(identity, _Known())
        if known.warned:
            return
        known.warned = True
    base_url, model = identity
    logger.warning(
        "model %r at %s gives no logprobs: %s. Judging from the answer text from now on in "
        "this process (scores are then the labels' values, not expected relevance); call "
        "record_logprobs_support(%r, None) to ask again.",
        model, base_url, reason, identity,
    )  # fmt: skip


def _because(why: str) -> str:
    return f" ({why})" if why else ""
