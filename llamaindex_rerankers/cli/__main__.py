"""``python -m llamaindex_rerankers.cli``: the same as the ``llamaindex-rerankers`` script."""

import sys

from llamaindex_rerankers.cli import main

sys.exit(main())
