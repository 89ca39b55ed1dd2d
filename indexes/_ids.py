"""The id bookkeeping every index kind that stores its own documents shares: :class:`IdTable`.

An index keeps its vectors or codes in rows; the table maps rows to string document ids and
back, checks new ids, turns ``delete`` and ``subset`` arguments into rows, and saves the ids
as ``doc_ids.txt`` (plus ``deleted.npy``, the tombstone mask, for kinds that keep deleted
rows). Everything that touches the ids list or the row dict goes through this class, so the
id store can change in one place.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Container, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from indexes._io import load_array, read_lines, save_array, write_lines
from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError

if TYPE_CHECKING:
    from indexes.manifest import Manifest

__all__ = ["IDS_FILE", "IdTable", "check_new_ids", "check_storable_ids"]

#: The file holding one document id per row, in row order.
IDS_FILE = "doc_ids.txt"
_BAD_ID = re.compile(r"[\n\r]")


def check_new_ids(new_ids: list[str], live: Container[str]) -> None:
    """Reject ids that are not str, empty, hold a newline, cannot be stored as UTF-8 (lone
    surrogates), repeat in the batch, or are already ``live``."""
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
    clash = [i for i in new_ids if i in live]
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
    ids : list of str
        Row -> document id; a deleted row keeps its id.
    row_of : dict of str to int
        Live document id -> row.
    deleted : np.ndarray of bool, shape (rows,)
        The tombstone mask; empty (and saved nowhere) without tombstones.
    """

    __slots__ = ("_id_array", "deleted", "ids", "row_of", "tombstones")

    def __init__(self, *, tombstones: bool) -> None:
        self.tombstones = tombstones
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.deleted: NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._id_array: NDArray[np.object_] | None = None  # cache for fast label -> id lookup

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Live documents."""
        return len(self.row_of)

    @property
    def ntotal(self) -> int:
        """Stored rows, deleted ones included."""
        return len(self.ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.row_of

    def live_ids(self) -> list[str]:
        """A new list of the live ids in row order."""
        if not self.tombstones:
            return list(self.ids)
        deleted = self.deleted
        return [doc_id for row, doc_id in enumerate(self.ids) if not deleted[row]]

    def id_array(self) -> NDArray[np.object_]:
        """:attr:`ids` as an object array (for label -> id lookups), cached until the rows change.

        An array handed out earlier is never modified: results already returned keep it.
        """
        table = self._id_array
        if table is None:
            table = self._id_array = np.array(self.ids, dtype=object)
        return table

    def copy(self) -> IdTable:
        clone = IdTable(tombstones=self.tombstones)
        clone.ids, clone.row_of, clone.deleted = list(self.ids), dict(self.row_of), self.deleted.copy()
        return clone

    def memory_bytes(self) -> int:
        """Bytes Python holds for the ids: every live ``str``, a list of them (as :meth:`live_ids`
        builds it), the id -> row dict, and the tombstone mask (kinds with tombstones)."""
        live = self.live_ids()
        total = sys.getsizeof(live) + sum(sys.getsizeof(i) for i in live) + sys.getsizeof(self.row_of)
        return total + int(self.deleted.nbytes)  # empty without tombstones

    # ------------------------------------------------------------------ changes
    def check_new(self, new_ids: list[str]) -> None:
        """:func:`check_new_ids` against the live ids of this table."""
        check_new_ids(new_ids, self.row_of)

    def append(self, new_ids: list[str]) -> int:
        """Give ``new_ids`` (already checked) the next rows; returns the first of them."""
        start = len(self.ids)
        self.ids.extend(new_ids)
        self.row_of.update((doc_id, start + i) for i, doc_id in enumerate(new_ids))
        if self.tombstones:
            self.deleted = np.concatenate([self.deleted, np.zeros(len(new_ids), dtype=bool)])
        self._id_array = None
        return start

    def rows_to_delete(self, ids: Iterable[str]) -> tuple[list[str], NDArray[np.int64]]:
        """``(ids as a list, their sorted unique rows)``; raises if any id is not live.

        Raises
        ------
        UnknownIdError
            Naming the ids that are not in the index; the caller deletes nothing then.
        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        missing = [i for i in ids if i not in self.row_of]
        if missing:
            raise UnknownIdError(
                f"cannot delete {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}; "
                "nothing was deleted. Check `doc_id in index` first."
            )
        return ids, np.array(sorted({self.row_of[i] for i in ids}), dtype=np.int64)

    def remove(self, ids: list[str], rows: NDArray[np.int64]) -> None:
        """Forget the live ``ids`` at ``rows`` (from :meth:`rows_to_delete`).

        With tombstones the rows stay, marked deleted; without, they are dropped and the rows
        after them move up (the caller drops its own rows the same way).
        """
        if self.tombstones:
            for i in set(ids):
                del self.row_of[i]
            self.deleted[rows] = True
            return
        keep = np.ones(len(self.ids), dtype=bool)
        keep[rows] = False
        self.ids = [self.ids[r] for r in np.flatnonzero(keep)]
        self.row_of = {doc_id: r for r, doc_id in enumerate(self.ids)}
        self._id_array = None

    # ------------------------------------------------------------------ lookups
    def rows_of(self, ids: list[str]) -> list[int]:
        """Rows of live ``ids`` (the caller has checked them with :meth:`missing`)."""
        row_of = self.row_of
        return [row_of[i] for i in ids]

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids of ``ids`` that are not live, in order."""
        return [i for i in ids if i not in self.row_of]

    def subset_mask(self, subset: Iterable[str]) -> NDArray[np.bool_]:
        """A mask over the rows that is True at the rows of ``subset`` (a ``search`` argument).

        Raises
        ------
        UnknownIdError
            If ``subset`` names an id that is not live.
        """
        subset_ids = [subset] if isinstance(subset, str) else list(subset)
        missing = self.missing(subset_ids)
        if missing:
            raise UnknownIdError(f"subset holds {len(missing)} id(s) that are not in the index, e.g. {missing[:3]}.")
        allowed = np.zeros(len(self.ids), dtype=bool)
        allowed[self.rows_of(subset_ids)] = True
        return allowed

    # ------------------------------------------------------------------ persistence
    def write(self, directory: Path, arrays: dict[str, Any]) -> None:
        """Write ``doc_ids.txt`` and, with tombstones, ``deleted.npy`` (its entry goes into ``arrays``)."""
        if self.tombstones:
            arrays["deleted"] = save_array(directory, "deleted", self.deleted)
        write_lines(directory / IDS_FILE, self.ids)

    @classmethod
    def read(cls, directory: Path, manifest: Manifest, *, tombstones: bool) -> IdTable:
        """Read what :meth:`write` wrote for ``manifest.count`` rows, checking the mask and the ids."""
        table = cls(tombstones=tombstones)
        n = manifest.count
        if not tombstones:
            table.ids = read_lines(directory / IDS_FILE, expected=n)
            table.row_of = {doc_id: row for row, doc_id in enumerate(table.ids)}
            if len(table.row_of) != n:
                raise IndexFormatError(f"{directory / IDS_FILE} holds duplicate ids; the file is corrupt.")
            return table
        deleted = load_array(directory, manifest.arrays.get("deleted"), name="deleted")
        if deleted.dtype != np.bool_ or deleted.shape != (n,):
            raise IndexFormatError(
                f"{directory / 'deleted.npy'} must be bool of shape ({n},); got {deleted.dtype} {deleted.shape}."
            )
        table.deleted = np.array(deleted, dtype=bool)
        table.ids = read_lines(directory / IDS_FILE, expected=n)
        table.row_of = {doc_id: row for row, doc_id in enumerate(table.ids) if not deleted[row]}
        if len(table.row_of) != n - int(table.deleted.sum()):
            raise IndexFormatError(f"{directory / IDS_FILE} holds duplicate live ids; the file is corrupt.")
        return table
