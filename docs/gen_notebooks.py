"""Put the committed notebooks (``notebooks/*.ipynb``, with their outputs) on the site.

Run by mkdocs-gen-files at build time; mkdocs-jupyter renders them as pages without executing
them, so the site shows exactly the outputs committed (the tests re-run the notebooks).
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

for path in sorted(NOTEBOOKS.glob("*.ipynb")):
    name = f"notebooks/{path.name}"
    with mkdocs_gen_files.open(name, "w") as f:
        f.write(path.read_text(encoding="utf-8"))
    mkdocs_gen_files.set_edit_path(name, f"../notebooks/{path.name}")

# The notebooks' own README is the section's front page: one text, in the folder and on the site.
readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
with mkdocs_gen_files.open("notebooks/index.md", "w") as f:
    f.write(readme)
mkdocs_gen_files.set_edit_path("notebooks/index.md", "../notebooks/README.md")
