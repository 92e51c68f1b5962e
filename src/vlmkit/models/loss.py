"""The training loss: next-token cross-entropy over labelled positions (labels are aligned with input_ids)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of positions t whose next token t+1 is labelled ([B, L-1]) and those target ids ([T])."""
    shift_labels = labels[:, 1:]  # [B, L-1]
    valid = shift_labels != IGNORE_INDEX  # [B, L-1]
    return valid, shift_labels[valid]


def selected_logits_loss(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same loss as `causal_lm_loss`, projecting only the hidden states that predict a label.

    Skips the vocabulary projection for prompt, image and padding positions, which dominate a VLM batch.
    Returns (loss, logits of the selected positions [T, V]).
    """
    valid, targets = label_positions(labels.to(hidden.device))
    picked = hidden[:, :-1][valid]  # [T, D]
    logits = head(picked)  # [T, V]
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = valid.sum().clamp(min=1)
    return total / num_items_in_batch, logits


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[t+1] from position t.

    `labels` has the same shape as the input ids ([B, L]); the shift happens here and nowhere else.
    `num_items_in_batch` normalizes by the label-token count of a whole accumulated batch instead of this one.
    A batch without any labelled token gives a zero loss that still back-propagates.
    """
    valid, targets = label_positions(labels.to(logits.device))
    picked = logits[:, :-1][valid].float()  # [T, V]
    total = F.cross_entropy(picked, targets, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = valid.sum().clamp(min=1)
    return total / num_items_in_batch
