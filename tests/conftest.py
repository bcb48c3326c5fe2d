"""Test-session set-up shared by every test module."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across
# exec: the `hepc` processes the tests start and then interrupt with SIGINT (Ctrl-C) would never
# see it. A handled signal is reset to its default on exec, so handling it here gives every child
# Python its normal Ctrl-C behaviour whatever started the test run.
signal.signal(signal.SIGINT, signal.default_int_handler)

# The decompressed-digest cache (hepc/data/compressed.py) lives in the user's cache folder; tests and
# the hepc processes they start use a folder of this session instead, never the user's.
os.environ["HEPC_CACHE_DIR"] = tempfile.mkdtemp(prefix="hepc-test-cache-")
atexit.register(shutil.rmtree, os.environ["HEPC_CACHE_DIR"], True)

import pytest

_approx = pytest.approx


def _plain_approx(expected, *args, **kwargs):
    """pytest.approx on plain numbers only. Handed a torch tensor, pytest 9.2 iterates over it (a 0-d
    tensor raises) where earlier versions compared it as a scalar: a test that passes under one pytest
    and fails under another. Refused here under every version, with what to do instead."""
    if type(expected).__module__.split(".")[0] == "torch":
        raise TypeError("pytest.approx was given a torch tensor: compare plain floats (tensor.item() or .tolist())")
    return _approx(expected, *args, **kwargs)


pytest.approx = _plain_approx


@pytest.fixture(scope="module")
def tiny_pristine(tmp_path_factory):
    """(store, results) of the tiny fixture's run, one per test module (a copy of the session's)."""
    from cli_helpers import tiny_store

    return tiny_store(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def tiny_copy(tiny_pristine, tmp_path):
    """(a fresh copy of the module's tiny store for this test, the module's store, the run's results)."""
    import shutil

    src, results = tiny_pristine
    dst = tmp_path / "store"
    shutil.copytree(src, dst, symlinks=True)
    return dst, src, results
