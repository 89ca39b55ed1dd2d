"""Input checks shared by the encoders: text lists, id lists and positive integers.

Every encoder validates its inputs the same way, so the messages read the same whichever
encoder the user called. ``what`` names the method being called (``"encode_queries"``),
so a message points at the call that went wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.errors import ConfigError, ShapeError

__all__ = ["as_text_list", "check_ids", "describe_item", "positive_int"]


def positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is a positive int (bools are refused), else raise ConfigError.

    Examples
    --------
    >>> positive_int("batch_size", 8)
    8
    >>> positive_int("batch_size", 0)
    Traceback (most recent call last):
    ...
    retrieval.errors.ConfigError: batch_size must be a positive int; got 0.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int; got {value!r}.")
    return value


def describe_item(item: object) -> str:
    """Short one-line description of a bad input item, for error messages.

    Examples
    --------
    >>> describe_item(3)
    'int (3)'
    >>> describe_item(np.zeros((2, 4), np.uint8))
    'ndarray of shape (2, 4), dtype uint8'
    """
    if isinstance(item, np.ndarray):
        return f"ndarray of shape {item.shape}, dtype {item.dtype}"
    text = repr(item).replace("\n", " ")
    return f"{type(item).__name__} ({text[:60]}{'...' if len(text) > 60 else ''})"


def as_text_list(texts: Sequence[str], *, what: str, allow_empty: bool = True) -> list[str]:
    """Check that ``texts`` is a sequence of valid Unicode str and return it as a list.

    Parameters
    ----------
    texts : sequence of str
        The texts passed by the user.
    what : str
        The method being called, named in the messages (e.g. ``"encode_queries"``).
    allow_empty : bool, default True
        Accept an empty sequence.

    Raises
    ------
    ConfigError
        For a single str / bytes, a non-iterable, a non-str item, a lone surrogate (text
        decoded with ``errors="surrogateescape"``), or an empty sequence when not allowed.

    Examples
    --------
    >>> as_text_list(("a", ""), what="encode_queries")
    ['a', '']
    >>> as_text_list("a", what="encode_queries")
    Traceback (most recent call last):
    ...
    retrieval.errors.ConfigError: encode_queries must be a sequence of str; got a single str. Wrap it in a list: encode_queries([text]).
    """
    if isinstance(texts, (str, bytes)):
        raise ConfigError(
            f"{what} must be a sequence of str; got a single {type(texts).__name__}. Wrap it in a list: {what}([text])."
        )
    try:
        items = list(texts)
    except TypeError:
        raise ConfigError(
            f"{what} must be a sequence of str; got {type(texts).__name__}, which is not iterable."
        ) from None
    if not items and not allow_empty:
        raise ConfigError(f"{what} must be a sequence of str; got an empty sequence. Pass at least one text.")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(
                f"{what} needs every text to be a str; item {i} is {describe_item(item)}. "
                "Convert it with str() or drop it; use '' for an empty text."
            )
        if not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(
                    f"{what}: text {i} is not valid Unicode ({exc.reason} at position {exc.start}: lone surrogate "
                    f"{item[exc.start]!r}), typically from bytes decoded with errors='surrogateescape'. Decode "
                    "the source with errors='replace' (or 'ignore') instead."
                ) from None
    return items


def check_ids(ids: Sequence[str] | None, n: int, *, what: str, item: str = "text") -> list[str]:
    """Return ``n`` ids as str: ``ids`` checked, or ``"0"``, ``"1"``, ... when ``None``.

    Parameters
    ----------
    ids : sequence, length n, optional
        One id per input; every id is converted with ``str``.
    n : int
        Number of inputs.
    what : str
        The method being called, named in the messages.
    item : str, default "text"
        What one input is (``"text"``, ``"image"``), named in the messages.

    Raises
    ------
    ConfigError
        If ``ids`` is a single str / bytes.
    ShapeError
        If ``ids`` does not hold ``n`` ids.

    Examples
    --------
    >>> check_ids(None, 2, what="encode_documents")
    ['0', '1']
    >>> check_ids([7], 2, what="encode_documents")
    Traceback (most recent call last):
    ...
    retrieval.errors.ShapeError: encode_documents needs one id per text; got 1 ids for 2 texts.
    """
    if ids is None:
        return [str(i) for i in range(n)]
    if isinstance(ids, (str, bytes)):
        raise ConfigError(f"{what}: ids must be a sequence of str, one per {item}; got a single {type(ids).__name__}.")
    id_list = [str(i) for i in ids]
    if len(id_list) != n:
        raise ShapeError(f"{what} needs one id per {item}; got {len(id_list)} ids for {n} {item}s.")
    return id_list


def check_description(description: object, kind: str, keys: frozenset[str] | set[str]) -> dict[str, object]:
    """Validate what ``<kind>.describe()`` wrote before ``<kind>.from_description`` reads it.

    Parameters
    ----------
    description : object
        The description read back, normally from an index manifest.
    kind : str
        The encoder class that must have written it (its ``"type"`` field).
    keys : set of str
        Every key that class writes; any other key means a newer densezip wrote it.

    Returns
    -------
    dict
        ``description`` itself, now known to be a dict of the right type.

    Examples
    --------
    >>> check_description({"type": "DenseEncoder", "model": "m"}, "DenseEncoder", {"type", "model"})["model"]
    'm'
    >>> check_description({"type": "ColPaliEncoder"}, "DenseEncoder", {"type"})
    Traceback (most recent call last):
    ...
    retrieval.errors.ConfigError: cannot build a DenseEncoder from a description of type 'ColPaliEncoder'; expected 'DenseEncoder'. Use the encoder class that wrote it.
    """
    if not isinstance(description, dict):
        raise ConfigError(f"description must be a dict from {kind}.describe(); got {type(description).__name__}.")
    found = description.get("type")
    if found != kind:
        raise ConfigError(
            f"cannot build a {kind} from a description of type {found!r}; expected {kind!r}. "
            "Use the encoder class that wrote it."
        )
    unknown = sorted(set(description) - set(keys))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {kind} description; expected a subset of {sorted(keys)}. "
            "Was it written by a newer densezip? Upgrade with pip install -U densezip."
        )
    return description
