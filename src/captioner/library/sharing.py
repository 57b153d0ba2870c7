"""Indexing under torchrun: every process describes its share of each batch, and the main process, which alone
opens the database, receives everything in order and writes it (as training shares its batches).

Without torchrun the sharing is a no-op: one process describes every photo.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from captioner.api import Captioner, CaptionResult
from captioner.decoding.settings import DecodeSettings
from captioner.training.distributed import Processes


def share_work(processes: Processes, work: object = None) -> object:
    """The main process's `work` (the photos to describe), in every process."""
    if not processes.distributed:
        return work
    box = [work]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def describe_shared(captioner: Captioner, items: list[tuple[str, Path]], settings: DecodeSettings,
                    processes: Processes, both_views: bool = False
                    ) -> tuple[list[CaptionResult], torch.Tensor | None] | None:
    """The results and features of every item in order, in the main process (None in the others): each process
    describes items[rank::world_size]."""
    mine = processes.shard(items)
    results, features = captioner.describe_batch(mine, settings, both_views=both_views) if mine else ([], None)
    if not processes.distributed:
        return results, features
    rows = iter(features.cpu() if features is not None else [])
    packed = []
    for result in results:
        for caption in result.captions:
            caption.attention = None  # the library keeps no attention: nothing to send
        packed.append((result, next(rows) if result.error is None else None))
    gathered: list | None = [None] * processes.world_size if processes.is_main else None
    dist.gather_object(packed, gathered, dst=0)
    if not processes.is_main:
        return None
    ordered = [gathered[i % processes.world_size][i // processes.world_size] for i in range(len(items))]
    kept = [row for _, row in ordered if row is not None]
    return [result for result, _ in ordered], torch.stack(kept) if kept else None
