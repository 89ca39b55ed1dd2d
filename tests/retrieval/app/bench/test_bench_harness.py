"""`densezip bench` end to end on tiny synthetic data, plus its configuration, file formats and report."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.app.bench import load_config, parse_config, run_bench
from retrieval.app.bench.fvecs import read_fvecs, read_ivecs, write_fvecs, write_ivecs
from retrieval.app.bench.probe import paired_ratio, time_interleaved
from retrieval.app.bench.report import BEGIN_MARKER, END_MARKER, render_markdown
from retrieval.app.bench.tiny import write_smoke_data
from retrieval.app.bench.vector_sets import recall_at
from retrieval.app.cli import main
from retrieval.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smoke_data(tmp_path_factory.mktemp("bench-data"))


class FakeTokenEncoder:
    """One FakeEncoder vector per word, saliency 1 / (position + 1): a stand-in for MultiVectorEncoder."""

    cache_tag = "fake-tokens"

    def __init__(self) -> None:
        from conftest import FakeEncoder  # the suite's deterministic encoder

        self.words = FakeEncoder(64)

    def _encode(self, texts: list[str], ids: list[str] | None) -> Any:
        from retrieval.types import MultiVectorEmbeddings

        arrays = [self.words.encode_queries(t.split() or [""]) for t in texts]
        saliency = [1.0 / np.arange(1, len(a) + 1) for a in arrays]
        return MultiVectorEmbeddings.from_list(arrays, ids=ids, saliency=saliency)

    def encode_documents(self, texts: list[str], ids: list[str] | None = None) -> Any:
        return self._encode(texts, ids)

    def encode_queries(self, texts: list[str], ids: list[str] | None = None) -> Any:
        return self._encode(texts, ids)


class CachedOnlyTokenEncoder(FakeTokenEncoder):
    """Encodes queries; refuses documents, which must then come from the cache."""

    def encode_documents(self, texts: list[str], ids: list[str] | None = None) -> Any:
        raise AssertionError("document token vectors should have been read from the cache")


@pytest.fixture(scope="module")
def smoke_result(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One run of the shipped smoke configuration, shared by the tests that inspect it."""
    from conftest import FakeEncoder  # module scope cannot take the fake_encoder_cls fixture

    out = tmp_path_factory.mktemp("bench-out")
    config = load_config("smoke", data_root=data_root)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:  # the token-vector cache must not land in ~/.cache
        mp.setenv("DENSEZIP_CACHE", str(tmp_path_factory.mktemp("bench-cache")))
        result = run_bench(config, out, command="densezip bench smoke", encoder_factory=lambda model: FakeEncoder(64),
                           token_encoder_factory=lambda model: FakeTokenEncoder(), progress=lines.append)
        # A second text-only run reads the token vectors back from the cache instead of encoding them.
        again = run_bench(replace(config, vectors=()), tmp_path_factory.mktemp("bench-again"), plots=False,
                          encoder_factory=lambda model: FakeEncoder(64), token_encoder_factory=lambda model: CachedOnlyTokenEncoder(),
                          progress=lines.append)
    assert sum("encoded" in line and "token vectors" in line for line in lines) == 1
    assert [r["nDCG@10"] for r in again["text"][0]["rows"]] == [r["nDCG@10"] for r in result["text"][0]["rows"]]
    return result, out


