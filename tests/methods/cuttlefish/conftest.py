"""Cuttlefish tests run single-threaded: small SVDs and tiny models are faster that way and their timing does
not depend on what else runs on the machine."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
