"""The passage / page stores' id lookup through the compact id table (issue 18): the same answers
and errors as the dict it replaced, at sizes where the table holds its ids as arrays."""

from __future__ import annotations

import pytest

from indexes import FlatIndex
from retrieval.errors import ConfigError, IndexFormatError, UnknownIdError
from retrieval.rag.component import RetrievalComponent
from retrieval.rag.ingest import Passage
from retrieval.rag.page_store import PageStore
from retrieval.rag.pages import Page
from retrieval.rag.passages import PassageStore, check_same_ids

N = 10_000  # above the id table's side-table limit (4096): the ids are merged into its arrays


def _passages(n: int = N, prefix: str = "dé") -> list[Passage]:
    return [Passage(f"{prefix}{i}#0", f"text {i}", f"{prefix}{i}", 0, 6, metadata={"even": i % 2 == 0})
            for i in range(n)]


@pytest.fixture(scope="module")
def store() -> PassageStore:
    return PassageStore(_passages())


def test_lookups_answer_as_the_dict_did(store: PassageStore) -> None:
    passages = store.passages
    old = {p.id: i for i, p in enumerate(passages)}  # what the store kept before issue 18
    assert store["dé123#0"] is passages[123] and "dé9999#0" in store and "dé10000#0" not in store
    assert dict(store.row_of) == old and len(store.row_of) == N and list(store.row_of)[:2] == ["dé0#0", "dé1#0"]
    assert store.row_of["dé7#0"] == 7 and "dé7#0" in store.row_of and 7 not in store.row_of
    with pytest.raises(KeyError):
        store.row_of["nope"]
    assert store.rows_of(["dé5#0", "dé1#0", "dé5#0"]).tolist() == [1, 5]  # sorted, unique
    assert store.rows_of("dé42#0").tolist() == [42]
    assert store.find_rows(["dé3#0", "nope", "dé2#0"]).tolist() == [3, -1, 2]
    assert store.ids_at([2, 0]) == ["dé2#0", "dé0#0"] and store.ids[:1] == ["dé0#0"]
    assert store.rows_where({"even": False}).tolist()[:3] == [1, 3, 5]


def test_unknown_ids_raise_as_before(store: PassageStore) -> None:
    with pytest.raises(UnknownIdError, match=r"^passage id 'nope' is not in the store\.$"):
        store["nope"]
    with pytest.raises(UnknownIdError, match=r"ids holds 2 passage id\(s\) that are not in the collection, "
                                             r"e\.g\. \['x', 'y'\]\. Passage ids look like '<doc_id>#<n>'\."):
        store.rows_of(["dé1#0", "x", "y"])


def test_ids_cost_the_compact_table_not_a_dict(store: PassageStore) -> None:
    lengths = [len(p.id.encode("utf-8")) for p in store.passages]
    # ids of near-equal lengths: padded to the longest, with a uint32 row per id (the fixed-width
    # layout; the variable one would cost UTF-8 + 16 bytes an id); no tombstones
    assert max(lengths) * N <= sum(lengths) + 12 * N
    assert store.ids_memory_bytes() == max(lengths) * N + 4 * N


def test_duplicate_and_non_string_ids_are_refused() -> None:
    passages = _passages()
    with pytest.raises(ConfigError, match=r"duplicate passage id 'dé17#0'; passage ids must be unique\."):
        PassageStore([*passages, passages[17]])
    with pytest.raises(ConfigError, match=r"passage ids must be str; got int 5 \(number 2\)"):
        PassageStore([passages[0], Passage(5, "t", "d", 0, 1)])  # type: ignore[arg-type]
    page = Page(id="a.pdf#p1", doc_id="a.pdf", page=1, source="a.pdf", width=10, height=10)
    with pytest.raises(ConfigError, match=r"duplicate page id 'a\.pdf#p1'; page ids must be unique\."):
        PageStore([page, page])
    pages = PageStore([page])
    with pytest.raises(UnknownIdError, match=r"Page ids look like '<file>#p<page number>'\."):
        pages.rows_of(["b.pdf#p1"])
    assert pages["a.pdf#p1"] is page and len(PassageStore([])) == 0 and "x" not in PassageStore([])


def test_check_same_ids_names_both_sides(store: PassageStore, tmp_path) -> None:
    ids = store.ids
    check_same_ids(ids, store, tmp_path)
    check_same_ids(set(ids), store, tmp_path)
    with pytest.raises(IndexFormatError, match=r"1 indexed id\(s\) have no passage \(e\.g\. \['other'\]\) and 2 "
                                               r"passage\(s\) are not indexed \(e\.g\. \['dé0#0', 'dé1#0'\]\)"):
        check_same_ids(["other", *ids[2:]], store, tmp_path)


def test_a_store_that_does_not_match_the_index_is_an_error(fake_encoder) -> None:
    passages = _passages(20, prefix="p")
    index = FlatIndex(fake_encoder.dim).add(fake_encoder.encode_documents([p.text for p in passages],
                                                                          ids=[p.id for p in passages]))
    other = PassageStore(_passages(20, prefix="q"))
    with pytest.raises(ConfigError, match=r"the index returned 3 id\(s\) that the store does not hold"):
        RetrievalComponent(index, fake_encoder, other).retrieve("text 3", k=3)
    assert [h.id for h in RetrievalComponent(index, fake_encoder, PassageStore(passages)).retrieve("text 3", k=3)]
