"""Where models come from: one helper for model locations and the error that names the option.

Shared by the cross-encoder and the embedding model of the pipeline, so that neither imports the
other.
"""

from __future__ import annotations

from pathlib import Path


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the option that selects another one."""


def model_location(name: str, what: str, how_to_fix: str, error: type[ModelLoadError]) -> str:
    """What to hand a model loader for ``name``: the expanded path of a local model, or the hub
    id unchanged. A path-like name that does not exist raises ``error`` at once (instead of a
    slow, confusing hub lookup).

    Hub ids are "org/name"; anything else path-like (starting with ``.``, ``/`` or ``~``, or with
    more than one slash) must exist on disk.

    Example:
        >>> model_location("cross-encoder/ms-marco-MiniLM-L-6-v2", "model", "", ModelLoadError)
        'cross-encoder/ms-marco-MiniLM-L-6-v2'
    """
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise error(f"{what} path {name!r} does not exist. {how_to_fix}")
    return name
