"""Shared fixtures. Everything runs offline on CPU with tiny models built in code."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: on a busy 2-core machine two torch threads make small backward passes far slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def vqa_dataset_dir(tmp_path_factory):
    """A tiny saved VQA DatasetDict (solid-colour images, colour questions): train/validation/test."""
    import datasets
    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}

    def rows(n: int, offset: int):
        out = []
        for i in range(n):
            name = list(colours)[(i + offset) % 3]
            out.append({"image": Image.new("RGB", (64, 64), colours[name]), "question": "What colour is the image?",
                        "answer": name, "kind": "coarse"})
        return datasets.Dataset.from_list(out)

    path = tmp_path_factory.mktemp("vqa") / "ds"
    datasets.DatasetDict({"train": rows(48, 0), "validation": rows(9, 1), "test": rows(9, 2)}).save_to_disk(path)
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny-model generation is latency-bound and the test CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
