#!/usr/bin/env bash
# The lint run: ruff (style, imports, bugbear), then pylint's duplicate-code check (clones of 6 or
# more lines, comments / docstrings / imports ignored) over the library packages. The test suite runs
# the same two checks (tests/test_lint.py), so CI enforces them too.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
"$py" -m ruff check retrieval indexes training tests examples
"$py" -m pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n retrieval indexes training
