"""The query tracker keeps a slot on the same instance when Mask2Former's query order changes."""

import torch

from prunebench.models.tracker import QueryTracker


def _frame(order):
    """Queries 0..3 with distinct embeddings / classes / masks, emitted in ``order``."""
    embeddings = torch.eye(4, 8)
    logits = torch.full((4, 3), -5.0)
    logits[torch.arange(4), torch.tensor([0, 1, 0, 2])] = 5.0  # query q -> class [0,1,0,2][q]
    masks = torch.full((4, 4, 6), -1.0)
    for q in range(4):
        masks[q, q, :] = 1.0  # query q covers row q
    order = torch.tensor(order)
    return logits[order], masks[order], embeddings[order]


def test_slots_follow_instances_across_permutations():
    tracker = QueryTracker(top_k=2)
    tracker.step(*_frame([0, 1, 2, 3]))
    tracker.step(*_frame([2, 0, 3, 1]))
    tracker.step(*_frame([3, 2, 1, 0]))
    results = tracker.finish(video_id=7, content_hw=(16, 24), output_hw=(16, 24), category_ids=[10, 20, 30])
    assert len(results) == 2
    for track in results:
        rows = set()
        for rle in track["segmentations"]:
            from pycocotools import mask as mask_utils

            m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            rows |= {int(r) // 4 for r in m.nonzero()[0]}
        assert len(rows) == 1  # the same query row (instance) in every frame
        assert track["video_id"] == 7 and track["category_id"] in (10, 20, 30)


def test_empty_masks_become_null_and_reset():
    tracker = QueryTracker(top_k=1)
    logits, masks, emb = _frame([0, 1, 2, 3])
    tracker.step(logits, torch.full_like(masks, -1.0), emb)
    (track,) = tracker.finish(1, (16, 24), (32, 48), [1, 2, 3])
    assert track["segmentations"] == [None]
    assert tracker.finish(1, (16, 24), (32, 48), [1, 2, 3]) == []
