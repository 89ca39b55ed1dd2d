"""``densezip check``: report everything that is wrong with a saved index directory.

Loading stops at the first problem; :func:`check_index` keeps going and lists them all,
without modifying anything (it does not even restore an interrupted save's backup, it
reports it). Each :class:`Problem` has a stable ``code``:

=====================  ======================================================================
code                   meaning
=====================  ======================================================================
missing-directory      the path does not exist or is not a directory
interrupted-save       the path is missing but a complete backup of it exists (load restores it)
leftover               a temporary / backup sibling left by a killed save (warning)
missing-manifest       no ``manifest.json`` (an interrupted first save, or not an index)
bad-json               the manifest is not valid UTF-8 JSON, or not an object
wrong-format           the manifest's ``format`` is not densezip's
future-version         ``format_version`` is newer than this densezip reads
bad-field              a manifest key is missing or has the wrong type / value
unlisted-file          a file the load reads is not in the manifest's file table (so it is unchecked)
unknown-index-type     ``index_type`` is not a registered index kind
missing-file           a file listed in the manifest is absent
unsafe-file            a name in the manifest is not a plain file name inside the directory (``..``,
                       an absolute path), or the entry is a symlink leading outside it, a FIFO, a
                       device or another non-regular file: it is refused without being opened
truncated-file         a file is shorter than recorded (or than its array header says)
size-mismatch          a file is longer than recorded
checksum-mismatch      a file's sha256 differs from the manifest
extra-file             a file in the directory is not listed in the manifest (warning)
bad-array              an array file has no readable ``.npy`` header
array-mismatch         an array's dtype / shape disagrees with the manifest
id-count               the ids (``id_*.npy``; format 1: ``doc_ids.txt``) are not one per row of ``count``
duplicate-ids          the ids repeat a live id
bad-ids                the id arrays are inconsistent: offsets out of order or not ending at the buffer's
                       end, a permutation that is not one, hashes / keys not sorted, hashes that are not
                       those of the ids, ids that are not UTF-8; or a format-2 index lists no id arrays
load-failed            every check above passed, but loading the index still failed
bad-passages           a RAG collection's passage store is missing, corrupt or disagrees with its index
bad-pages              a page collection's page store (records, images) is missing, corrupt or disagrees with its index
=====================  ======================================================================

A :class:`~indexes.sharded.ShardedIndex` is checked shard by shard (each problem's ``file``
starts with the shard's directory). A RAG collection (``index/`` + ``passages/``) is checked by
:func:`retrieval.rag.passages.check_collection`, which runs :func:`check_index` on its index and
adds ``bad-passages``; ``densezip check`` picks the right one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexes._idfixed import FIXED_ARRAYS, FixedStore
from indexes._ids import problems_of
from indexes._idstore import INT_ARRAYS, STR_ARRAYS, IntStore, StrStore
from indexes._io import _valid_array_entry as valid_array_entry
from indexes._io import file_sha256, leftover_paths
from indexes._paths import check_name, member, member_dir, open_member, stable_path
from indexes.manifest import _REQUIRED, FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, read_json, unlisted_files
from retrieval.errors import IndexFormatError

__all__ = ["CheckReport", "Problem", "check_index", "merge_report"]

Severity = Literal["error", "warning"]
_SHARDED_TYPES = ("ShardedIndex", "ShardedMultiVectorIndex")
_KNOWN_TYPES = ("FlatIndex", "FaissIndex", "MultiVectorIndex", "MultiVectorEmbeddings", "ShardedIndex",
                "ShardedMultiVectorIndex")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an index directory."""

    severity: Severity
    code: str
    file: str
    message: str


