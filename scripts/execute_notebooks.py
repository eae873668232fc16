"""Re-execute notebooks in place with their full (human) settings and save their outputs.

``make notebooks`` runs this on every ``notebooks/*.ipynb``; pass paths to run only some. Each
notebook runs top to bottom in a fresh Jupyter kernel started with this interpreter (the
project's venv), with the kernel's working folder set to the notebook's folder, as in Jupyter.
The slice variables the tests set (``NOTEBOOK_*``) are removed from the kernel's environment,
so the saved outputs are always those of the defaults written in each notebook's first cell.

A failing cell stops the run with that cell's traceback and leaves the file untouched.

Example:
    .venv/bin/python scripts/execute_notebooks.py notebooks/01_quickstart.ipynb
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kernel_manager(kernel_dir: Path) -> object:
    """A kernel manager whose ``python3`` kernel is this interpreter, whatever kernelspecs the
    machine or the user has installed elsewhere."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = kernel_dir / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3 (ipykernel)", "language": "python"}),
        encoding="utf-8",
    )
    return AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )


def execute(path: Path, env: dict[str, str], timeout: int) -> object:
    """Run ``path`` top to bottom in a fresh kernel; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="kernelspec-") as kernels:
        client = NotebookClient(
            nb,
            km=kernel_manager(Path(kernels)),
            timeout=timeout,
            record_timing=False,  # no timestamps in the saved file: diffs show content only
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute(env=env)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    import nbformat
    from nbclient.exceptions import CellExecutionError

    import llamaindex_rerankers

    found = Path(llamaindex_rerankers.__file__).resolve().parent
    if REPO not in found.parents:
        print(
            f"llamaindex_rerankers is imported from {found}, not from this checkout ({REPO}): "
            "run `pip install -e .` in this checkout's venv, or set PYTHONPATH to it.",
            file=sys.stderr,
        )
        return 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTEBOOK_")}
    dropped = sorted(set(os.environ) - set(env))
    if dropped:
        print(f"ignoring {', '.join(dropped)}: saved outputs use the notebooks' defaults")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("ANONYMIZED_TELEMETRY", "False")
    paths = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))
    first = time.perf_counter()
    for path in paths:
        started = time.perf_counter()
        print(f"executing {path.name} ...", flush=True)
        try:
            nb = execute(path.resolve(), env, args.timeout)
        except CellExecutionError as exc:
            print(f"{path.name} failed; not saved:\n{exc}", file=sys.stderr)
            return 1
        nbformat.write(nb, path)
        print(f"  saved {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"{len(paths)} notebooks in {time.perf_counter() - first:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
