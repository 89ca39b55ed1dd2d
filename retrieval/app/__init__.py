"""Applications built on the library: the ``densezip`` command line (:mod:`~retrieval.app.cli`,
:mod:`~retrieval.app.cli_rag`), the benchmark harness (:mod:`~retrieval.app.bench`) and the
measurement helpers they share (:mod:`~retrieval.app.measure`).

Nothing in ``retrieval``, ``indexes`` or ``training`` imports from here: the library is usable
without its applications, and ``tests/test_layering.py`` keeps it that way.
"""

from __future__ import annotations
