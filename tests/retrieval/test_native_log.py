"""FAISS's C++ stderr lines go to logging: nothing on stderr by default, the message on a logger."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest

from retrieval._native_log import native_stderr_to_log

pytest.importorskip("faiss")

LOG = logging.getLogger("tests.native")


def test_ivf_trained_on_too_few_points_prints_nothing_but_logs_the_warning(capfd, caplog):
    from indexes import FaissIndex

    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="indexes.faiss_index"):
        FaissIndex(8, spec="IVF16,Flat").train(x)  # 16 lists want >= 16 * 39 = 624 points
    assert capfd.readouterr().err == ""
    (record,) = [r for r in caplog.records if "please provide at least 624 training points" in r.getMessage()]
    assert record.levelno == logging.INFO and record.name == "indexes.faiss_index"


def test_pq_warning_is_logged_once_with_its_repeat_count(capfd, caplog):
    from indexes import FaissIndex

    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="indexes.faiss_index"):
        FaissIndex(8, spec="PQ4x8").train(x)  # one k-means per sub-quantizer, each too small
    assert capfd.readouterr().err == ""
    messages = [r.getMessage() for r in caplog.records if "training points" in r.getMessage()]
    assert messages == ["native: WARNING clustering 300 points to 256 centroids: please provide at least 9984 "
                        "training points (repeated 4 times)"]


def test_at_default_level_the_cli_shows_nothing(capfd):
    # The demo's configuration: root logger at WARNING, records at INFO are dropped.
    logger = logging.getLogger("tests.native.quiet")
    logger.setLevel(logging.WARNING)
    with native_stderr_to_log(logger):
        os.write(2, b"WARNING clustering 5 points to 4 centroids\n")
    assert capfd.readouterr().err == ""


def test_descriptor_two_is_restored_even_when_the_block_raises(capfd, caplog):
    with caplog.at_level(logging.INFO, logger=LOG.name), pytest.raises(RuntimeError, match="boom"):
        with native_stderr_to_log(LOG):
            os.write(2, b"before the error\n")
            raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert [r.getMessage() for r in caplog.records] == ["native: before the error"]


def test_nested_capture_and_a_second_thread_keep_stderr_intact(capfd, caplog):
    seen: list[str] = []

    def other_thread() -> None:  # finds the capture taken and runs uncaptured
        with native_stderr_to_log(LOG):
            seen.append("ran")

    with caplog.at_level(logging.INFO, logger=LOG.name):
        with native_stderr_to_log(LOG):
            with native_stderr_to_log(LOG, level=logging.WARNING):
                os.write(2, b"inner\n")
            os.write(2, b"outer\n")
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
    os.write(2, b"free\n")
    assert seen == ["ran"] and capfd.readouterr().err == "free\n"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "native: inner"), (logging.INFO, "native: outer")]
