"""Hypothesis fuzzing of every input an index takes: manifests, array files, search arguments, texts, CLI.

Every generated case must end in a :class:`~retrieval.errors.RetrievalError` (a clear message)
or a defined result that is checked, never another exception, a hang or a silently wrong
answer. ``DENSEZIP_FUZZ_EXAMPLES`` (default 25 per test) sets the number of cases; the counts in
docs/RELIABILITY.md come from ``DENSEZIP_FUZZ_EXAMPLES=1000 pytest tests/indexes/test_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexes import FaissIndex, FlatIndex, load_index
from indexes._io import file_sha256
from indexes.multivector import MultiVectorIndex
from retrieval.app.cli import main
from retrieval.errors import RetrievalError
from retrieval.types import MultiVectorEmbeddings

EXAMPLES = int(os.environ.get("DENSEZIP_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 25,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

DIM = 8
_X = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
_IDS = [f"d{i}" for i in range(40)]


def _build(kind: str) -> Any:
    if kind == "flat":
        index = FlatIndex(DIM)
    elif kind == "hnsw":
        index = FaissIndex(DIM, spec="HNSW8", ef_search=64)
    elif kind == "ivf":
        index = FaissIndex(DIM, spec="IVF2,Flat", nprobe=2).train(_X)
    else:
        mv = MultiVectorEmbeddings.from_list([np.stack([x, -x]) for x in _X], ids=_IDS)
        return MultiVectorIndex(DIM, spec="FP16").add(mv)
    index.add(_X, ids=_IDS)
    index.delete(["d5"])
    return index


SAVED: dict[str, Path] = {}
_ROOT = Path(tempfile.mkdtemp(prefix="densezip-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)
    SAVED.clear()


def _saved(kind: str) -> Path:
    if kind not in SAVED:
        SAVED[kind] = _build(kind).save(_ROOT / kind)
    return SAVED[kind]


@contextlib.contextmanager
def copy_of(source: Path, root: Path) -> Iterator[Path]:
    """A scratch copy of the saved directory ``source`` under ``root``, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    try:
        yield Path(shutil.copytree(source, work / "ix"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy(kind: str) -> contextlib.AbstractContextManager[Path]:
    return copy_of(_saved(kind), _ROOT)


def _same(a: Any, b: Any) -> bool:
    if a.doc_ids != b.doc_ids or a.dim != b.dim:
        return False
    if isinstance(a, MultiVectorIndex):
        q = MultiVectorEmbeddings.from_list([np.stack([x]) for x in _X[:4]])
    else:
        q = _X[:4]
    # A rehashed file may hold NaN / inf payload that matches its manifest: it is trusted
    # (checksums catch corruption, not a forged manifest), so its arithmetic warnings are not ours.
    with np.errstate(all="ignore"):
        return bool(a.search(q, k=5).doc_ids == b.search(q, k=5).doc_ids)


# ---------------------------------------------------------------------- manifests
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# Keys whose change alters what the index *is*: a load that succeeds must then give the same index.
STRUCTURAL = {"format", "format_version", "index_type", "dim", "count", "arrays", "files"}


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def manifest_mutations(draw: st.DrawFn, raw: dict[str, Any]) -> tuple[str, bytes, bool]:
    how = draw(st.sampled_from(["replace", "delete", "version", "text", "bytes"]))
    if how == "text":
        return how, draw(st.text(max_size=200)).encode("utf-8", "surrogatepass"), True
    if how == "bytes":
        return how, draw(st.binary(max_size=200)), True
    data = json.loads(json.dumps(raw))
    if how == "version":
        data["format_version"] = draw(st.integers(-3, 10**6) | st.text(max_size=3) | st.none())
        return how, json.dumps(data).encode(), True
    path = draw(st.sampled_from(_paths(data)))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return f"{how} {'.'.join(path)}", json.dumps(data).encode(), path[0] in STRUCTURAL


@pytest.mark.parametrize("kind", ["flat", "hnsw", "mv"])
@FUZZ
@given(data=st.data())
def test_fuzz_manifest(kind, data):
    original = load_index(_saved(kind))
    raw = json.loads((_saved(kind) / "manifest.json").read_text())
    what, text, structural = data.draw(manifest_mutations(raw))
    with _copy(kind) as path:
        (path / "manifest.json").write_bytes(text)
        try:
            loaded = load_index(path)
        except RetrievalError as exc:
            assert str(exc)
            return
        # Loading succeeded: the manifest must have said the same thing in structural terms.
        if structural:
            assert _same(loaded, original), what


# ---------------------------------------------------------------------- array files
dtypes = st.sampled_from(["float32", "float64", "float16", "int64", "uint8", "bool", "int8"])
shapes = st.lists(st.integers(0, 50), min_size=0, max_size=3).map(tuple)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "mv"])
@FUZZ
@given(data=st.data())
def test_fuzz_array_files(kind, data):
    original = load_index(_saved(kind))
    files = sorted(p.name for p in _saved(kind).iterdir() if p.name != "manifest.json")
    name = data.draw(st.sampled_from(files))
    how = data.draw(st.sampled_from(["truncate", "array", "overwrite", "append"]))
    rehash = data.draw(st.booleans()) and not name.endswith(".index")  # FAISS trusts a file whose hash matches
    with _copy(kind) as path:
        target = path / name
        content = target.read_bytes()
        if how == "truncate":
            target.write_bytes(content[: data.draw(st.integers(0, max(len(content) - 1, 0)))])
        elif how == "array":
            shape = data.draw(shapes)
            np.save(target, np.zeros(shape, dtype=data.draw(dtypes)), allow_pickle=False)
        elif how == "overwrite":
            pos = data.draw(st.integers(0, len(content) - 1))
            patch = data.draw(st.binary(min_size=1, max_size=16))
            target.write_bytes(content[:pos] + patch + content[pos + len(patch):])
        else:
            target.write_bytes(content + data.draw(st.binary(min_size=1, max_size=64)))
        changed = target.read_bytes() != content
        if rehash:
            raw = json.loads((path / "manifest.json").read_text())
            raw["files"][name] = {"bytes": target.stat().st_size, "sha256": file_sha256(target)}
            (path / "manifest.json").write_text(json.dumps(raw))
        try:
            loaded = load_index(path)
        except RetrievalError as exc:
            assert str(exc)
            return
        if not changed or _same(loaded, original):
            return  # e.g. bytes appended after the array data, which np.load never reads
        # A different index may only come from a rehashed file that is itself valid (its header,
        # dtype, shape and id count fit the manifest): nothing can tell that from a real one.
        # An unhashed change must always be caught by the checksum.
        assert rehash, f"{how} of {name} went unnoticed"
        assert how in ("overwrite", "array") or name == "doc_ids.txt", f"{how} of {name} loaded as another index"


