"""Tiny models train on one thread: with the CPU shared, intra-op threads of such small matmuls only spin."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
