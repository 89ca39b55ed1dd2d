#!/usr/bin/env bash
# Create ./.venv if it is missing or out of date, and install densezip into it with the
# CPU FAISS build, the test tools and the optional extras the tests exercise (rag, bench,
# distributed, pages). Safe to run again: it does nothing when the
# environment already matches pyproject.toml and constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
stamp=.venv/.densezip-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import retrieval, faiss" 2>/dev/null; then
    exit 0
fi

echo "densezip: setting up .venv (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch (or a range admitting 2.14+) resolves to a
# multi-GB CUDA build on Linux; 2.13.0 is the CPU wheel these machines carry.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[cpu,dev,rag,bench,distributed,pages]"
echo "$want" > "$stamp"
echo "densezip: .venv ready" >&2
