import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Batches of tiny convolutions run fastest on one thread, and extra threads only spin on a busy CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
