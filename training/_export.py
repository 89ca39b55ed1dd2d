"""Export of a trained JPQ index: the FAISS layouts it can take, and the saved directory.

JPQ trains PQ centroids against fixed document codes. The same codes and centroids can be
served in other FAISS layouts without re-encoding a document:

* ``PQ<M>x<b>`` (the training layout, optionally behind the OPQ rotation);
* ``PQ<M>x4fs``: FAISS fast-scan (4-bit codes, lookup tables held in SIMD registers), built
  from the trained ``IndexPQ`` with its codes repacked;
* ``IVF<n>,PQ<M>x<b>[fs]``: an inverted file over the rotated vectors whose lists hold the
  *same* codes: the PQ encodes the vectors themselves (``by_residual=False``), not residuals,
  so the JPQ codebook applies unchanged and the coarse quantizer only partitions.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import ConfigError

__all__ = ["INDEX_DIR", "QUERY_ENCODER_DIR", "export_faiss", "load_jpq", "save_jpq"]

QUERY_ENCODER_DIR = "query_encoder"
INDEX_DIR = "index"
#: Lists probed by default in an exported IVF layout (capped at the list count).
DEFAULT_EXPORT_NPROBE = 16


def export_faiss(trainer: Any, *, fast_scan: bool = False, ivf_lists: int | None = None) -> tuple[Any, str]:
    """The trainer's index in the asked-for layout, and its factory string.

    Parameters
    ----------
    trainer : JPQTrainer
    fast_scan : bool
        Serve the codes with FAISS fast-scan; needs a run trained with ``nbits=4``.
    ivf_lists : int, optional
        Put an inverted file with this many lists (k-means over the rotated document vectors)
        in front of the codes; searched with ``nprobe`` = min(lists, 16) unless changed.
    """
    faiss, args = trainer._faiss, trainer.args
    trainer._sync_centroids()
    if fast_scan and args.nbits != 4:
        raise ConfigError(f"fast-scan layouts hold 4-bit codes; this run trained nbits={args.nbits}. Train with "
                          f"nbits=4 (twice the sub-quantizers at the same bytes: m={2 * args.m}) to export fast-scan.")
    n = len(trainer.doc_ids)
    if ivf_lists is not None and (isinstance(ivf_lists, bool) or not isinstance(ivf_lists, int)
                                  or not 1 <= ivf_lists <= n):
        raise ConfigError(f"ivf_lists must be an integer in 1..{n} (the number of documents); got {ivf_lists!r}.")
    if not fast_scan and ivf_lists is None:
        return trainer.index, args.spec
    pq_index = trainer._pq_index
    keep: list[Any] = []  # Python owners of the C++ parts until the final copy below
    if ivf_lists is None:
        core = faiss.IndexPQFastScan(pq_index)
    else:
        core = _ivf_with_fixed_codes(trainer, ivf_lists, keep)
        if fast_scan:
            keep.append(core)
            core = faiss.IndexIVFPQFastScan(core)
        core.nprobe = min(ivf_lists, DEFAULT_EXPORT_NPROBE)
    keep.append(core)
    full = core
    if isinstance(trainer.index, faiss.IndexPreTransform):
        full = faiss.IndexPreTransform(trainer.index.chain.at(0), core)
        keep.append(full)
    # A serialise / deserialise round trip gives one index that owns all of its parts.
    exported = faiss.deserialize_index(faiss.serialize_index(full))
    spec = ",".join(
        ([f"OPQ{args.m}"] if args.opq else []) + ([f"IVF{ivf_lists}"] if ivf_lists else [])
        + [f"PQ{args.m}x{args.nbits}" + ("fs" if fast_scan else "")]
    )
    return exported, spec


def _ivf_with_fixed_codes(trainer: Any, nlist: int, keep: list[Any]) -> Any:
    """An ``IndexIVFPQ`` (inner product, ``by_residual=False``) holding the trainer's fixed codes."""
    faiss, args = trainer._faiss, trainer.args
    pq_index = trainer._pq_index
    rotated = np.ascontiguousarray(trainer._vectors @ trainer.rotation.detach().cpu().numpy(), dtype=np.float32)
    kmeans = faiss.Kmeans(trainer.dim, nlist, niter=20, seed=args.seed, max_points_per_centroid=256)
    kmeans.train(rotated)
    quantizer = faiss.IndexFlatIP(trainer.dim)
    quantizer.add(kmeans.centroids)
    keep.append(quantizer)
    ivf = faiss.IndexIVFPQ(quantizer, trainer.dim, nlist, args.m, args.nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.by_residual = False
    faiss.copy_array_to_vector(faiss.vector_to_array(pq_index.pq.centroids), ivf.pq.centroids)
    ivf.is_trained = True
    _, lists = quantizer.search(rotated, 1)
    lists = lists.ravel()
    packed = faiss.vector_to_array(pq_index.codes).reshape(pq_index.ntotal, pq_index.pq.code_size)
    for list_no in np.unique(lists):
        rows = np.flatnonzero(lists == list_no).astype(np.int64)
        codes = np.ascontiguousarray(packed[rows])
        ivf.invlists.add_entries(int(list_no), len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(codes))
    ivf.ntotal = pq_index.ntotal
    return ivf


def save_jpq(trainer: Any, path: str | os.PathLike[str], *, overwrite: bool = False, fast_scan: bool = False,
             ivf_lists: int | None = None) -> Path:
    """Write ``path/index`` (an ordinary densezip FaissIndex with the trained PQ, in the layout
    :func:`export_faiss` builds) and ``path/query_encoder`` (a sentence-transformers model).

    The two are written into a temporary sibling that replaces ``path`` in one atomic step
    (:func:`indexes._io.atomic_directory`), so a killed save leaves the old pair or the new
    pair, never a new encoder beside an old index. An existing ``path`` must be an empty
    directory, or (with ``overwrite=True``) a JPQ export or other densezip directory;
    anything else is refused untouched (ConfigError).
    """
    from indexes._io import atomic_directory
    from indexes.faiss_index import FaissIndex
    from retrieval.encode.dense import DenseEncoder

    out = Path(path)
    faiss_index, spec = export_faiss(trainer, fast_scan=fast_scan, ivf_lists=ivf_lists)
    history = trainer.history
    with atomic_directory(out, overwrite=overwrite, replace_empty=True) as tmp:
        encoder_dir = tmp / QUERY_ENCODER_DIR
        _query_model(trainer).save(str(encoder_dir))
        encoder = DenseEncoder(encoder_dir, device="cpu", max_seq_length=trainer.args.max_query_length,
                               cache_dir=False)
        description = encoder.describe()
        description["model"] = f"../{QUERY_ENCODER_DIR}"  # resolved against the index directory on load
        index = FaissIndex.from_faiss(faiss_index, trainer.doc_ids, spec=spec)
        index.metadata["encoder"] = description
        index.metadata["jpq"] = {"args": asdict(trainer.args), "steps": history.steps,
                                 "train_seconds": history.seconds, "dev": history.dev,
                                 "selected": history.selected}
        (tmp / "jpq.json").write_text(json.dumps(index.metadata["jpq"], indent=2), encoding="utf-8")
        index.save(tmp / INDEX_DIR)
    return out


def _query_model(trainer: Any) -> Any:
    """The trained query encoder, with the query adapter (if any) appended as a linear ``Dense``
    module, so that the saved model alone produces the vectors the index was trained for."""
    if trainer.adapter is None:
        return trainer.model
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense
    weight = trainer.adapter.detach().cpu().T.contiguous()  # Dense computes x @ weight.T == x @ adapter
    dense = Dense(trainer.dim, trainer.dim, bias=False, activation_function=torch.nn.Identity(), init_weight=weight)
    # Copies: the trainer's own modules stay where they are (a GPU run keeps training on its device).
    return SentenceTransformer(modules=[*(copy.deepcopy(m) for m in trainer.model), dense], device="cpu")


def load_jpq(path: str | os.PathLike[str], *, device: str = "auto") -> Any:
    """Open a JPQ output directory as a :class:`~retrieval.pipeline.Retriever`."""
    from retrieval.pipeline import Retriever

    return Retriever.load(Path(path) / INDEX_DIR, device=device)
