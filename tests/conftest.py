"""Fixtures shared by the unit tests: the `backend` fixture runs a test in both frameworks."""

import numpy as np
import pytest

from companion import tensorflow as companion_tf
from companion import torch as companion_torch

BACKENDS = {"torch": companion_torch, "tensorflow": companion_tf}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """The back end module (`companion.torch` or `companion.tensorflow`), seeded."""
    module = BACKENDS[request.param]
    module.seed_everything(0)
    return module


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