@dataclass
class CheckReport:
    """The outcome of :func:`check_index`; ``healthy`` when no problem is an error."""

    path: str
    index_type: str | None = None
    count: int | None = None
    files_checked: int = 0
    hashes_verified: bool = False
    loaded: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def add(self, severity: Severity, code: str, file: str, message: str) -> None:
        self.problems.append(Problem(severity, code, file, message))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["healthy"] = self.healthy
        return out

    def format(self) -> str:
        errors = sum(p.severity == "error" for p in self.problems)
        warnings = len(self.problems) - errors
        head = "OK" if self.healthy else "DAMAGED"
        kind = f"{self.index_type} with {self.count} rows, " if self.index_type else ""
        lines = [f"{self.path}: {head} ({kind}{self.files_checked} files checked, "
                 f"{errors} error(s), {warnings} warning(s))"]
        lines += [f"  {p.severity:7s} {p.code:18s} {p.file}: {p.message}" for p in self.problems]
        return "\n".join(lines)


def check_index(path: str | os.PathLike[str], *, verify: bool = True, load: bool = True) -> CheckReport:
    """Check a saved index directory and report every problem found.

    Parameters
    ----------
    path : path-like
        Directory written by ``save()``.
    verify : bool
        Hash every file against its recorded sha256 (reads the whole index once).
    load : bool
        When the file-level checks pass, also load the index (memory-mapped where the kind
        allows) so that backend-level damage, e.g. an unreadable FAISS file, is found.

    Returns
    -------
    CheckReport
    """
    directory = Path(path)
    report = CheckReport(path=str(directory), hashes_verified=verify)
    for leftover in leftover_paths(directory):
        if directory.exists() or ".old-" not in leftover.name:
            report.add("warning", "leftover", leftover.name,
                       "left by an interrupted save; the next save of this index removes it.")
    if not directory.is_dir():
        backups = [p for p in leftover_paths(directory) if ".old-" in p.name and (p / MANIFEST_NAME).is_file()]
        if backups and not directory.exists():
            report.add("error", "interrupted-save", backups[0].name,
                       f"{directory} is missing but a save that was interrupted left the previous index in "
                       f"{backups[0].name}; loading the index (or saving it again) restores it.")
        else:
            report.add("error", "missing-directory", str(directory), "does not exist or is not a directory.")
        return report
    raw = _manifest(directory, report)
    if raw is None:
        return report
    _files(directory, raw, report, verify=verify)
    _arrays(directory, raw, report)
    _ids(directory, raw, report)
    _id_arrays(directory, raw, report)
    if report.index_type in _SHARDED_TYPES:
        _shards(directory, raw, report, verify=verify)
    if load and report.healthy:
        _load(directory, report)
    return report


def merge_report(report: CheckReport, sub: CheckReport, prefix: str) -> None:
    """Add ``sub``'s problems and file count to ``report``, their paths under ``prefix``."""
    report.files_checked += sub.files_checked
    for p in sub.problems:
        report.add(p.severity, p.code, f"{prefix}/{p.file}", p.message)


def _safe(
    directory: Path, name: Any, report: CheckReport, *, what: str, missing: str | None, want_dir: bool = False
) -> Path | None:
    """``directory / name`` when it is safe to open (see :func:`indexes._paths.member`), else None.

    An unsafe name or entry is reported as ``unsafe-file`` without being opened; a missing
    entry as ``missing-file`` with the message ``missing`` (not at all when it is None).
    """
    try:
        check_name(directory, name, what=what)
        if not os.path.lexists(directory / name):
            if missing is not None:
                report.add("error", "missing-file", name, missing)
            return None
        return (member_dir if want_dir else member)(directory, name, what=what)
    except IndexFormatError as exc:
        report.add("error", "unsafe-file", repr(name)[:80] if not isinstance(name, str) else name[:80], str(exc))
        return None


def _shards(directory: Path, raw: dict[str, Any], report: CheckReport, *, verify: bool) -> None:
    params = raw.get("params")
    entries = params.get("shards") if isinstance(params, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("dir"), str) and Path(e["dir"]).name == e["dir"]
        and e["dir"] not in ("", ".", "..") and len(e["dir"].encode("utf-8", "surrogatepass")) <= 255
        for e in entries
    ):
        report.add("error", "bad-field", MANIFEST_NAME,
                   "params.shards must be a list of {'dir': NAME} shard entries, each NAME a plain sub-directory name.")
        return
    for n, entry in enumerate(entries):
        problems = len(report.problems)
        path = _safe(directory, entry["dir"], report, what=f"params.shards[{n}].dir", want_dir=True, missing=None)
        if path is None and len(report.problems) > problems:
            continue  # unsafe: reported, never opened
        path = path or directory / entry["dir"]  # a missing shard: the recursive check reports missing-directory
        sub = check_index(path, verify=verify, load=False)
        merge_report(report, sub, entry["dir"])
        if sub.count is not None and entry.get("count") != sub.count:
            report.add("error", "id-count", f"{entry['dir']}/{MANIFEST_NAME}",
                       f"holds {sub.count} rows; the sharded manifest records {entry.get('count')!r}.")