def test_smoke_config_runs_end_to_end(smoke_result: tuple[dict[str, Any], Path]) -> None:
    result, out = smoke_result
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(result))
    for png in ("quality_vs_bytes.png", "recall_vs_qps_tiny-vectors.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "Command: `densezip bench smoke`" in report
    assert "| HNSW16 ef_search=32 |" in report and "![recall versus QPS, tiny-vectors](./recall_vs_qps_tiny-vectors.png)" in report
    assert result["machine"]["threads"] == 1 and result["machine"]["versions"]["numpy"] == np.__version__
    assert result["bandwidth"]["read_bytes_per_s"] > 1e8


def test_text_rows_measure_quality_size_and_speed(smoke_result: tuple[dict[str, Any], Path]) -> None:
    (ds,) = smoke_result[0]["text"]
    rows = {r["label"]: r for r in ds["rows"]}
    assert list(rows) == ["exact (NumPy)", "Flat", "HNSW16 ef_search=32", "IVF4,Flat nprobe=2", "PQ8x4",
                          "MaxSim KMeans16", "MaxSim Prune0.5,KMeans16r2 first_stage=centroid nprobe=2",
                          "exact (NumPy), 2 shards", "IVF4,PQ8x4 nprobe=4, 3 shards", "MaxSim KMeans16, 2 shards"]
    exact, flat, pq = rows["exact (NumPy)"], rows["Flat"], rows["PQ8x4"]
    assert exact["nDCG@10"] == pytest.approx(flat["nDCG@10"])  # both exhaustive: same ranking
    assert exact["nDCG@10"] > 0.5  # topic words make the fake encoder's ranking meaningful
    assert pq["memory_bytes_per_doc"] < flat["memory_bytes_per_doc"] and pq["disk_bytes_per_doc"] < flat["disk_bytes_per_doc"]
    assert flat["scan_bytes_per_query"] == 150 * 64 * 4 and pq["scan_bytes_per_query"] == 150 * 4
    assert rows["HNSW16 ef_search=32"]["scan_bytes_per_query"] is None
    mv, pruned = rows["MaxSim KMeans16"], rows["MaxSim Prune0.5,KMeans16r2 first_stage=centroid nprobe=2"]
    assert mv["nDCG@10"] > 0.35 and mv["timing_queries"] == 6  # random ranking: about 0.2 and mv["scan_bytes_per_query"] is None
    assert pruned["multivector"]["token_vectors_per_doc"] < mv["multivector"]["token_vectors_per_doc"]
    # Sharded kinds: the same answers as one index (exhaustive search merges exactly), their
    # shards' sizes summed, the disk size counting every shard directory.
    sharded_exact, sharded_mv = rows["exact (NumPy), 2 shards"], rows["MaxSim KMeans16, 2 shards"]
    assert sharded_exact["nDCG@10"] == pytest.approx(exact["nDCG@10"])
    assert sharded_exact["memory_bytes_per_doc"] == pytest.approx(exact["memory_bytes_per_doc"], rel=0.1)
    assert sharded_exact["disk_bytes_per_doc"] > exact["disk_bytes_per_doc"] * 0.9
    assert sharded_mv["multivector"]["token_vectors_per_doc"] == pytest.approx(mv["multivector"]["token_vectors_per_doc"])
    assert rows["IVF4,PQ8x4 nprobe=4, 3 shards"]["memory_bytes_per_doc"] < flat["memory_bytes_per_doc"]
    for r in ds["rows"]:
        for batch in ("1", "16"):
            t = r["timing"][batch]
            assert t["ours"]["qps_min"] <= t["ours"]["qps"] <= t["ours"]["qps_max"]
            assert (t["ratio"] is None) == (r["kind"] in ("exact", "multivector") or "shards" in r["label"])


def test_vector_sweeps_recall_and_wrapper_ratio(smoke_result: tuple[dict[str, Any], Path]) -> None:
    (ds,) = smoke_result[0]["vectors"]
    by_family: dict[str, list[dict[str, Any]]] = {}
    for r in ds["rows"]:
        by_family.setdefault(r["family"], []).append(r)
    assert {f: len(v) for f, v in by_family.items()} == {"Flat": 1, "HNSW16": 2, "IVF-Flat": 2, "PQ": 2}
    assert by_family["Flat"][0]["recall@1"] == 1.0 and by_family["Flat"][0]["recall@10"] == 1.0
    ivf = by_family["IVF-Flat"]
    assert [r["search_params"] for r in ivf] == [{"nprobe": 1}, {"nprobe": 4}]
    assert ivf[0]["build_s"] == ivf[1]["build_s"]  # one build serves the whole search-time sweep
    assert ivf[0]["recall@10"] <= ivf[1]["recall@10"]
    pq = by_family["PQ"]
    assert [r["spec"] for r in pq] == ["PQ4x4", "PQ8x4"]
    assert pq[0]["scan_bytes_per_query"] < pq[1]["scan_bytes_per_query"]
    for r in ds["rows"]:
        assert r["same_results_as_raw"]
        assert 0 < r["timing"]["1"]["ratio"] < 10 and r["timing"]["16"]["ours"]["repeats"] == 2


def test_cli_bench_updates_a_document(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "vectors.toml"
    config.write_text(
        'name = "cli"\nrepeats = 1\nwarmup = 0\nbatch_sizes = [8]\nbandwidth_mib = 8\n'
        '[[vectors]]\nname = "v"\nbase = "tiny-vectors/base.fvecs"\nqueries = "tiny-vectors/query.fvecs"\n'
        'groundtruth = "tiny-vectors/groundtruth.ivecs"\n'
        'indexes = [{spec = "Flat"}, {spec = "HNSW16", sweep = {ef_search = [16]}}]\n'
    )
    doc = tmp_path / "docs" / "BENCH.md"
    doc.parent.mkdir()
    doc.write_text(f"# Title\n\n{BEGIN_MARKER}\nold table\n{END_MARKER}\n\n## Kept\n")
    out = tmp_path / "docs" / "bench"
    code = main(["bench", str(config), "--out", str(out), "--data-root", str(data_root), "--update-doc", str(doc)])
    assert code == 0
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Title\n") and text.endswith("## Kept\n")
    assert "![recall versus QPS, v](bench/recall_vs_qps_v.png)" in text
    assert (out / "recall_vs_qps_v.png").is_file()
    assert "| HNSW16 | ef_search=16 |" in capsys.readouterr().out


def test_cli_render_only_redraws_from_results(smoke_result: tuple[dict[str, Any], Path], tmp_path: Path) -> None:
    _, out = smoke_result
    (out / "report.md").unlink()
    (out / "quality_vs_bytes.png").unlink()
    doc = tmp_path / "doc.md"
    doc.write_text(f"{BEGIN_MARKER}\n{END_MARKER}\n")
    assert main(["bench", "smoke", "--out", str(out), "--render-only", "--update-doc", str(doc), "--json"]) == 0
    assert (out / "quality_vs_bytes.png").is_file() and "Command: `densezip bench smoke`" in (out / "report.md").read_text()
    assert "### `densezip bench`" in doc.read_text()  # one level deeper inside a document
    assert main(["bench", "smoke", "--out", str(tmp_path / "empty"), "--render-only"]) == 2


def test_cli_rejects_a_document_without_markers_before_running(data_root: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    code = main(["bench", "smoke", "--out", str(tmp_path / "out"), "--data-root", str(data_root),
                 "--update-doc", str(doc)])
    assert code == 2
    assert "must hold exactly one" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shipped_full_config_parses(tmp_path: Path) -> None:
    # The full config points at real data; create empty stand-ins so only the parsing is tested.
    for rel in ("deep10k/deep10k_base.fvecs", "deep10k/deep10k_query.fvecs", "deep10k/deep10k_groundtruth.ivecs",
                "fmnist_small/fmnistsmall_base.fvecs", "fmnist_small/fmnistsmall_query.fvecs",
                "fmnist_small/fmnistsmall_groundtruth.ivecs"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    full = load_config("full", data_root=tmp_path)
    assert [ds.name for ds in full.text] == ["scifact", "cranfield"] and full.text[0].path == "scifact"
    kinds = {ix.kind for ix in full.text[0].indexes}
    assert kinds == {"exact", "faiss", "jpq", "multivector"}
    pq = next(ix for ix in full.vectors[0].indexes if ix.name == "PQ")
    assert [p["m"] for p in pq.build_points()] == [8, 16, 24, 48] and pq.search_points() == [{}]
    assert full.vectors[0].base == str(tmp_path / "deep10k/deep10k_base.fvecs")


def test_full_config_needs_no_data_root_every_path_is_shipped() -> None:
    import retrieval.datasets as bundled

    package_data = Path(bundled.__file__).resolve().parent
    full = load_config("full")  # no data_root: nothing is measured, only resolved
    for ds in full.text:
        assert ds.path in bundled.available_datasets() and bundled.dataset_path(ds.path).is_dir()
    assert [v.name for v in full.vectors] == ["deep10k", "fmnist"]
    for v in full.vectors:
        files = [Path(v.base), Path(v.queries), Path(v.groundtruth)]
        assert all(f.is_file() and f.resolve().is_relative_to(package_data) for f in files), files
        base, queries, truth = read_fvecs(v.base), read_fvecs(v.queries), read_ivecs(v.groundtruth)
        assert base.shape[1] == queries.shape[1] and truth.shape == (len(queries), 100)
        assert len(queries) >= v.timing_queries and 0 <= truth.min() and truth.max() < len(base)
    assert read_fvecs(full.vectors[0].base).shape == (10_000, 96)


def test_smoke_without_data_root_writes_its_tiny_data(data_root: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.app.bench import cli as bench_cli
    from retrieval.app.cli import build_parser

    seen: dict[str, Any] = {}

    def fake_run(args: Any, root: str | None) -> tuple[dict[str, Any], str]:
        assert root is not None
        seen["files"] = {p.relative_to(root).as_posix(): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}
        seen["config"] = load_config(args.config, data_root=root)  # resolves inside the generated directory
        return {}, ""

    monkeypatch.setattr(bench_cli, "_run", fake_run)
    parse = build_parser().parse_args
    bench_cli.run_from_args(parse(["bench", "smoke", "--out", str(tmp_path / "out")]))
    # Deterministic: the same bytes as the suite's own copy of the data.
    assert seen["files"] == {p.relative_to(data_root).as_posix(): p.read_bytes()
                             for p in data_root.rglob("*") if p.is_file()}
    assert sorted(seen["files"]) == ["tiny-beir/corpus.jsonl", "tiny-beir/qrels/test.tsv", "tiny-beir/queries.jsonl",
                                     "tiny-vectors/base.fvecs", "tiny-vectors/groundtruth.ivecs",
                                     "tiny-vectors/query.fvecs"]
    assert not Path(seen["config"].vectors[0].base).exists()  # the temporary directory is gone afterwards
    smoke_toml = str(Path(bench_cli.__file__).parent / "configs" / "smoke.toml")
    assert bench_cli.needs_smoke_data(parse(["bench", smoke_toml]))
    for argv in (["bench", "smoke", "--data-root", str(data_root)], ["bench", "smoke", "--render-only"],
                 ["bench", "full"]):
        assert not bench_cli.needs_smoke_data(parse(argv))


def test_yaml_config_matches_toml(tmp_path: Path, data_root: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "name: y\nvectors:\n  - name: v\n    base: tiny-vectors/base.fvecs\n    queries: tiny-vectors/query.fvecs\n"
        "    groundtruth: tiny-vectors/groundtruth.ivecs\n    indexes:\n      - {spec: 'IVF8,Flat', sweep: {nprobe: [1, 2]}}\n"
    )
    (tmp_path / "c.toml").write_text(
        'name = "y"\n[[vectors]]\nname = "v"\nbase = "tiny-vectors/base.fvecs"\nqueries = "tiny-vectors/query.fvecs"\n'
        'groundtruth = "tiny-vectors/groundtruth.ivecs"\nindexes = [{spec = "IVF8,Flat", sweep = {nprobe = [1, 2]}}]\n'
    )
    a, b = load_config(tmp_path / "c.yaml", data_root=data_root), load_config(tmp_path / "c.toml", data_root=data_root)
    assert a.vectors == b.vectors and a.threads == b.threads == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x"}, "no data sets"),
        ({"name": "x", "thread": 2, "text": []}, "unknown key(s) ['thread']"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [{"kind": "hnsw"}]}]}, "kind must be one of"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [{"kind": "faiss"}]}]}, "needs spec"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [{"kind": "exact", "m": 8}]}]},
         "apply to kind 'jpq' only"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": []}]}, "lists no indexes"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [{"kind": "jpq", "shards": 2}]}]},
         "shards applies to kinds exact, faiss and multivector"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [{"kind": "exact", "shards": 0}]}]},
         "shards must be an integer >= 1"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [
            {"kind": "multivector", "spec": "Binary", "first_stage": "binary", "ef_search": 8}]}]},
         "ef_search applies to kind 'faiss', and to kind 'multivector' with first_stage = 'binary'"),
        ({"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [{"kind": "faiss", "spec": "HNSW8",
                                                                             "binary_index": "hnsw"}]}]},
         "['binary_index'] apply to kind 'multivector' only"),
        ({"name": "x", "repeats": 0, "text": [{"name": "t", "path": "scifact", "indexes": [{"kind": "exact"}]}]},
         "repeats must be an integer >= 1"),
        ({"name": "x", "vectors": [{"name": "v", "base": "/b", "queries": "/q", "groundtruth": "/g",
                                    "indexes": [{"spec": "PQ{m}x8", "sweep": {"nprobe": [1]}}]}]}, "must be exactly"),
        ({"name": "x", "vectors": [{"name": "v", "base": "missing.fvecs", "queries": "/q", "groundtruth": "/g",
                                    "indexes": [{"spec": "Flat"}]}]}, "not found"),
    ],
)
def test_bad_configs_fail_loudly(raw: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, roots=[tmp_path])
    assert message in str(info.value)