# ---------------------------------------------------------------------- search arguments
bad_k = st.one_of(st.integers(-3, 300), st.floats(allow_nan=True), st.none(), st.booleans(), st.text(max_size=3),
                  st.just(np.int64(3)), st.just(np.float32(2.0)))
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def query_arrays(draw: st.DrawFn) -> Any:
    ndim = draw(st.sampled_from([0, 1, 2, 2, 2, 3]))
    shape = tuple(draw(st.integers(0, 4)) if i == 0 else draw(st.sampled_from([DIM, DIM, 0, 7, 9])) for i in range(ndim))
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "int32", "bool", "complex64", "object"]))
    size = int(np.prod(shape))
    values = draw(st.lists(floats, min_size=size, max_size=size))
    arr = np.array(values, dtype=np.float64).reshape(shape)
    with np.errstate(all="ignore"):
        return arr.astype(dtype) if dtype != "object" else arr.astype(object)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@FUZZ
@given(queries=query_arrays(), k=bad_k,
       subset=st.none() | st.lists(st.sampled_from([*_IDS[:12], "nope", ""]), max_size=6))
def test_fuzz_search_arguments(kind, queries, k, subset):
    index = _build_cached(kind)
    try:
        result = index.search(queries, k=k, subset=subset)
    except RetrievalError as exc:
        assert str(exc)
        return
    nq, kk = np.asarray(queries).shape[0], min(int(k), len(index))  # one column per live document at most
    assert result.labels.shape == (nq, kk) and result.scores.shape == (nq, kk)
    allowed = set(subset) if subset is not None else set(index.doc_ids)
    for row, scores in zip(result.doc_ids, result.scores, strict=True):
        assert set(row) <= allowed and "d5" not in row and len(set(row)) == len(row)
        assert np.all(np.isfinite(scores[: len(row)])) and np.all(np.isneginf(scores[len(row):]))
        assert np.all(np.diff(scores[: len(row)]) <= 1e-5)
        if kind != "ivf":  # exact / exhaustive-enough kinds fill every row they can
            assert len(row) == min(kk, len(allowed))


@FUZZ
@given(k=bad_k, lengths=st.lists(st.integers(0, 4), max_size=4), width=st.sampled_from([DIM, DIM, 3]),
       bad=st.sampled_from([None, np.nan, np.inf]))
