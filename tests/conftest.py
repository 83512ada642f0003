import pytest
import torch

# One intra-op thread: multi-threaded CPU kernels may reduce in an order that depends on thread
# timing, and a loaded machine then changes the last bits and, over a training run, the result.
# Tests must be deterministic, so they run single-threaded.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
