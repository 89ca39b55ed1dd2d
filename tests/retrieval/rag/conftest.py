"""Fixtures shared by the page-collection tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def colpali_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised ColPali checkpoint saved to disk (model and processor)."""
    from page_fixtures import tiny_colvision

    model, processor = tiny_colvision("colpali")
    path = tmp_path_factory.mktemp("tiny-colpali")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
