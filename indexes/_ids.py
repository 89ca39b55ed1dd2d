"""The id bookkeeping every index kind that stores its own documents shares: :class:`IdTable`.

An index keeps its vectors or codes in rows; the table maps rows to document ids and back,
checks new ids, turns ``delete`` and ``subset`` arguments into rows, and saves the ids.
Everything that touches the ids goes through this class, so the id store can change in one
place.

Ids are either all ``str`` or all integers (``np.int64``, as FAISS's ``IndexIDMap`` keeps
them): the first ``add`` decides, and mixing the two in one index is a ConfigError. Their
layouts (:mod:`indexes._idstore`) hold no Python object per document. Ids appended since
the last merge wait in a small Python side table (a list and a dict) and are merged into the
arrays once the side table outgrows a share of them, so a long run of small ``add`` calls
costs amortised O(1) per id.

String ids take the smaller of two layouts (:func:`indexes._idfixed.build_strings`): NUL-padded
rows of one width plus a sorting permutation (:class:`~indexes._idfixed.FixedStore`) when the
ids are of similar lengths, else a UTF-8 buffer with offsets, sorted hashes and a permutation
(:class:`~indexes._idstore.StrStore`). Tombstones are bits, allocated at the first delete: an
index that never deleted a row pays nothing for them.

On disk (format version 3) the ids are the store's arrays as ``.npy`` files (``id_block``,
``id_perm``; or ``id_bytes``, ``id_offsets``, ``id_hashes``, ``id_perm``; or ``id_keys``,
``id_perm``): the names say the layout. ``deleted_bits.npy`` holds the tombstone bits of kinds
that keep deleted rows, once a row is deleted. A load memory-maps them, so opening an index
neither decodes nor hashes nor sorts its ids. Version 2 had no fixed layout and saved the
tombstones as ``deleted.npy`` (bool, one per row; packed into bits by the load); version 1
saved ``doc_ids.txt``, one id per line. Both still load.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from indexes._idfixed import FIXED_ARRAYS, FixedStore, build_strings, fixed_problems, refit
from indexes._idstore import INT_ARRAYS, STR_ARRAYS, IntStore, Mask, StrStore, count_dead, encode, store_problems
from indexes._io import load_array, save_array
from indexes._paths import member, open_member
from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError

if TYPE_CHECKING:
    from indexes.manifest import Manifest

__all__ = [
    "IDS_FILE", "IdTable", "as_ids", "check_new_ids", "check_storable_ids", "is_int", "one_or_many",
]

#: The file of format version 1 holding one document id per row, in row order.
IDS_FILE = "doc_ids.txt"
_BAD_ID = re.compile(r"[\n\r]")
#: The side table of appended ids is merged into the arrays once it holds more than this many
#: ids and more than 1/_MERGE_SHARE of the merged rows.
_MERGE_MIN, _MERGE_SHARE = 4096, 8
_I64 = np.iinfo(np.int64)
_I64_MIN, _I64_MAX = int(_I64.min), int(_I64.max)  # plain ints: np.iinfo computes its fields at each access

IdKind = Literal["str", "int"]
#: A batch of ids as the table takes them: a list of str, or a 1-d int64 array.
Ids = list[str] | NDArray[np.int64]
#: The arrays behind a table: one of the two string layouts, or integer ids.
Store = StrStore | FixedStore | IntStore


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def as_ids(ids: Any) -> Ids:
    """``ids`` as the table takes them: a 1-d int64 array for integer ids, else a list.

    Integer ids are a NumPy integer array or a sequence whose first item is an int; every
    item must then be an int that fits in int64.

    Raises
    ------
    ConfigError
        For a NumPy array of another shape or an unsigned value above int64, a mix of int
        and other ids, or an int outside int64.
    """
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind in "iu":
            if ids.ndim != 1:
                raise ConfigError(f"integer ids must be a 1-d array; got shape {ids.shape}.")
            if ids.dtype.kind == "u" and ids.size and int(ids.max()) > _I64.max:
                raise ConfigError(f"integer ids must fit in int64; got {int(ids.max())}.")
            return ids.astype(np.int64, copy=False)
        ids = ids.tolist()
    else:
        ids = list(ids)
    if not ids or not is_int(ids[0]):
        return ids
    bad = next((n for n, i in enumerate(ids) if not is_int(i)), -1)
    if bad >= 0:
        raise ConfigError(f"document ids must be all int or all str; got int {ids[0]!r} and "
                          f"{type(ids[bad]).__name__} {ids[bad]!r:.100} in one batch. Convert them to one type.")
    lo, hi = min(ids), max(ids)
    if lo < _I64.min or hi > _I64.max:
        raise ConfigError(f"integer ids must fit in int64; got {lo if lo < _I64.min else hi}.")
    return np.array(ids, dtype=np.int64)


def _kind_of(ids: Ids) -> IdKind:
    return "int" if isinstance(ids, np.ndarray) else "str"


def check_new_ids(new_ids: Any, live: Any) -> Ids:
    """Reject new ids that are not all str or all int, are empty, hold a newline, cannot be
    stored as UTF-8 (lone surrogates), repeat in the batch, or are already in ``live``;
    returns them as :func:`as_ids` gives them."""
    ids = as_ids(new_ids)
    _check_batch(ids)
    _refuse_clash([i for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids) if i in live])
    return ids


def _check_batch(new_ids: Ids) -> None:
    if isinstance(new_ids, np.ndarray):
        uniq, counts = np.unique(new_ids, return_counts=True)
        if uniq.size != new_ids.size:
            raise ConfigError(f"duplicate document id {int(uniq[counts > 1][0])} in the batch; ids must be unique.")
        return
    for i in new_ids:
        if not isinstance(i, str):
            raise ConfigError(f"document ids must be str (or all int); got {type(i).__name__} {i!r:.100} among str "
                              "ids. Convert with str().")
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
        The tombstone mask, unpacked from the bits on each access (all False without tombstones
        or before the first delete); :meth:`live_mask` is its negation.
    kind : "str", "int" or None
        The type of the ids, fixed by the first ``append``; None while nothing was added.

    Notes
    -----
    Readers may run concurrently (the index's readers-writer lock; writers run alone): a
    reader that merges the side table (:meth:`id_array`, :meth:`memory_bytes`) does so under
    a lock and replaces the merged arrays, then the side table, each as one tuple, so another
    reader sees every id in one of them.
    """

    __slots__ = ("_bits", "_live", "_merge_lock", "_ntotal", "_pending", "_store", "kind", "tombstones")

    def __init__(self, *, tombstones: bool) -> None:
        self.tombstones = tombstones
        self.kind: IdKind | None = None
        self._store: Store = _EMPTY_STR
        # Appended ids not merged yet (rows _store.rows ...) and the live ones among them -> row.
        self._pending: tuple[list[Any], dict[Any, int]] = ([], {})
        self._live = self._ntotal = 0
        self._merge_lock = threading.Lock()
        # The tombstones as bits (indexes._idstore.Mask); None until the first delete.
        self._bits: NDArray[np.uint8] | None = None

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

    def _dead(self) -> Mask:
        return self._bits if self.tombstones else None

    @property
    def deleted(self) -> NDArray[np.bool_]:
        """The tombstone mask, one bool per row (a new array)."""
        if self._bits is None:
            return np.zeros(self._ntotal, dtype=bool)
        return np.unpackbits(self._bits, count=self._ntotal, bitorder="little").view(bool)

    def live_mask(self) -> NDArray[np.bool_]:
        """True at the rows of live documents (a new array)."""
        return ~self.deleted

    def __contains__(self, doc_id: object) -> bool:
        if not (isinstance(doc_id, str) if self.kind != "int" else _is_int64(doc_id)):
            hash(doc_id)  # an unhashable key raises TypeError, as a dict lookup did
            return False
        tail_row = self._pending[1]  # read before the store: a merge replaces the store first
        if doc_id in tail_row:
            return True
        return self._store.contains(doc_id, self._dead())  # type: ignore[arg-type]

    @property
    def ids(self) -> list[Any]:
        """A new list of every row's id in row order (a deleted row keeps its id)."""
        return self._merged().ids()

    def live_ids(self) -> list[Any]:
        """A new list of the live ids in row order."""
        if not self.tombstones or self._live == self._ntotal:
            return self.ids
        store, live = self._merged(), np.flatnonzero(self.live_mask())
        if isinstance(store, IntStore):
            return store.keys[live].tolist()  # type: ignore[no-any-return]
        return store.view()[live].tolist()  # type: ignore[no-any-return]

    def id_array(self) -> Any:
        """A label -> id table for a search result (``view[labels]``: an array of the ids).

        A view handed out earlier is never modified: results already returned keep it.
        """
        return self._merged().view()

    def copy(self) -> IdTable:
        clone = IdTable(tombstones=self.tombstones)
        tail, tail_row = self._pending
        clone._store, clone._pending, clone.kind = self._store, (list(tail), dict(tail_row)), self.kind
        clone._live, clone._ntotal = self._live, self._ntotal
        clone._bits = None if self._bits is None else np.array(self._bits)
        return clone

    def memory_bytes(self) -> int:
        """Bytes held for the ids, after merging the side table: the store's arrays (string
        ids: padded rows and permutation, or UTF-8 buffer, offsets, sorted hashes, permutation;
        integer ids: the ids and their sorting permutation) and the tombstone bits (once a row
        was deleted). Arrays a load memory-mapped count in full, though the OS reads only the
        pages lookups touch."""
        return self._merged().nbytes() + (0 if self._bits is None else int(self._bits.nbytes))

    # ------------------------------------------------------------------ changes
    def check_new(self, new_ids: Any) -> Ids:
        """:func:`check_new_ids` against the live ids of this table (one batched lookup), and
        their type against the table's; returns the ids as :func:`as_ids` gives them."""
        ids = as_ids(new_ids)
        kind = _kind_of(ids)
        if self.kind is not None and kind != self.kind and len(ids):
            raise ConfigError(
                f"this index holds {self.kind} document ids; got {kind} ids. One index holds one type of id: "
                f"convert them ({'str(i)' if self.kind == 'str' else 'int(i)'}), or use another index."
            )
        _check_batch(ids)
        if self._live:
            found = self._find(ids)
            _refuse_clash([i for i, r in zip(_as_list(ids), found.tolist(), strict=True) if r >= 0])
        return ids

    def append(self, new_ids: Any) -> int:
        """Give ``new_ids`` (already checked) the next rows; returns the first of them."""
        ids = as_ids(new_ids)
        start = self._ntotal
        if not len(ids):
            return start
        if self.kind is None:
            self.kind = _kind_of(ids)
            self._store = _EMPTY_STR if self.kind == "str" else _EMPTY_INT
        values = _as_list(ids)
        tail, tail_row = self._pending  # changed in place: a writer runs alone (indexes/_lock.py)
        if len(tail) + len(values) > max(_MERGE_MIN, self._store.rows // _MERGE_SHARE):
            self._merged(values)
        else:
            tail.extend(values)
            tail_row.update((doc_id, start + i) for i, doc_id in enumerate(values))
        self._ntotal += len(values)
        self._live += len(values)
        if self._bits is not None and len(self._bits) * 8 < self._ntotal:
            self._bits = np.concatenate([self._bits, np.zeros(-(-self._ntotal // 8) - len(self._bits), np.uint8)])
        return start

    def _merged(self, new_ids: list[Any] | None = None) -> Store:
        """Move the side table (and ``new_ids`` after it) into the arrays; returns the arrays."""
        with self._merge_lock:
            tail = self._pending[0] + new_ids if new_ids else self._pending[0]
            if tail:
                store = self._store
                if isinstance(store, IntStore):
                    self._store = store.extend(np.array(tail, dtype=np.int64))
                elif isinstance(store, StrStore) and len(tail) >= store.rows:
                    # Few rows yet (the first merge, or a batch as large as the table): choose the layout afresh.
                    buf, offsets = encode(store.ids() + tail)
                    self._store = build_strings(buf, offsets)
                else:
                    self._store = store.extend(tail)
                self._pending = ([], {})
            return self._store

    def rows_to_delete(self, ids: Any) -> tuple[list[Any], NDArray[np.int64]]:
        """``(ids as a list, their sorted unique rows)``; raises if any id is not live.

        Raises
        ------
        UnknownIdError
            Naming the ids that are not in the index; the caller deletes nothing then.
        """
        ids = one_or_many(ids)
        rows = self._find(ids)
        if (rows < 0).any():
            missing = [i for i, r in zip(ids, rows.tolist(), strict=True) if r < 0]
            raise UnknownIdError(
                f"cannot delete {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}; "
                "nothing was deleted. Check `doc_id in index` first."
            )
        return ids, np.unique(rows)

    def remove(self, ids: list[Any], rows: NDArray[np.int64]) -> None:
        """Forget the live ``ids`` at ``rows`` (from :meth:`rows_to_delete`).

        With tombstones the rows stay, marked deleted; without, they are dropped and the rows
        after them move up (the caller drops its own rows the same way).
        """
        self._live -= len(rows)
        if self.tombstones:
            tail_row = self._pending[1]
            for i in set(ids):
                tail_row.pop(i, None)
            if self._bits is None or not self._bits.flags.writeable:  # none yet, or memory-mapped by a load
                self._bits = (np.zeros(-(-self._ntotal // 8), dtype=np.uint8) if self._bits is None
                              else np.array(self._bits))
            np.bitwise_or.at(self._bits, rows >> 3, np.left_shift(1, rows & 7).astype(np.uint8))
            return
        store = self._merged()
        keep = np.ones(store.rows, dtype=bool)
        keep[rows] = False
        self._store = store.keep(keep)
        self._ntotal = self._store.rows

    # ------------------------------------------------------------------ lookups
    def _find(self, ids: list[Any] | NDArray[np.int64]) -> NDArray[np.int64]:
        """The live row of each of ``ids``, or -1 (for an id that is not a live id of this table's type)."""
        rows = np.full(len(ids), -1, dtype=np.int64)
        if not len(ids):
            return rows
        tail_row = self._pending[1]  # read before the store: a merge replaces the store first
        store, dead = self._store, self._dead()
        if isinstance(ids, np.ndarray):
            valid, query = np.full(len(ids), self.kind == "int"), ids
        else:
            test = _is_int64 if self.kind == "int" else _is_str
            valid = np.fromiter(map(test, ids), dtype=bool, count=len(ids)) if not all(map(test, ids)) else \
                np.ones(len(ids), dtype=bool)
            if not valid.all():
                for n in np.flatnonzero(~valid).tolist():
                    hash(ids[n])  # an unhashable id raises TypeError, as the dict lookup did
            if self.kind == "int":
                query = np.array([i if ok else 0 for i, ok in zip(ids, valid.tolist(), strict=True)], dtype=np.int64)
            else:
                query = ids if valid.all() else [i if ok else "" for i, ok in zip(ids, valid.tolist(), strict=True)]
        if not valid.any():
            return rows
        if tail_row:
            rows[:] = [tail_row.get(i, -1) for i in _as_list(query)]
        if store.rows:
            store.find(query, dead, rows)  # type: ignore[arg-type]
        rows[~valid] = -1
        return rows

    def rows_of(self, ids: list[Any]) -> list[int]:
        """Rows of live ``ids`` (the caller has checked them with :meth:`missing`)."""
        return self._find(ids).tolist()  # type: ignore[no-any-return]

    def missing(self, ids: Iterable[Any]) -> list[Any]:
        """The ids of ``ids`` that are not live, in order."""
        ids = list(ids)
        return [i for i, r in zip(ids, self._find(ids).tolist(), strict=True) if r < 0]

    def subset_mask(self, subset: Any) -> NDArray[np.bool_]:
        """A mask over the rows that is True at the rows of ``subset`` (a ``search`` argument).

        Raises
        ------
        UnknownIdError
            If ``subset`` names an id that is not live.
        """
        subset_ids = one_or_many(subset)
        rows = self._find(subset_ids)
        if (rows < 0).any():
            missing = [i for i, r in zip(_as_list(subset_ids), rows.tolist(), strict=True) if r < 0]
            raise UnknownIdError(f"subset holds {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}.")
        allowed = np.zeros(self._ntotal, dtype=bool)
        allowed[rows] = True
        return allowed

    # ------------------------------------------------------------------ persistence
    def write(self, directory: Path, arrays: dict[str, Any]) -> None:
        """Write the store's arrays and, once a row is deleted, ``deleted_bits.npy``; their
        entries go into ``arrays``. String ids in the variable layout are written in the fixed
        one where that fits now (:func:`indexes._idfixed.refit`).

        A table that never held an id writes no id array (its kind is chosen by the next add).
        """
        if self.tombstones and self._bits is not None and self._live < self._ntotal:
            arrays["deleted_bits"] = save_array(directory, "deleted_bits", self._bits)
        if self.kind is None:
            return
        store = self._merged()
        for name, array in (refit(store) if isinstance(store, StrStore) else store).arrays().items():
            arrays[name] = save_array(directory, name, array)

    @classmethod
    def read(cls, directory: Path, manifest: Manifest, *, tombstones: bool, verify: bool = False) -> IdTable:
        """Read what :meth:`write` wrote for ``manifest.count`` rows, memory-mapped.

        Always checked: every array's dtype and shape against the manifest, the offsets'
        ends, the unused bits of the tombstones. With ``verify`` (the load hashed every file
        already) also the structure (see :func:`indexes._idstore.store_problems` and
        :func:`indexes._idfixed.fixed_problems`) and that no live id repeats. An index of
        format version 1 (``doc_ids.txt``) is read from its lines, one of version 2 may hold
        its tombstones as ``deleted.npy`` (bool), packed into bits here.
        """
        table = cls(tombstones=tombstones)
        n, entries = manifest.count, manifest.arrays
        if tombstones:
            table._bits = _read_tombstones(directory, manifest)
        if INT_ARRAYS[0] in entries:
            table.kind = "int"
            keys = read_checked(directory, entries, "id_keys", n, (np.int64,))
            table._store = (IntStore(keys, keys, None) if "id_perm" not in entries else
                            IntStore(keys, read_checked(directory, entries, "id_sorted", n, (np.int64,)),
                                     read_checked(directory, entries, "id_perm", n, _POSITIONS)))
        elif FIXED_ARRAYS[0] in entries:
            table.kind = "str"
            table._store = FixedStore(read_checked(directory, entries, "id_block", n, (np.uint8,), ndim=2),
                                      read_checked(directory, entries, "id_perm", n, _POSITIONS))
        elif STR_ARRAYS[0] in entries:
            table.kind = "str"
            buf = read_checked(directory, entries, "id_bytes", None, (np.uint8,))
            table._store = StrStore(buf, read_checked(directory, entries, "id_offsets", n + 1, _POSITIONS),
                                    read_checked(directory, entries, "id_hashes", n, (np.uint64,)),
                                    read_checked(directory, entries, "id_perm", n, _POSITIONS))
        elif manifest.format_version < 2 and n:
            table.kind = "str"
            table._store = build_strings(*_read_id_lines(directory / IDS_FILE, expected=n))
        elif n:
            raise IndexFormatError(f"{directory / 'manifest.json'} lists no id arrays ({FIXED_ARRAYS[0]}, "
                                   f"{STR_ARRAYS[0]} or {INT_ARRAYS[0]}) for its {n} rows; the manifest is damaged.")
        legacy = table.kind == "str" and not {STR_ARRAYS[0], FIXED_ARRAYS[0]} & entries.keys()  # built just now
        problems = problems_of(table._store, full=verify) if table.kind and not legacy else []
        if not problems and (verify or legacy) and table._store.duplicate_live(table._dead()):
            problems = [f"it holds duplicate {'live ' if tombstones else ''}ids"]
        if problems:
            raise IndexFormatError(f"{directory}: the saved ids are damaged: {problems[0]}. "
                                   "Run `densezip check` on it, then rebuild or restore the index.")
        table._ntotal, table._live = n, n - count_dead(table._bits)
        return table


def problems_of(store: Store, *, full: bool) -> list[str]:
    """:func:`indexes._idfixed.fixed_problems` or :func:`indexes._idstore.store_problems`, by layout."""
    return fixed_problems(store, full=full) if isinstance(store, FixedStore) else store_problems(store, full=full)


def _read_tombstones(directory: Path, manifest: Manifest) -> NDArray[np.uint8] | None:
    """The saved tombstone bits (memory-mapped), or None where no row is deleted.

    Format version 3 saves ``deleted_bits`` (uint8, ``ceil(count / 8)``, the bits past ``count``
    zero) once a row is deleted; version 1 and 2 saved ``deleted`` (bool, one per row) always.
    """
    n, entries = manifest.count, manifest.arrays
    if "deleted_bits" in entries:
        bits = read_checked(directory, entries, "deleted_bits", -(-n // 8), (np.uint8,))
        if n % 8 and int(bits[-1]) >> (n % 8):
            raise IndexFormatError(f"{directory / str(entries['deleted_bits']['file'])} marks rows past the "
                                   f"{n} of the index as deleted; the file is damaged. Run `densezip check` on it.")
        return bits
    if "deleted" in entries or manifest.format_version < 3:
        mask = read_checked(directory, entries, "deleted", n, (np.bool_,))
        return np.packbits(mask, bitorder="little") if mask.any() else None
    return None


_EMPTY_STR = StrStore.build(np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64))
_EMPTY_INT = IntStore.build(np.zeros(0, dtype=np.int64))
_POSITIONS = (np.uint32, np.int64)


def _is_int64(value: object) -> bool:
    return is_int(value) and _I64_MIN <= value <= _I64_MAX  # type: ignore[operator]


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _as_list(ids: Ids) -> list[Any]:
    return ids.tolist() if isinstance(ids, np.ndarray) else ids  # type: ignore[no-any-return]


def one_or_many(ids: Any) -> list[Any]:
    """A ``delete`` / ``subset`` argument as a list: one str or int id, or an iterable of them."""
    if isinstance(ids, str) or is_int(ids):
        return [ids]
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


def read_checked(directory: Path, entries: dict[str, Any], name: str, length: int | None,
                 dtypes: tuple[type, ...], *, ndim: int = 1) -> NDArray[Any]:
    """The array ``name`` of the manifest, memory-mapped, after checking it is ``ndim``-d of
    ``dtypes`` and ``length`` rows (and, 2-d, C-contiguous and at least one column wide)."""
    array = load_array(directory, entries.get(name), name=name, mmap=True)
    if array.ndim != ndim or array.dtype.type not in dtypes or (length is not None and len(array) != length) or (
            ndim == 2 and (array.shape[1] < 1 or not array.flags.c_contiguous)):
        want = "/".join(np.dtype(d).name for d in dtypes)
        raise IndexFormatError(
            f"{directory / str(entries[name]['file'])} must be {ndim}-d {want}"
            f"{f' of {length} rows' if length is not None else ''}{' at least 1 wide' if ndim == 2 else ''}; "
            f"got {array.dtype} {array.shape}."
        )
    return array.view(np.ndarray)  # still the map, without np.memmap's per-call overhead


def _read_id_lines(path: Path, *, expected: int) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
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
    return np.delete(data, newlines), offsets