def test_multivector_binary_options_reach_the_index(tmp_path: Path) -> None:
    from indexes.factory import make_index

    raw = {"name": "x", "text": [{"name": "t", "path": "scifact", "indexes": [
        {"kind": "multivector", "spec": "BinaryITQ", "first_stage": "binary", "binary_index": "hnsw", "ef_search": 48,
         "nprobe": 4, "ndocs": 64, "token_k": 8}]}]}
    cfg = parse_config(raw, roots=[tmp_path]).text[0].indexes[0]
    assert cfg.ef_search == 48 and cfg.multivector == {"first_stage": "binary", "binary_index": "hnsw", "ndocs": 64,
                                                       "token_k": 8}
    index = make_index(8, cfg.spec, multivector=True, nprobe=cfg.nprobe, ef_search=cfg.ef_search, **cfg.multivector)
    assert (index.binary_index, index.binary_params.ef_search, index.binary_params.nprobe) == ("hnsw", 48, 4)
    assert (index.binary_params.ndocs, index.binary_params.token_k) == (64, 8)


def test_unknown_config_name_lists_shipped_ones() -> None:
    with pytest.raises(ConfigError, match=r"\['full', 'smoke'\]"):
        load_config("no-such-config")


def test_vecs_round_trip_and_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 3)).astype(np.float32)
    write_fvecs(tmp_path / "x.fvecs", x)
    np.testing.assert_array_equal(read_fvecs(tmp_path / "x.fvecs"), x)
    ids = rng.integers(0, 1000, (4, 7))
    write_ivecs(tmp_path / "i.ivecs", ids)
    np.testing.assert_array_equal(read_ivecs(tmp_path / "i.ivecs"), ids)
    (tmp_path / "bad.fvecs").write_bytes(np.array([3, 0, 0], dtype="<i4").tobytes())
    with pytest.raises(DataError, match="not a multiple"):
        read_fvecs(tmp_path / "bad.fvecs")
    (tmp_path / "mixed.fvecs").write_bytes(np.array([1, 0, 2, 0, 0], dtype="<i4").tobytes()[:16])
    with pytest.raises(DataError, match="vector 1 has dimension 2"):
        read_fvecs(tmp_path / "mixed.fvecs")
    with pytest.raises(DataError, match="cannot read"):
        read_fvecs(tmp_path / "absent.fvecs")


