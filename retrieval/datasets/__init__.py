"""Small real retrieval benchmarks shipped inside the package.

Each data set lives in a sub-directory next to this file, in the BEIR layout
(``corpus.jsonl.gz``, ``queries.jsonl``, ``qrels/<split>.tsv``) with a ``README.md``
giving its provenance and licence. Nothing is downloaded at run time.

Two vector sets for approximate-search benchmarks sit beside them in the TEXMEX format
(``*.fvecs`` base and query vectors, ``*.ivecs`` exact neighbours), also with a
``README.md``: :func:`available_vector_sets`, :func:`vector_set_path`.

Examples
--------
>>> available_datasets()
['cranfield', 'scifact']
>>> dataset_path("scifact").name
'scifact'
>>> available_vector_sets()
['deep10k', 'fmnist_small']
"""

from __future__ import annotations

from pathlib import Path

from retrieval.errors import ConfigError, DataError

__all__ = ["available_datasets", "available_vector_sets", "dataset_path", "vector_set_path"]

# Name -> one-line description. The directories sit beside this module, so they are found
# through ``__file__`` both in a source checkout and in a regular (non-zipped) wheel
# install, provided the wheel carries them as package data.
_BUNDLED: dict[str, str] = {
    "cranfield": "Cranfield aeronautics, 1,400 docs, 225 queries, grades 1..4 (train, test, all)",
    "scifact": "BEIR SciFact, 5,183 docs, 809 train / 300 test judged claims (train, test)",
}

_VECTOR_SETS: dict[str, str] = {
    "deep10k": "Deep1B 10k: 10,000 x 96 base, 1,000 queries, exact L2 top 100",
    "fmnist_small": "Fashion-MNIST small: 1,000 x 784 base (pixels 0..255), 500 queries, exact L2 top 100",
}

_ROOT = Path(__file__).resolve().parent


def available_datasets() -> list[str]:
    """Names of the data sets bundled with the package, sorted.

    Returns
    -------
    list of str
        Names accepted by :func:`dataset_path` and by ``retrieval.beir.load_beir``.
    """
    return sorted(_BUNDLED)


def dataset_path(name: str) -> Path:
    """Directory of a bundled data set.

    Parameters
    ----------
    name : str
        One of :func:`available_datasets`, e.g. ``"scifact"``.

    Returns
    -------
    pathlib.Path
        Absolute path of the directory holding ``corpus.jsonl.gz``, ``queries.jsonl``
        and ``qrels/``.

    Raises
    ------
    ConfigError
        If ``name`` is not a bundled data set.
    DataError
        If the name is known but its directory is missing, i.e. the installation does
        not carry the package data.
    """
    return _bundled_path(name, _BUNDLED, "data set",
                         "To use another BEIR data set, pass its directory path to load_beir().")


def available_vector_sets() -> list[str]:
    """Names of the TEXMEX vector sets bundled with the package, sorted."""
    return sorted(_VECTOR_SETS)


def vector_set_path(name: str) -> Path:
    """Directory of a bundled vector set (``*.fvecs`` / ``*.ivecs`` and a ``README.md``).

    Parameters
    ----------
    name : str
        One of :func:`available_vector_sets`, e.g. ``"deep10k"``.

    Raises
    ------
    ConfigError
        If ``name`` is not a bundled vector set.
    DataError
        If its directory is missing (an installation without the package data).
    """
    return _bundled_path(name, _VECTOR_SETS, "vector set", None)


def _bundled_path(name: str, table: dict[str, str], kind: str, hint: str | None) -> Path:
    """The directory of bundled ``kind`` ``name`` from ``table``; ConfigError / DataError otherwise."""
    if not isinstance(name, str) or name not in table:
        listing = "\n".join(f"  {key}: {desc}" for key, desc in sorted(table.items()))
        raise ConfigError(f"unknown bundled {kind} {name!r}; available:\n{listing}" + (f"\n{hint}" if hint else ""))
    path = _ROOT / name
    if not path.is_dir():
        raise DataError(
            f"bundled {kind} {name!r} should be at {path}, but that directory is missing. "
            "The package was installed without its data files; reinstall densezip from a "
            "wheel or source tree that includes retrieval/datasets/."
        )
    return path
