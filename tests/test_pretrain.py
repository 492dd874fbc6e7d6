"""Pre-training of the tiny CLIP and CLIPSeg: determinism, caching, the CLIP -> CLIPSeg copy (fast, a few steps);
the real thresholds (zero-shot well above chance, a CLIPSeg that segments) are `@pytest.mark.slow`."""

from __future__ import annotations

import pytest
import torch

from adaptune.pretrain import (
    DEFAULT_CLIP_STEPS, DEFAULT_CLIPSEG_STEPS, build_tiny_clipseg_from_clip, pretrain_tiny_clip,
)
from adaptune.pretrain.clip import multi_positive_infonce

SMALL = dict(num_pairs=48, batch_size=16, vision_hidden=32, vision_layers=4, text_hidden=32, heads=2,
             projection_dim=32, warmup_steps=2)



@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads stall each other (100x slower backward)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_multi_positive_infonce_treats_duplicates_as_positives():
    together = torch.tensor([[5.0, 5.0, -5.0], [5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])  # duplicates look alike
    apart = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0], [-5.0, -5.0, 5.0]])  # duplicates pushed apart
    captions = ["a red circle", "a red circle", "a blue square"]
    assert float(multi_positive_infonce(together, captions)) < float(multi_positive_infonce(apart, captions))
    distinct = ["x", "y", "z"]  # with distinct captions it is the usual InfoNCE
    assert float(multi_positive_infonce(apart, distinct)) < float(multi_positive_infonce(together, distinct))


def test_pretrain_clip_is_deterministic_and_cached(tmp_path):
    first = pretrain_tiny_clip(steps=3, cache_dir=tmp_path, progress=False, num_eval=24, **SMALL)
    assert first.path is not None and (first.path / "DONE").exists() and (first.path / "metrics.json").exists()
    assert {"zero_shot_accuracy", "chance", "final_loss", "train_seconds"} <= set(first.metrics)
    again = pretrain_tiny_clip(steps=3, cache_dir=tmp_path, progress=False, num_eval=24, **SMALL)
    assert again.path == first.path and again.metrics == first.metrics and _same_weights(first.model, again.model)
    fresh = pretrain_tiny_clip(steps=3, use_cache=False, progress=False, num_eval=24, **SMALL)
    assert fresh.path is None and _same_weights(first.model, fresh.model)
    other = pretrain_tiny_clip(steps=4, cache_dir=tmp_path, progress=False, num_eval=24, **SMALL)
    assert other.path != first.path
    assert not list(tmp_path.glob(".*tmp*")), "no temporary folders left behind"


def test_clipseg_from_clip_copies_the_encoders_and_trains_only_the_decoder(tmp_path):
    clip = pretrain_tiny_clip(steps=2, cache_dir=tmp_path, progress=False, num_eval=12, **SMALL)
    seg = build_tiny_clipseg_from_clip(clip, steps=2, cache_dir=tmp_path, progress=False, num_rows=8, num_eval=8,
                                       batch_size=4)
    assert list(seg.model.config.extract_layers) == [1, 2, 3]
    clip_state, seg_state = clip.model.state_dict(), seg.model.clip.state_dict()
    assert all(torch.equal(clip_state[k], seg_state[k]) for k in clip_state)
    assert {"dice", "iou", "dice_untrained", "final_loss"} <= set(seg.metrics)
    assert seg.processor.image_processor.size["height"] == 64
    assert list(seg.processor.image_processor.image_mean) == list(clip.processor.image_processor.image_mean)
    again = build_tiny_clipseg_from_clip(clip, steps=2, cache_dir=tmp_path, progress=False, num_rows=8, num_eval=8,
                                         batch_size=4)
    assert again.path == seg.path and _same_weights(seg.model, again.model)


@pytest.mark.slow
def test_pretrained_models_know_something(tmp_path_factory):
    """The real settings: zero-shot far above chance (1/12); the CLIPSeg decoder segments (Dice >> untrained)."""
    clip = pretrain_tiny_clip(steps=DEFAULT_CLIP_STEPS, progress=False)
    print("tiny CLIP", clip.metrics)
    assert clip.metrics["zero_shot_accuracy"] >= 0.5
    seg = build_tiny_clipseg_from_clip(clip, steps=DEFAULT_CLIPSEG_STEPS, progress=False)
    print("tiny CLIPSeg", seg.metrics)
    assert seg.metrics["dice"] >= 0.3 and seg.metrics["dice"] > seg.metrics["dice_untrained"] + 0.2
