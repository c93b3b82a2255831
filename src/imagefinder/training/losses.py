"""The losses fine-tuning minimises, on L2-normalised embeddings.

- `info_nce`: contrastive copy detection (SimCLR, SSCD): two views of one image are a positive
  pair, every other view in the batch a negative.
- `collection_contrast`: each edited view against the plain embedding of every training image
  (a bank refreshed each epoch), its own image the one to pick: the question a search asks of a
  copy, with the whole collection as negatives rather than one batch of it.
- `koleo`: the Kozachenko-Leonenko entropy term of SSCD, which pushes each embedding away from
  its nearest neighbour in the batch, so the vectors spread over the sphere instead of
  collapsing into a few directions (a spread space keeps cosine scores meaningful for the copy
  threshold).
- `supervised_contrastive` (SupCon): every other view with the same label is a positive.
- `proxy_softmax`: the alternative it is measured against (normalised softmax over one learned
  proxy per label; `bench/results/finetune.json` has both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(embeddings: torch.Tensor, instance: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of picking a view's positive among all other views. `instance[i]` is the
    source image of view i; each image has two or more views in the batch."""
    return supervised_contrastive(embeddings, instance, temperature)


def supervised_contrastive(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020, the "out" form): for each anchor, the mean log-probability of
    its positives (same label, not itself) among all other views. Anchors without a positive in
    the batch are left out."""
    logits = embeddings @ embeddings.T / temperature
    n = len(embeddings)
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        return embeddings.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[has_positive] / counts[has_positive]
    return -mean_log_prob.mean()


def collection_contrast(
    embeddings: torch.Tensor,
    rows: torch.Tensor,
    bank: torch.Tensor,
    temperature: float,
    bank_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of picking row `rows[i]` of `bank` (fixed, no gradient) for view i.
    With `bank_labels` (-1: none), other images of the view's own label are not negatives: when
    training with labels too, they are what the supervised term pulls together."""
    logits = embeddings @ bank.detach().T / temperature
    if bank_labels is not None:
        own = bank_labels[rows]
        alike = (bank_labels[None, :] == own[:, None]) & (own[:, None] >= 0)
        alike[torch.arange(len(rows), device=rows.device), rows] = False
        logits = logits.masked_fill(alike, float("-inf"))
    return F.cross_entropy(logits, rows)


def koleo(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean log distance of each embedding to its nearest other embedding in the batch."""
    with torch.no_grad():
        similarity = embeddings @ embeddings.T
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distances = (embeddings - embeddings[nearest]).norm(dim=1)
    return -torch.log(distances + eps).mean()


def proxy_softmax(
    embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Normalised-softmax classification against one L2-normalised proxy per label."""
    logits = embeddings @ F.normalize(proxies, dim=1).T / temperature
    return F.cross_entropy(logits, labels)
