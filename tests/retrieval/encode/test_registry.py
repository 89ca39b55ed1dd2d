"""The encoder registry: describe() -> encoder_from_description() round trips, old descriptions, errors.

The ColPali round trip lives in test_colpali.py, beside the tiny random model it needs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from retrieval.encode import DEFAULT_MODEL, DenseEncoder, encoder_from_description
from retrieval.encode.multivector import MultiVectorEncoder
from retrieval.encode.registry import ENCODER_KINDS
from retrieval.errors import ConfigError, IndexFormatError


def _through_json(description: dict[str, Any]) -> dict[str, Any]:
    """What a manifest gives back: the description after a JSON round trip."""
    return json.loads(json.dumps(description))


def test_every_kind_names_a_class_with_describe_and_from_description() -> None:
    import importlib

    assert sorted(ENCODER_KINDS) == ["ColPaliEncoder", "DenseEncoder", "MultiVectorEncoder"]
    for kind, (module, name) in ENCODER_KINDS.items():
        cls = getattr(importlib.import_module(module), name)
        assert cls.__name__ == kind
        assert callable(cls.describe) and callable(cls.from_description)


def test_dense_round_trip() -> None:
    custom = DenseEncoder(max_seq_length=128, query_prompt="q: ", document_prompt="", cache_dir=False)
    description = _through_json(custom.describe())
    again = encoder_from_description(description, device="cpu", cache_dir=False)
    assert isinstance(again, DenseEncoder) and again.describe() == description
    assert description["model"] == DEFAULT_MODEL
    # Runtime options reach DenseEncoder.from_description; ones it does not take are refused by name.
    assert again.cache_dir is None
    with pytest.raises(ConfigError, match=r"\['query_length'\] do not apply to a DenseEncoder"):
        encoder_from_description(description, query_length=8)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def test_model_saved_beside_the_index_is_found_relative_to_it(minilm_encoder: DenseEncoder, tmp_path: Path) -> None:
    # A JPQ export records its query encoder as "../query_encoder", relative to the index directory.
    model_dir = Path(minilm_encoder._model_path())
    # A copy, not a symlink: a model recorded relative to the index must lie inside the export
    # after resolving symlinks. Hard links where the file system allows keep it cheap.
    shutil.copytree(model_dir, tmp_path / "query_encoder", copy_function=_link_or_copy)
    (tmp_path / "index").mkdir()
    description = {**minilm_encoder.describe(), "model": "../query_encoder"}
    encoder = encoder_from_description(description, device="cpu", base_dir=tmp_path / "index", cache_dir=False)
    assert Path(encoder.name) == (tmp_path / "query_encoder").resolve()
    assert encoder.fingerprint == minilm_encoder.fingerprint  # the fingerprint check passed


def test_multivector_round_trip() -> None:
    enc = MultiVectorEncoder(device="cpu", query_length=8, document_length=64, keep_special_tokens=True)
    description = _through_json(enc.describe())
    again = encoder_from_description(description, device="cpu", batch_size=4)
    assert isinstance(again, MultiVectorEncoder) and again.describe() == description
    assert again.query_length == 8 and again.document_length == 64 and again.keep_special_tokens


def test_multivector_reads_old_and_refuses_unusable_descriptions() -> None:
    # What MultiVectorEncoder.describe() has always written for the default model.
    old = {"type": "MultiVectorEncoder", "model": "all-MiniLM-L6-v2", "query_length": 32, "document_length": 180,
           "keep_special_tokens": False, "normalize": True, "dim": 384, "projected": False}
    enc = encoder_from_description(old, device="cpu")
    assert isinstance(enc, MultiVectorEncoder) and enc._model_arg is None and enc.document_length == 180
    with pytest.raises(ConfigError, match="projected encoder"):
        MultiVectorEncoder.from_description({**old, "projected": True})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pooling'\]"):
        MultiVectorEncoder.from_description({**old, "pooling": "mean"})
    with pytest.raises(ConfigError, match="of type 'DenseEncoder'; expected 'MultiVectorEncoder'"):
        MultiVectorEncoder.from_description({**old, "type": "DenseEncoder"})


def test_unknown_kind_names_the_known_kinds(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"type 'FakeEncoder' recorded in .*: the known types are "
        r"\['ColPaliEncoder', 'DenseEncoder', 'MultiVectorEncoder'\]\. .*encoder=\.\.\.",
    ):
        encoder_from_description({"type": "FakeEncoder", "dim": 64}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="type None"):
        encoder_from_description({"model": "x"})
    with pytest.raises(ConfigError, match="must be a dict"):
        encoder_from_description("DenseEncoder")


@pytest.mark.parametrize("model", ["../../elsewhere", "./../../x", "../escape-link/model"])
def test_a_relative_model_leading_out_of_the_export_is_refused(tmp_path: Path, model: str) -> None:
    export = tmp_path / "export"
    (export / "index").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (export / "escape-link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    description = {"type": "DenseEncoder", "model": model, "dim": 384}
    with pytest.raises(IndexFormatError, match="leads outside"):
        encoder_from_description(description, device="cpu", base_dir=export / "index")