def test_recall_at_counts_padding_as_a_miss() -> None:
    labels = np.array([[3, -1], [0, 1]])
    truth = np.array([[3, 4], [1, 0]])
    assert recall_at(labels, truth, 2) == pytest.approx(0.75)
    assert recall_at(labels, truth, 1) == pytest.approx(0.5)


def test_time_interleaved_times_every_function_on_every_pass() -> None:
    calls: dict[str, int] = {"a": 0, "b": 0}

    def make(name: str) -> Any:
        def fn(batch: np.ndarray) -> None:
            calls[name] += len(batch)
        return fn

    queries = np.zeros((10, 2), dtype=np.float32)
    out = time_interleaved({"a": make("a"), "b": make("b")}, queries, batch_size=4, repeats=3, warmup=2)
    assert calls == {"a": 50, "b": 50}
    assert out["a"].repeats == 3 and out["a"].batch_size == 4 and out["b"].qps > 0


def test_time_interleaved_alternates_batches_and_pairs_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.app.bench import probe

    clock = [0.0]
    monkeypatch.setattr(probe.time, "perf_counter", lambda: clock[0])
    seen: list[tuple[str, float]] = []
    cost = {"slow": 2e-3, "fast": 1e-3}

    def make(name: str) -> Any:
        def fn(batch: np.ndarray) -> None:
            seen.append((name, float(batch[0, 0])))
            # A slow spell in the middle of every round doubles the cost of whoever runs then.
            spell = 2.0 if len(seen) % 6 in (2, 3) else 1.0
            clock[0] += cost[name] * spell
        return fn

    queries = np.repeat(np.arange(3, dtype=np.float32), 2)[:, None] * np.ones((1, 2), np.float32)  # 3 batches of 2
    out = time_interleaved({"slow": make("slow"), "fast": make("fast")}, queries, batch_size=2, repeats=4, warmup=1)
    assert len(seen) == 5 * 2 * 3
    for rnd in range(5):
        calls = seen[rnd * 6 : rnd * 6 + 6]
        assert sorted(calls) == sorted((n, b) for n in cost for b in (0.0, 1.0, 2.0))  # each batch once per function
        assert all(x[1] != y[1] for x, y in itertools.pairwise(calls))  # never the same batch twice in a row
    assert paired_ratio(out["slow"], out["fast"]) == pytest.approx(0.5, rel=0.2)
    assert len(out["slow"].runs) == 4 and out["fast"].p50_ms == pytest.approx(1.0, rel=1.0)


def test_report_renders_without_text_datasets(smoke_result: tuple[dict[str, Any], Path]) -> None:
    result = dict(smoke_result[0], text=[])
    md = render_markdown(result, image_dir="img")
    assert "quality versus bytes" not in md and "(img/recall_vs_qps_tiny-vectors.png)" in md
    assert "Exhaustive scans against the memory bandwidth" in md


def test_importing_the_harness_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, retrieval.app.bench; "
            "print([m for m in ('torch', 'faiss', 'matplotlib', 'sentence_transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
