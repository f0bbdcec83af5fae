import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_reward_dirs(tmp_path_factory):
    """family -> folder of a tiny random reward model, built once per session."""
    from zr_align.testing import tiny_reward_model

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = tiny_reward_model(family, tmp_path_factory.mktemp(family))
        return cache[family]

    return get