def _manifest(directory: Path, report: CheckReport) -> dict[str, Any] | None:
    file = directory / MANIFEST_NAME
    if not os.path.lexists(file):
        report.add("error", "missing-manifest", MANIFEST_NAME,
                   "absent: the directory is not a complete saved index (an interrupted first save leaves no "
                   "manifest). Rebuild the index.")
        return None
    if _safe(directory, MANIFEST_NAME, report, what="the manifest", missing=None) is None:
        return None
    try:
        raw = read_json(file, what="the manifest")
    except IndexFormatError as exc:
        report.add("error", "bad-json", MANIFEST_NAME, str(exc))
        return None
    if not isinstance(raw, dict):
        report.add("error", "bad-json", MANIFEST_NAME, f"must hold a JSON object; got {type(raw).__name__}.")
        return None
    if raw.get("format") != FORMAT_NAME:
        report.add("error", "wrong-format", MANIFEST_NAME,
                   f"format is {raw.get('format')!r}, expected {FORMAT_NAME!r}: not written by densezip.")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        report.add("error", "bad-field", MANIFEST_NAME, f"format_version must be a positive integer; got {version!r}.")
    elif version > FORMAT_VERSION:
        report.add("error", "future-version", MANIFEST_NAME,
                   f"format version {version} is newer than the {FORMAT_VERSION} this densezip reads; "
                   "upgrade with `pip install -U densezip`.")
    for key, typ in _REQUIRED.items():
        if key not in raw:
            report.add("error", "bad-field", MANIFEST_NAME, f"lacks the key {key!r}.")
            continue
        value = raw[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            report.add("error", "bad-field", MANIFEST_NAME,
                       f"{key!r} must be {getattr(typ, '__name__', typ)}; got {type(value).__name__} {value!r:.80}.")
    count, dim = raw.get("count"), raw.get("dim")
    if isinstance(count, int) and not isinstance(count, bool):
        if count < 0:
            report.add("error", "bad-field", MANIFEST_NAME, f"count must be >= 0; got {count}.")
        else:
            report.count = count
    if isinstance(raw.get("metric"), str) and raw["metric"] not in ("ip", "l2"):
        report.add("error", "bad-field", MANIFEST_NAME, f"metric must be 'ip' or 'l2'; got {raw['metric']!r:.80}.")
    if isinstance(dim, int) and not isinstance(dim, bool) and dim <= 0:
        report.add("error", "bad-field", MANIFEST_NAME, f"dim must be > 0; got {dim}.")
    index_type = raw.get("index_type")
    if isinstance(index_type, str):
        report.index_type = index_type
        if index_type not in _KNOWN_TYPES:
            report.add("error", "unknown-index-type", MANIFEST_NAME,
                       f"index_type {index_type!r} is not one of {list(_KNOWN_TYPES)}.")
    return raw


def _files(directory: Path, raw: dict[str, Any], report: CheckReport, *, verify: bool) -> None:
    files = raw.get("files")
    if not isinstance(files, dict):
        return
    for name, info in files.items():
        if not isinstance(info, dict):
            report.add("error", "bad-field", MANIFEST_NAME, f"files.{name[:80]} is not a plain file name -> {{bytes, sha256}}.")
            continue
        report.files_checked += 1
        p = _safe(directory, name, report, what="files", missing="listed in the manifest but absent.")
        if p is None:
            continue
        size, recorded = p.stat().st_size, info.get("bytes")
        if isinstance(recorded, int) and size != recorded:
            code = "truncated-file" if size < recorded else "size-mismatch"
            report.add("error", code, name, f"has {size} bytes; the manifest recorded {recorded}.")
            continue
        if verify and file_sha256(p, limit=size) != info.get("sha256"):
            report.add("error", "checksum-mismatch", name, "sha256 differs from the manifest: the file is corrupt.")
    for name in unlisted_files(raw):
        report.add("error", "unlisted-file", f"{name:.200}",
                   "read by the load but not listed in the manifest's file table, so it cannot be checked; "
                   "the manifest is damaged.")
    listed = set(files) | {MANIFEST_NAME}
    params = raw.get("params")
    if raw.get("index_type") in _SHARDED_TYPES and isinstance(params, dict) and isinstance(params.get("shards"), list):
        listed |= {e["dir"] for e in params["shards"] if isinstance(e, dict) and isinstance(e.get("dir"), str)}
    for child in sorted(directory.iterdir()):
        if child.name not in listed:
            report.add("warning", "extra-file", child.name, "not listed in the manifest (ignored by load).")


def _arrays(directory: Path, raw: dict[str, Any], report: CheckReport) -> None:
    arrays = raw.get("arrays")
    if not isinstance(arrays, dict):
        return
    for name, entry in arrays.items():
        if not valid_array_entry(entry):
            report.add("error", "bad-field", MANIFEST_NAME,
                       f"arrays.{name:.100} must have 'file' (a plain file name), 'dtype' (a string) and 'shape' "
                       "(a list of integers >= 0).")
            continue
        files = raw.get("files")
        listed = isinstance(files, dict) and entry["file"] in files  # then _files reported it already
        p = _safe(directory, entry["file"], report, what=f"arrays.{name}.file",
                  missing=None if listed else f"array {name!r} is absent.")
        if p is None:
            continue
        try:
            with open_member(p) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = read_header(f)
                offset = f.tell()
        except Exception as exc:  # a damaged header fails in many ways (ValueError, SyntaxError, TokenError, ...)
            report.add("error", "bad-array", p.name, f"no readable .npy header ({exc}).")
            continue
        if str(dtype) != entry["dtype"] or list(shape) != list(entry["shape"]):
            report.add("error", "array-mismatch", p.name,
                       f"holds {dtype} {tuple(shape)}; the manifest expects {entry['dtype']} {tuple(entry['shape'])}.")
        needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if p.stat().st_size < needed and not any(x.code in ("truncated-file", "size-mismatch") and x.file == p.name
                                                  for x in report.problems):
            report.add("error", "truncated-file", p.name,
                       f"has {p.stat().st_size} bytes; its header promises {needed}.")
        want = {"deleted": report.count, "deleted_bits": -(-report.count // 8)} if report.count is not None else {}
        if name in want and list(shape) != [want[name]]:
            report.add("error", "array-mismatch", p.name, f"must have shape ({want[name]},); got {tuple(shape)}.")


def _ids(directory: Path, raw: dict[str, Any], report: CheckReport) -> None:
    if report.count is None or not os.path.lexists(directory / "doc_ids.txt"):
        return
    p = _safe(directory, "doc_ids.txt", report, what="the ids file", missing=None)
    if p is None:
        return
    try:
        with open_member(p) as f:
            lines = f.read().decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        report.add("error", "id-count", p.name, f"not valid UTF-8 ({exc}).")
        return
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != report.count:
        report.add("error", "id-count", p.name, f"holds {len(lines)} ids; the manifest count is {report.count}.")
        return
    live = lines
    deleted = directory / "deleted.npy"
    if os.path.lexists(deleted):
        try:
            with open_member(member(directory, "deleted.npy")) as f:
                mask = np.load(f, allow_pickle=False)
            if mask.shape == (len(lines),) and mask.dtype == np.bool_:
                live = [doc_id for doc_id, gone in zip(lines, mask.tolist(), strict=True) if not gone]
        except Exception:  # reported by _arrays
            pass
    if len(set(live)) != len(live):
        report.add("error", "duplicate-ids", p.name, f"{len(live) - len(set(live))} live id(s) repeat.")


def _id_arrays(directory: Path, raw: dict[str, Any], report: CheckReport) -> None:
    """Check the id arrays of a format-2/3 index in full (:func:`indexes._ids.problems_of`)."""
    arrays, n = raw.get("arrays"), report.count
    if not isinstance(arrays, dict) or n is None:
        return
    names = next((layout for layout in (INT_ARRAYS, FIXED_ARRAYS, STR_ARRAYS) if layout[0] in arrays), None)
    if names is None:
        if n and raw.get("format_version") != 1 and report.index_type in ("FlatIndex", "FaissIndex",
                                                                          "MultiVectorIndex"):
            report.add("error", "bad-ids", MANIFEST_NAME, f"lists no id arrays ({FIXED_ARRAYS[0]} / {STR_ARRAYS[0]} / "
                       f"{INT_ARRAYS[0]}) for its {n} rows.")
        return
    loaded = {}
    optional = ("deleted", "deleted_bits", "id_sorted", "id_perm") if names == INT_ARRAYS else ("deleted", "deleted_bits")
    for name in dict.fromkeys((*names, "deleted", "deleted_bits")):
        entry = arrays.get(name)
        if name in optional and entry is None:
            continue
        if not valid_array_entry(entry):
            report.add("error", "bad-ids", MANIFEST_NAME, f"arrays.{name} is missing or malformed.")
            return
        if any(p.file == entry["file"] for p in report.problems):
            return  # its damage is reported already
        p = _safe(directory, entry["file"], report, what=f"arrays.{name}.file", missing=None)
        try:
            assert p is not None
            with open_member(p) as f:
                loaded[name] = np.load(stable_path(f, p), mmap_mode="r", allow_pickle=False)
        except Exception:  # reported by _files / _arrays
            return
    lengths = {"id_offsets": n + 1, "id_bytes": None, "deleted_bits": -(-n // 8)}
    for name, array in loaded.items():
        want, ndim = lengths.get(name, n), 2 if name == "id_block" else 1
        if array.ndim != ndim or (want is not None and len(array) != want):
            expected = f"({want}, W)" if ndim == 2 else f"({want},)"
            report.add("error", "id-count", arrays[name]["file"], f"has shape {array.shape}; expected {expected}.")
            return
    try:
        dead = _dead_bits(loaded.pop("deleted", None), loaded.pop("deleted_bits", None))
        store = (IntStore(loaded["id_keys"], loaded.get("id_sorted", loaded["id_keys"]), loaded.get("id_perm"))
                 if names == INT_ARRAYS else FixedStore(*(loaded[k] for k in FIXED_ARRAYS)) if names == FIXED_ARRAYS
                 else StrStore(*(loaded[k] for k in STR_ARRAYS)))
        problems = problems_of(store, full=True)
        duplicate = not problems and store.duplicate_live(dead)
    except (TypeError, ValueError, IndexError) as exc:  # wrong dtypes: _arrays compared them with the manifest
        problems, duplicate = [f"the arrays cannot be read as ids ({type(exc).__name__}: {exc})"], False
    for text in problems:
        report.add("error", "bad-ids", arrays[names[0]]["file"], f"{text}.")
    if duplicate:
        report.add("error", "duplicate-ids", arrays[names[0]]["file"], "a live id repeats.")


def _dead_bits(mask: Any, bits: Any) -> Any:
    """The tombstones as bits for the duplicate check: ``deleted_bits`` as saved, a bool
    ``deleted`` (format 2) packed, or None (none saved, or of a dtype _arrays reported)."""
    if bits is not None and bits.dtype == np.uint8:
        return bits
    if mask is not None and mask.dtype == np.bool_:
        return np.packbits(mask, bitorder="little")
    return None


def _load(directory: Path, report: CheckReport) -> None:
    from indexes.base import load_index
    from indexes.multivector import load_embeddings

    try:
        if report.index_type == "MultiVectorEmbeddings":
            load_embeddings(directory, verify=False, mmap=True)
        else:
            load_index(directory, verify=False, mmap=True)
        report.loaded = True
    except Exception as exc:  # any failure here is what the user needs to see, whatever its type
        report.add("error", "load-failed", str(directory.name), f"{type(exc).__name__}: {exc}")
