"""``python -m retrieval`` runs the ``densezip`` command line."""

from __future__ import annotations

from retrieval.cli import main

raise SystemExit(main())