def test_fuzz_multivector_search(k, lengths, width, bad):
    index = _build_cached("mv")
    vectors = np.random.default_rng(len(lengths)).standard_normal((sum(lengths), width)).astype(np.float32)
    if bad is not None and vectors.size:
        vectors[0, 0] = bad
    queries = MultiVectorEmbeddings(vectors=vectors, offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                                    ids=[f"q{i}" for i in range(len(lengths))])
    try:
        result = index.search(queries, k=k)
    except RetrievalError as exc:
        assert str(exc)
        return
    assert result.labels.shape == (len(lengths), min(int(k), len(index)))
    for row, n in zip(result.doc_ids, lengths, strict=True):
        assert len(row) == (min(int(k), 40) if n else len(row)) and len(set(row)) == len(row)


_CACHE: dict[str, Any] = {}


def _build_cached(kind: str) -> Any:
    if kind not in _CACHE:
        _CACHE[kind] = _build(kind)
    return _CACHE[kind]


# ---------------------------------------------------------------------- texts
texts = st.one_of(
    st.just(""), st.text(alphabet=" \t\n\r\u00a0\u2003", max_size=20),
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4),  # lone surrogates
    st.binary(max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape")),  # invalid UTF-8 as Python reads it
    st.integers(300, 3000).map(lambda n: "word " * n),  # far longer than the model's 256 tokens
)


@FUZZ
@given(batch=st.lists(texts, min_size=1, max_size=3))
def test_fuzz_texts_fake_encoder_pipeline(batch, fake_encoder_cls):
    # The pipeline's text path (Retriever -> encoder -> index) with the deterministic encoder.
    from retrieval.pipeline import Retriever

    encoder = fake_encoder_cls(DIM)
    index = FlatIndex(DIM).add(encoder.encode_documents(["alpha beta", "gamma"], ids=["a", "g"]))
    try:
        result = Retriever(encoder, index).search(batch, k=2)
    except RetrievalError as exc:
        assert str(exc)
        return
    assert len(result.doc_ids) == len(batch) and all(set(r) <= {"a", "g"} for r in result.doc_ids)


@pytest.mark.slow
@settings(max_examples=max(10, EXAMPLES // 5), deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(texts, min_size=1, max_size=3))
def test_fuzz_texts_real_encoder(batch, minilm_encoder):
    try:
        q = minilm_encoder.encode_queries(batch)
        d = minilm_encoder.encode_documents(batch)
    except RetrievalError as exc:
        assert str(exc)
        return
    for vectors in (np.asarray(q), d.vectors):
        assert vectors.shape == (len(batch), minilm_encoder.dim) and np.isfinite(vectors).all()


# ---------------------------------------------------------------------- CLI arguments
cli_words = st.sampled_from(["search", "evaluate", "check", "index", "demo", "train-jpq", "-k", "0", "-1", "3",
                             "abc", "--json", "--no-verify", "--spec", "IVF0,PQ", "--out", "--nprobe", "--overwrite",
                             "--device", "cuda:9", "--split", "", "\x00", "--", "-v", "--help", "--version"])


@FUZZ
@given(argv=st.lists(st.one_of(cli_words, st.sampled_from(["@INDEX", "@DAMAGED", "@MISSING"]), st.text(max_size=8)),
                     max_size=6))
def test_fuzz_cli_arguments(argv):
    # Paths stand in for a good index, a damaged one and a missing one. Commands that would do
    # real work (encoding a corpus) are not generated: "index"/"demo" get only missing data sets.
    good = _saved("flat")
    damaged = _ROOT / "damaged"
    if not damaged.exists():
        shutil.copytree(good, damaged)
        (damaged / "vectors.npy").write_bytes(b"\x93NUMPY")
    subs = {"@INDEX": str(good), "@DAMAGED": str(damaged), "@MISSING": str(_ROOT / "missing")}
    args = [subs.get(a, a) for a in argv]
    if args and args[0] in ("index", "demo", "train-jpq"):
        # Never let a fuzz case encode a real corpus or load the model: point data at nothing.
        args = [args[0], str(_ROOT / "missing"), *[a for a in args[1:] if a not in ("scifact", "cranfield")]]
        if args[0] in ("index", "demo"):
            args += ["--data", str(_ROOT / "missing")] if args[0] == "demo" else ["--out", str(_ROOT / "out")]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(args)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help / --version exit 0
        assert exc.code in (0, 2), (args, exc.code)
        return
    assert status in (0, 1, 2), (args, status)
    if status == 2:
        assert err.getvalue().startswith("error: "), err.getvalue()


@FUZZ
@given(text=texts)
def test_fuzz_text_validation(text):
    # The encoders' shared input check: invalid Unicode is refused with a clear error before any model work.
    from retrieval.encode._checks import as_text_list
    from retrieval.errors import ConfigError

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(ConfigError, match="not valid Unicode"):
            as_text_list(["fine", text], what="encode_documents")
    else:
        assert as_text_list(["fine", text], what="encode_documents") == ["fine", text]
