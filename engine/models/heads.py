"""Classification heads on PANNs frame-level features, and their AudioSet initialisation.

``AUDIOSET_INDEX_80`` maps the 80 FSDKaggle2019 classes, in
``sample_submission.csv`` column order, to their rows in the 527-class
AudioSet ontology that PANNs was trained on: every FSDKaggle2019 class is an
AudioSet class, so the pretrained classifier already holds a detector for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from engine.errors import CheckpointError, ConfigError

__all__ = ["AUDIOSET_INDEX_80", "AttentionHead", "init_from_audioset"]

AUDIOSET_INDEX_80: list[int] = [
    353, 209, 143, 67, 75, 168, 142, 372, 203, 58, 321, 130, 314, 66, 54, 3, 442, 113, 201, 63,
    386, 299, 127, 69, 362, 365, 364, 363, 448, 141, 60, 33, 2, 452, 62, 367, 44, 181, 177, 297,
    208, 172, 84, 379, 359, 32, 1, 180, 412, 83, 368, 326, 415, 82, 315, 290, 51, 381, 14, 443,
    26, 371, 342, 358, 49, 361, 292, 146, 360, 408, 374, 327, 450, 53, 370, 295, 15, 387, 11, 378,
]


class AttentionHead(nn.Module):
    r"""Attention pooling over time with linear attention and context gating; outputs logits.

    Input: frame-level features ``h`` of shape ``[B, C, T]`` (``C = in_features``,
    2048 for CNN14 / ResNet38). For every class ``k`` and frame ``t``:

    .. code-block:: text

        x_t      = Dropout_p(h_t)                          dropout before the linear maps
        a_{k,t}  = w_att_k . x_t + b_att_k                 linear attention score
        alpha_kt = softmax over t of a_{k,t}                per-class weights, sum_t = 1
        v_{k,t}  = w_cla_k . x_t + b_cla_k                 per-class value (the classifier, ``cla``)
        g_{k,t}  = 2 * sigmoid(w_gate_k . x_t + b_gate_k)  context gate in (0, 2)
        logit_k  = sum_t alpha_{k,t} * g_{k,t} * v_{k,t}

    ``att``, ``cla`` and ``gate`` are each a ``Linear(C, n_classes)`` applied
    frame by frame. The gate reads the whole feature vector of the frame (its
    context) and scales that frame's evidence for class ``k`` up or down,
    independently of where the attention puts its weight.

    Initialisation: ``cla`` is Xavier-uniform with zero bias (the layer that
    ``init_from_audioset`` overwrites); ``att`` and ``gate`` start at zero, so
    at construction the attention is uniform and every gate equals 1: the head
    starts as the time average of the per-frame class scores and learns to
    attend and gate from there. The output is logits (no sigmoid), for
    ``BCEWithLogitsLoss``.
    """

    def __init__(self, in_features: int = 2048, n_classes: int = 80, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}", field="model.dropout")
        self.in_features = in_features
        self.n_classes = n_classes
        self.dropout = nn.Dropout(dropout)
        self.att = nn.Linear(in_features, n_classes)
        self.cla = nn.Linear(in_features, n_classes)
        self.gate = nn.Linear(in_features, n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform classifier, zero attention and gate (uniform attention, unit gates)."""
        nn.init.xavier_uniform_(self.cla.weight)
        nn.init.zeros_(self.cla.bias)
        for layer in (self.att, self.gate):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, n_classes]`` from frame features ``[B, in_features, T]``.

        With ``return_attention=True`` also returns the attention weights
        ``[B, n_classes, T]`` (useful to see which frames drove a tag).
        """
        if features.dim() != 3 or features.shape[1] != self.in_features:
            raise ValueError(f"AttentionHead expects [B, {self.in_features}, T], got {tuple(features.shape)}")
        x = self.dropout(features.transpose(1, 2))            # [B, T, C]
        alpha = torch.softmax(self.att(x), dim=1)             # softmax over time, per class
        gated_values = self.cla(x) * (2.0 * torch.sigmoid(self.gate(x)))
        logits = (alpha * gated_values).sum(dim=1)            # [B, K]
        if return_attention:
            return logits, alpha.transpose(1, 2)
        return logits


@torch.no_grad()
def init_from_audioset(head: AttentionHead, fc_audioset_weight: Tensor, fc_audioset_bias: Tensor,
                       index: Sequence[int] = AUDIOSET_INDEX_80) -> None:
    """Initialise the head's classifier rows from the pretrained AudioSet classifier.

    Exactly what is written: ``head.cla.weight[k] = fc_audioset_weight[index[k]]``
    and ``head.cla.bias[k] = fc_audioset_bias[index[k]]`` for every output
    ``k``. ``att`` and ``gate`` are not touched (at construction they are zero:
    uniform attention and unit gates, so the initialised head starts as the
    time average of the per-frame AudioSet logits of the selected classes).

    ``fc_audioset`` was trained on PANNs' 2048-d embedding ``relu(fc1(.))``;
    ``PannsTagger`` feeds the head per-frame ``relu(fc1(.))`` features so the
    copied rows read the features they were trained on.
    """
    weight = torch.as_tensor(fc_audioset_weight)
    bias = torch.as_tensor(fc_audioset_bias)
    index = [int(i) for i in index]
    if len(index) != head.n_classes:
        raise ConfigError(
            f"the AudioSet index lists {len(index)} classes but the head has {head.n_classes} outputs; "
            "initialise from AudioSet only with a matching class index (AUDIOSET_INDEX_80 for the 80 "
            "FSDKaggle2019 classes) or switch the initialisation off", field="model.init_head_from_audioset")
    if weight.dim() != 2 or weight.shape[1] != head.in_features or bias.shape != (weight.shape[0],):
        raise CheckpointError(
            f"fc_audioset has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}; the head needs "
            f"weight [n, {head.in_features}] and bias [n] from a PANNs AudioSet classifier")
    bad = [i for i in index if not 0 <= i < weight.shape[0]]
    if bad:
        raise CheckpointError(
            f"AudioSet indices {bad[:10]} are outside the checkpoint's {weight.shape[0]} classes; "
            "use a 527-class PANNs AudioSet checkpoint")
    rows = torch.tensor(index, dtype=torch.long, device=weight.device)
    head.cla.weight.copy_(weight.index_select(0, rows).to(head.cla.weight))
    head.cla.bias.copy_(bias.index_select(0, rows).to(head.cla.bias))
