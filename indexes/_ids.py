"""The id bookkeeping every index kind that stores its own documents shares: :class:`IdTable`.

An index keeps its vectors or codes in rows; the table maps rows to string document ids and
back, checks new ids, turns ``delete`` and ``subset`` arguments into rows, and saves the ids
as ``doc_ids.txt`` (plus ``deleted.npy``, the tombstone mask, for kinds that keep deleted
rows). Everything that touches the ids goes through this class, so the id store can change
in one place.

Layout in memory (no Python object per document): every row's id as UTF-8 in one ``bytes``
buffer with an int64 offsets array (Arrow's string layout), and for the row lookup the
64-bit FNV-1a hashes of those ids, sorted, with the permutation back to rows; a lookup
hashes the query ids in NumPy, finds them with ``np.searchsorted`` and compares the actual
bytes, so a hash collision never returns a wrong row. Ids appended since the last merge
wait in a small Python side table (a list and a dict) and are merged into the arrays once
the side table outgrows a share of them, so a long run of small ``add`` calls costs
amortised O(1) per id.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Container, Iterable
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from indexes._io import load_array, save_array
from indexes._paths import member, open_member
from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError

if TYPE_CHECKING:
    from indexes.manifest import Manifest

__all__ = ["IDS_FILE", "IdTable", "IdView", "check_new_ids", "check_storable_ids"]

#: The file holding one document id per row, in row order.
IDS_FILE = "doc_ids.txt"
_BAD_ID = re.compile(r"[\n\r]")
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_OFFSET_INT, _FNV_PRIME_INT, _MASK64 = int(_FNV_OFFSET), int(_FNV_PRIME), (1 << 64) - 1
#: The side table of appended ids is merged into the arrays once it holds more than this many
#: ids and more than 1/_MERGE_SHARE of the merged rows.
_MERGE_MIN, _MERGE_SHARE = 4096, 8


def check_new_ids(new_ids: list[str], live: Container[str]) -> None:
    """Reject ids that are not str, empty, hold a newline, cannot be stored as UTF-8 (lone
    surrogates), repeat in the batch, or are already ``live``."""
    _check_batch(new_ids)
    _refuse_clash([i for i in new_ids if i in live])


def _check_batch(new_ids: list[str]) -> None:
    for i in new_ids:
        if not isinstance(i, str):
            raise ConfigError(f"document ids must be str; got {type(i).__name__} {i!r:.100}. Convert with str().")
        if _BAD_ID.search(i) or i == "":
            raise ConfigError(f"document ids must be non-empty and contain no newline; got {i!r:.100}.")
    check_storable_ids(new_ids)
    if len(set(new_ids)) != len(new_ids):
        seen: set[str] = set()
        dup = next(i for i in new_ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ConfigError(f"duplicate document id {dup!r} in the batch; ids must be unique.")


def _refuse_clash(clash: list[str]) -> None:
    if clash:
        raise ConfigError(
            f"{len(clash)} id(s) are already in the index, e.g. {clash[:3]}; delete them first to replace them."
        )


def check_storable_ids(ids: list[str], *, what: str = "document id") -> None:
    """Reject ids that cannot be written as UTF-8 (``doc_ids.txt``): lone surrogates such as ``"\\ud800"``.

    Such a string comes from decoding invalid bytes with ``surrogateescape`` or from a JSON
    escape like ``"\\ud800"``; it can be held in memory but never saved, so it is refused at
    ``add()`` time (and by the CLI right after reading a corpus), not at the first ``save()``.

    Raises
    ------
    ConfigError
        Naming the first such id (escaped) and its position.
    """
    try:
        "".join(ids).encode("utf-8")
    except UnicodeEncodeError:
        for n, i in enumerate(ids):
            try:
                i.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(
                    f"{what} {i!r:.100} (number {n + 1}) is not valid Unicode: it holds the lone surrogate "
                    f"{i[exc.start]!r} at position {exc.start}, which UTF-8 cannot store. Fix the data (decode "
                    "the source as UTF-8 with errors='replace'), or drop that document."
                ) from None


# ---------------------------------------------------------------------- array helpers
def _encode(ids: list[str]) -> tuple[bytes, NDArray[np.int64]]:
    """``ids`` as one UTF-8 buffer and offsets (``surrogatepass``: such an id never matches a stored one)."""
    joined = "".join(ids)
    if joined.isascii():
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        buf = joined.encode("ascii")
    else:
        parts = [i.encode("utf-8", "surrogatepass") for i in ids]
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        buf = b"".join(parts)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return buf, offsets


def _fnv1a(buf: bytes, offsets: NDArray[np.int64]) -> NDArray[np.uint64]:
    """64-bit FNV-1a of every string ``buf[offsets[i]:offsets[i + 1]]``, in NumPy.

    The strings are walked longest first, so column ``j`` touches only the strings longer
    than ``j``: the cost is O(total bytes), however uneven the lengths.
    """
    data = np.frombuffer(buf, dtype=np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts, neg = starts[order], -lengths[order]
    h = np.full(len(order), _FNV_OFFSET, dtype=np.uint64)
    for j in range(int(-neg[0]) if len(neg) else 0):
        m = int(np.searchsorted(neg, -j, side="left"))  # strings longer than j
        h[:m] ^= data[starts[:m] + j]
        h[:m] *= _FNV_PRIME
    out = np.empty_like(h)
    out[order] = h
    return out


def _fnv1a_one(data: bytes) -> int:
    """:func:`_fnv1a` of one string, in Python (faster than NumPy for a single id)."""
    h = _FNV_OFFSET_INT
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME_INT) & _MASK64
    return h


def _decode_rows(buf: bytes, offsets: NDArray[np.int64], rows: NDArray[np.int64]) -> list[str]:
    starts, ends = offsets[rows].tolist(), offsets[rows + 1].tolist()
    return [buf[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]


class IdView:
    """A read-only label -> id table for :class:`~retrieval.types.SearchResult`: the buffer and
    offsets of one moment (the table never changes them in place, so a result is a snapshot)."""

    __slots__ = ("_buf", "_offsets")

    def __init__(self, buf: bytes, offsets: NDArray[np.int64]) -> None:
        self._buf, self._offsets = buf, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, labels: NDArray[np.int64]) -> NDArray[np.object_]:
        labels = np.asarray(labels, dtype=np.int64)
        out = np.empty(labels.shape, dtype=object)
        out.reshape(-1)[:] = _decode_rows(self._buf, self._offsets, labels.reshape(-1))
        return out


class _Store(NamedTuple):
    """The merged rows: ids buffer and offsets, sorted hashes and the permutation back to rows."""

    buf: bytes
    offsets: NDArray[np.int64]
    hashes: NDArray[np.uint64]
    perm: NDArray[np.unsignedinteger[Any]]

    @classmethod
    def build(cls, buf: bytes, offsets: NDArray[np.int64]) -> _Store:
        hashes = _fnv1a(buf, offsets)
        perm = np.argsort(hashes, kind="stable")
        return cls(buf, offsets, hashes[perm], perm.astype(np.uint32) if len(perm) < 2**32 else perm)

    def extend(self, ids: list[str]) -> _Store:
        """A new store with ``ids`` appended: only they are hashed, and merged into the sorted
        hashes in O(rows) (no re-sort)."""
        buf, offsets = _encode(ids)
        hashes = _fnv1a(buf, offsets)
        order = np.argsort(hashes, kind="stable")
        pos = np.searchsorted(self.hashes, hashes[order], side="right")
        total = self.rows + len(ids)
        dtype = np.uint32 if total < 2**32 else np.int64
        perm = np.insert(self.perm.astype(dtype, copy=False), pos, (order + self.rows).astype(dtype))
        return _Store(self.buf + buf, np.concatenate([self.offsets, offsets[1:] + self.offsets[-1]]),
                      np.insert(self.hashes, pos, hashes[order]), perm)

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def nbytes(self) -> int:
        return len(self.buf) + self.offsets.nbytes + self.hashes.nbytes + self.perm.nbytes


_EMPTY = _Store.build(b"", np.zeros(1, dtype=np.int64))


class IdTable:
    """Row <-> document id bookkeeping of one index.

    Parameters
    ----------
    tombstones : bool
        True for kinds that keep a deleted document's row (FAISS cannot always remove
        vectors): the row keeps its old id and is marked in :attr:`deleted`. False for kinds
        that drop deleted rows at once (``MultiVectorIndex``): later rows move up.

    Attributes
    ----------
    deleted : np.ndarray of bool, shape (rows,)
        The tombstone mask; empty (and saved nowhere) without tombstones.

    Notes
    -----
    Readers may run concurrently (the index's readers-writer lock; writers run alone): a
    reader that merges the side table (:meth:`id_array`, :meth:`memory_bytes`) does so under
    a lock and replaces the merged arrays, then the side table, each as one tuple, so another
    reader sees every id in one of them.
    """

    __slots__ = ("_live", "_merge_lock", "_ntotal", "_pending", "_store", "deleted", "tombstones")

    def __init__(self, *, tombstones: bool) -> None:
        self.tombstones = tombstones
        self._store = _EMPTY
        # Appended ids not merged yet (rows _store.rows ...) and the live ones among them -> row.
        self._pending: tuple[list[str], dict[str, int]] = ([], {})
        self._live = self._ntotal = 0
        self._merge_lock = threading.Lock()
        self.deleted: NDArray[np.bool_] = np.zeros(0, dtype=bool)

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the merge lock (copies and pickles get a new one)."""
        return {name: getattr(self, name) for name in self.__slots__ if name != "_merge_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self._merge_lock = threading.Lock()

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Live documents."""
        return self._live

    @property
    def ntotal(self) -> int:
        """Stored rows, deleted ones included."""
        return self._ntotal

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            hash(doc_id)  # an unhashable key raises TypeError, as a dict lookup did
            return False
        tail_row = self._pending[1]  # read before the store: a merge replaces the store first
        if doc_id in tail_row:
            return True
        store = self._store
        if not store.rows:
            return False
        pos = int(store.hashes.searchsorted(np.uint64(_fnv1a_one(doc_id.encode("utf-8", "surrogatepass")))))
        return pos < store.rows and self._walk(store, self.deleted, doc_id, pos) >= 0

    @property
    def ids(self) -> list[str]:
        """A new list of every row's id in row order (a deleted row keeps its id)."""
        store = self._merged()
        buf, bounds = store.buf, store.offsets.tolist()
        if buf.isascii():
            text = buf.decode("ascii")
            return [text[a:b] for a, b in pairwise(bounds)]
        return [buf[a:b].decode("utf-8") for a, b in pairwise(bounds)]

    def live_ids(self) -> list[str]:
        """A new list of the live ids in row order."""
        ids = self.ids
        if not self.tombstones or self._live == len(ids):
            return ids
        deleted = self.deleted
        return [doc_id for row, doc_id in enumerate(ids) if not deleted[row]]

    def id_array(self) -> IdView:
        """A label -> id table (:class:`IdView`) for a search result.

        A view handed out earlier is never modified: results already returned keep it.
        """
        store = self._merged()
        return IdView(store.buf, store.offsets)

    def copy(self) -> IdTable:
        clone = IdTable(tombstones=self.tombstones)
        tail, tail_row = self._pending
        clone._store, clone._pending = self._store, (list(tail), dict(tail_row))
        clone._live, clone._ntotal, clone.deleted = self._live, self._ntotal, self.deleted.copy()
        return clone

    def memory_bytes(self) -> int:
        """Bytes held for the ids, after merging the side table: the UTF-8 buffer, the
        offsets, the sorted hashes and their permutation, and the tombstone mask (kinds with
        tombstones)."""
        return self._merged().nbytes() + int(self.deleted.nbytes)

    # ------------------------------------------------------------------ changes
    def check_new(self, new_ids: list[str]) -> None:
        """:func:`check_new_ids` against the live ids of this table (one batched lookup)."""
        _check_batch(new_ids)
        if self._live:
            found = self._find(new_ids)
            _refuse_clash([i for i, r in zip(new_ids, found.tolist(), strict=True) if r >= 0])

    def append(self, new_ids: list[str]) -> int:
        """Give ``new_ids`` (already checked) the next rows; returns the first of them."""
        start = self._ntotal
        tail, tail_row = self._pending  # changed in place: a writer runs alone (indexes/_lock.py)
        if len(tail) + len(new_ids) > max(_MERGE_MIN, self._store.rows // _MERGE_SHARE):
            self._merged(new_ids)
        else:
            tail.extend(new_ids)
            tail_row.update((doc_id, start + i) for i, doc_id in enumerate(new_ids))
        self._ntotal += len(new_ids)
        self._live += len(new_ids)
        if self.tombstones:
            self.deleted = np.concatenate([self.deleted, np.zeros(len(new_ids), dtype=bool)])
        return start

    def _merged(self, new_ids: list[str] | None = None) -> _Store:
        """Move the side table (and ``new_ids`` after it) into the arrays; returns the arrays."""
        with self._merge_lock:
            tail = self._pending[0] + new_ids if new_ids else self._pending[0]
            if tail:
                self._store = self._store.extend(tail)
                self._pending = ([], {})
            return self._store

    def rows_to_delete(self, ids: Iterable[str]) -> tuple[list[str], NDArray[np.int64]]:
        """``(ids as a list, their sorted unique rows)``; raises if any id is not live.

        Raises
        ------
        UnknownIdError
            Naming the ids that are not in the index; the caller deletes nothing then.
        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        rows = self._find(ids)
        if (rows < 0).any():
            missing = [i for i, r in zip(ids, rows.tolist(), strict=True) if r < 0]
            raise UnknownIdError(
                f"cannot delete {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}; "
                "nothing was deleted. Check `doc_id in index` first."
            )
        return ids, np.unique(rows)

    def remove(self, ids: list[str], rows: NDArray[np.int64]) -> None:
        """Forget the live ``ids`` at ``rows`` (from :meth:`rows_to_delete`).

        With tombstones the rows stay, marked deleted; without, they are dropped and the rows
        after them move up (the caller drops its own rows the same way).
        """
        self._live -= len(rows)
        if self.tombstones:
            tail_row = self._pending[1]
            for i in set(ids):
                tail_row.pop(i, None)
            self.deleted[rows] = True
            return
        store = self._merged()
        keep = np.ones(store.rows, dtype=bool)
        keep[rows] = False
        lengths = np.diff(store.offsets)
        data = np.frombuffer(store.buf, dtype=np.uint8)[np.repeat(keep, lengths)]
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        self._store = _Store.build(data.tobytes(), offsets)
        self._ntotal = self._store.rows

    # ------------------------------------------------------------------ lookups
    def _find(self, ids: list[str]) -> NDArray[np.int64]:
        """The live row of each of ``ids``, or -1 (for an id that is not a live str)."""
        rows = np.full(len(ids), -1, dtype=np.int64)
        if not ids:
            return rows
        tail_row = self._pending[1]  # read before the store: a merge replaces the store first
        store, deleted = self._store, self.deleted
        other = [n for n, i in enumerate(ids) if not isinstance(i, str)]
        strs = ids
        if other:
            for n in other:
                hash(ids[n])  # an unhashable id raises TypeError, as the dict lookup did
            strs = [i if isinstance(i, str) else "" for i in ids]
        if tail_row:
            rows[:] = [tail_row.get(i, -1) for i in strs]
        if store.rows:
            self._find_merged(store, deleted, strs, rows)
        rows[other] = -1
        return rows

    def _find_merged(self, store: _Store, deleted: NDArray[np.bool_], ids: list[str], rows: NDArray[np.int64]) -> None:
        """Set ``rows`` for the ids found among the merged rows (the others keep their value)."""
        qbuf, qoff = _encode(ids)
        qhash = _fnv1a(qbuf, qoff)
        sorted_h, offsets = store.hashes, store.offsets
        pos = np.minimum(np.searchsorted(sorted_h, qhash, side="left"), store.rows - 1)
        cand = store.perm[pos].astype(np.int64)
        qlen = np.diff(qoff)
        same_hash = sorted_h[pos] == qhash
        ok = same_hash & (offsets[cand + 1] - offsets[cand] == qlen)
        if self.tombstones:
            ok &= ~deleted[cand]
        which = np.flatnonzero(ok)
        if which.size:  # compare the bytes of every candidate in one pass
            lens = qlen[which]
            total = int(lens.sum())
            qpos = np.repeat(qoff[which], lens) + (np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens))
            shift = np.repeat(offsets[cand[which]] - qoff[which], lens)
            data, qdata = np.frombuffer(store.buf, dtype=np.uint8), np.frombuffer(qbuf, dtype=np.uint8)
            differ = np.bincount(np.repeat(np.arange(which.size), lens), weights=data[qpos + shift] != qdata[qpos],
                                 minlength=which.size)
            ok[which[differ > 0]] = False
        rows[ok] = cand[ok]
        # The hash matched but the row did not: a deleted twin or a collision; walk the run of equal hashes.
        for q in np.flatnonzero(same_hash & ~ok).tolist():
            if rows[q] < 0:
                rows[q] = self._walk(store, deleted, ids[q], int(pos[q]))

    def _walk(self, store: _Store, deleted: NDArray[np.bool_], doc_id: str, pos: int) -> int:
        """The live row of ``doc_id`` among the run of equal hashes starting at ``pos``, or -1."""
        sorted_h, buf, offsets = store.hashes, store.buf, store.offsets
        target, h = doc_id.encode("utf-8", "surrogatepass"), sorted_h[pos]
        while pos < store.rows and sorted_h[pos] == h:
            row = int(store.perm[pos])
            if not (self.tombstones and deleted[row]) and buf[offsets[row]:offsets[row + 1]] == target:
                return row
            pos += 1
        return -1

    def rows_of(self, ids: list[str]) -> list[int]:
        """Rows of live ``ids`` (the caller has checked them with :meth:`missing`)."""
        return self._find(ids).tolist()

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids of ``ids`` that are not live, in order."""
        ids = list(ids)
        return [i for i, r in zip(ids, self._find(ids).tolist(), strict=True) if r < 0]

    def subset_mask(self, subset: Iterable[str]) -> NDArray[np.bool_]:
        """A mask over the rows that is True at the rows of ``subset`` (a ``search`` argument).

        Raises
        ------
        UnknownIdError
            If ``subset`` names an id that is not live.
        """
        subset_ids = [subset] if isinstance(subset, str) else list(subset)
        rows = self._find(subset_ids)
        if (rows < 0).any():
            missing = [i for i, r in zip(subset_ids, rows.tolist(), strict=True) if r < 0]
            raise UnknownIdError(f"subset holds {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}.")
        allowed = np.zeros(self._ntotal, dtype=bool)
        allowed[rows] = True
        return allowed

    # ------------------------------------------------------------------ persistence
    def write(self, directory: Path, arrays: dict[str, Any]) -> None:
        """Write ``doc_ids.txt`` and, with tombstones, ``deleted.npy`` (its entry goes into ``arrays``)."""
        if self.tombstones:
            arrays["deleted"] = save_array(directory, "deleted", self.deleted)
        store = self._merged()
        n = store.rows
        out = np.full(len(store.buf) + n, 10, dtype=np.uint8)  # every id followed by "\n"
        text = np.ones(len(out), dtype=bool)
        text[store.offsets[1:] + np.arange(n)] = False
        out[text] = np.frombuffer(store.buf, dtype=np.uint8)
        (directory / IDS_FILE).write_bytes(out.tobytes())

    @classmethod
    def read(cls, directory: Path, manifest: Manifest, *, tombstones: bool) -> IdTable:
        """Read what :meth:`write` wrote for ``manifest.count`` rows, checking the mask and the ids."""
        table = cls(tombstones=tombstones)
        n = manifest.count
        if tombstones:
            deleted = load_array(directory, manifest.arrays.get("deleted"), name="deleted")
            if deleted.dtype != np.bool_ or deleted.shape != (n,):
                raise IndexFormatError(
                    f"{directory / 'deleted.npy'} must be bool of shape ({n},); got {deleted.dtype} {deleted.shape}."
                )
            table.deleted = np.array(deleted, dtype=bool)
        table._store = _Store.build(*_read_id_lines(directory / IDS_FILE, expected=n))
        table._ntotal, table._live = n, n - int(table.deleted.sum())
        if table._has_duplicate_live():
            raise IndexFormatError(f"{directory / IDS_FILE} holds duplicate {'live ' if tombstones else ''}ids; "
                                   "the file is corrupt.")
        return table

    def _has_duplicate_live(self) -> bool:
        store = self._store
        same = np.flatnonzero(store.hashes[1:] == store.hashes[:-1])
        if not same.size:
            return False
        rows = np.unique(store.perm[np.concatenate([same, same + 1])].astype(np.int64))
        if self.tombstones:
            rows = rows[~self.deleted[rows]]
        ids = _decode_rows(store.buf, store.offsets, rows)
        return len(set(ids)) != len(ids)


def _read_id_lines(path: Path, *, expected: int) -> tuple[bytes, NDArray[np.int64]]:
    """The lines of ``path`` (as :func:`indexes._io.read_lines` reads them) as one buffer and offsets."""
    path = member(path.parent, path.name)
    with open_member(path) as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IndexFormatError(f"{path} is not valid UTF-8 ({exc}); the file is corrupt.") from exc
    data = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    ends = newlines if raw.endswith(b"\n") or not raw else np.append(newlines, len(raw))
    if len(ends) != expected:
        raise IndexFormatError(
            f"{path} holds {len(ends)} ids, but the manifest says the index has {expected}. "
            "The file is truncated or does not belong to this index."
        )
    offsets = np.zeros(len(ends) + 1, dtype=np.int64)
    offsets[1:] = ends - np.arange(len(ends))  # each id ends where its newline was, less the newlines before it
    return np.delete(data, newlines).tobytes(), offsets
