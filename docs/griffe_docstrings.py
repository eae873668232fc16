"""A griffe extension for the API reference: read our docstrings as their authors meant them.

The package's docstrings are Google style, with two habits griffe's Google parser does not
share: an ``Example:`` section (singular; griffe knows only ``Examples:``, and would render the
``>>>`` lines as nested quotes) and Sphinx roles (``:class:`X```, ``:mod:`.data```). Rewriting the
text before it is parsed keeps the source docstrings as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|exc|obj|const):`~?\.?([^`]+)`")


def rewrite(text: str) -> str:
    """``Example:`` -> ``Examples:``; ``:role:`name``` -> ```name```."""
    return _ROLE.sub(r"`\1`", _EXAMPLE.sub(r"\1Examples:", text))


class OurDocstrings(griffe.Extension):
    """Rewrite every docstring of the package before mkdocstrings parses it."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
