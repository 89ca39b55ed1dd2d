"""``python -m retrieval`` runs the ``densezip`` command line."""

from __future__ import annotations

from retrieval.app.cli import main

raise SystemExit(main())
