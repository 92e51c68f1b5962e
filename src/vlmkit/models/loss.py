"""The training loss: next-token cross-entropy over labelled positions (labels are aligned with input_ids)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[t+1] from position t.

    `labels` has the same shape as the input ids ([B, L]); the shift happens here and nowhere else.
    `num_items_in_batch` normalizes by the label-token count of a whole accumulated batch instead of this one.
    A batch without any labelled token gives a zero loss that still back-propagates.
    """
    shift_logits = logits[:, :-1]  # [B, L-1, V]
    shift_labels = labels[:, 1:].to(logits.device)  # [B, L-1]
    valid = shift_labels != IGNORE_INDEX  # [B, L-1]
    picked = shift_logits[valid].float()  # [T, V]
    total = F.cross_entropy(picked, shift_labels[valid], reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = valid.sum().clamp(min=1)
    return total / num_items_in_batch
