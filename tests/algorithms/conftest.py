"""Algorithm tests run on small tensors, where torch's intra-op threads cost more than they save
(many times more on a busy 2-core machine): run each test on one thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
