"""Cuttlefish tests run single-threaded: small SVDs and tiny models are faster that way and their timing does
not depend on what else runs on the machine."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
