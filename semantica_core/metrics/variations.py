"""Metrics of image variations: semantic consistency, diversity, and few-shot Fréchet distance. Pure torch.

Shapes: `conditions` [N, ...] (one row per condition), `variations` [N, K, ...] (K variations of each condition;
a flat [N*K, ...] tensor is accepted where K is given). Images are [.., 3 or 1, H, W] in [0, 1]; features are
[.., D].

- Consistency: does a variation keep the condition's meaning? With labels, the fraction of variations a classifier
  puts in the condition's class (`label_agreement`); in general, the cosine similarity of encoder features of the
  condition and its variations (`feature_consistency`).
- Diversity: the mean pairwise distance among the variations of one condition (`variation_diversity`, reusing
  metrics.diversity), and their distance to the condition (`distance_to_condition`): a model that copies its
  condition scores 0 there, so both numbers together tell variety from copying.
- Few-shot Fréchet distance: condition on k images of a held-out set, generate, and compare the generated features
  with the whole held-out set's (`few_shot_frechet`, reusing metrics.frechet).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .diversity import Distance, pairwise_diversity, pixel_l1, pixel_l2
from .frechet import frechet_distance_features


def group_variations(variations: torch.Tensor, count: Optional[int] = None) -> torch.Tensor:
    """[N, K, ...] as it is, or a flat [N*K, ...] batch (condition-major, as sample_variations returns it) reshaped
    with K = `count`."""
    if count is None:
        return variations
    if variations.shape[0] % count:
        raise ValueError(f"{variations.shape[0]} variations cannot be split into groups of {count}")
    return variations.reshape(variations.shape[0] // count, count, *variations.shape[1:])


def label_agreement(condition_labels: torch.Tensor, variation_labels: torch.Tensor) -> torch.Tensor:
    """Fraction of variations whose label equals their condition's: labels [N] and [N, K] (integers); returns [].

    The labels are typically a classifier's predictions on the variations against the ground truth of the
    conditions (or the classifier's prediction on the condition, which removes the classifier's own errors)."""
    if variation_labels.ndim != 2 or variation_labels.shape[0] != condition_labels.shape[0]:
        raise ValueError(
            f"variation labels must be [N, K] with N = {condition_labels.shape[0]} conditions; "
            f"got {tuple(variation_labels.shape)}"
        )
    return (variation_labels == condition_labels[:, None]).double().mean()


def per_class_agreement(condition_labels: torch.Tensor, variation_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """label_agreement per class of the condition: [num_classes] (NaN where a class has no condition)."""
    hits = (variation_labels == condition_labels[:, None]).double().mean(1)
    out = torch.full((num_classes,), float("nan"), dtype=torch.float64)
    for c in range(num_classes):
        chosen = condition_labels == c
        if chosen.any():
            out[c] = hits[chosen].mean()
    return out


def feature_consistency(condition_features: torch.Tensor, variation_features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between each condition's features [N, D] and its variations' [N, K, D]; returns [].

    1 = the encoder sees the variations as the condition; compare with `baseline_similarity` (random pairs)."""
    if variation_features.ndim != 3 or variation_features.shape[0] != condition_features.shape[0]:
        raise ValueError(
            f"variation features must be [N, K, D] with N = {condition_features.shape[0]}; "
            f"got {tuple(variation_features.shape)}"
        )
    cond = F.normalize(condition_features.double(), dim=-1)[:, None]
    return (cond * F.normalize(variation_features.double(), dim=-1)).sum(-1).mean()


def baseline_similarity(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between distinct rows of `features` [N, D]: what unrelated images score, the floor
    that `feature_consistency` should be read against."""
    n = features.shape[0]
    if n < 2:
        raise ValueError("the baseline similarity needs at least 2 feature rows")
    unit = F.normalize(features.double(), dim=-1)
    gram = unit @ unit.T
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))


def _distance_fn(distance: Union[str, Distance]) -> Distance:
    if isinstance(distance, str):
        fns = {"l1": pixel_l1, "l2": pixel_l2}
        if distance not in fns:
            raise ValueError(f"unknown distance '{distance}': use 'l1', 'l2' or a callable")
        return fns[distance]
    return distance


def variation_diversity(variations: torch.Tensor, distance: Union[str, Distance] = "l1") -> torch.Tensor:
    """Mean over conditions of the mean pairwise distance among that condition's variations [N, K, C, H, W], K >= 2.

    Returns [] float64; 0 = every condition gets K identical images."""
    if variations.ndim != 5 or variations.shape[1] < 2:
        raise ValueError(f"diversity needs variations [N, K>=2, C, H, W]; got {tuple(variations.shape)}")
    fn = _distance_fn(distance)
    return torch.stack([pairwise_diversity(group, fn).double() for group in variations]).mean()


def distance_to_condition(
    conditions: torch.Tensor, variations: torch.Tensor, distance: Union[str, Distance] = "l1"
) -> torch.Tensor:
    """Mean distance between each condition [N, C, H, W] and its variations [N, K, C, H, W]; returns [] float64.

    0 = the variations copy the condition. Read it with `variation_diversity`: a model that varies only around a
    copy has both small, one that ignores the condition has both large (and low consistency)."""
    if variations.ndim != 5 or variations.shape[0] != conditions.shape[0] or variations.shape[2:] != conditions.shape[1:]:
        raise ValueError(
            f"variations must be [N, K, C, H, W] matching conditions {tuple(conditions.shape)}; "
            f"got {tuple(variations.shape)}"
        )
    fn = _distance_fn(distance)
    n, k = variations.shape[:2]
    expanded = conditions[:, None].expand_as(variations).reshape(n * k, *conditions.shape[1:])
    with torch.no_grad():
        return fn(expanded.float(), variations.reshape(n * k, *variations.shape[2:]).float()).double().mean()


def nearest_distance(queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """For each flattened query [M, ...], the L2 distance (root mean square per element) to its nearest reference
    [R, ...]; returns [M]. A memorising model puts its samples at ~0 from some training image."""
    q, r = queries.flatten(1).double(), references.flatten(1).double()
    d2 = (q.square().sum(1, keepdim=True) - 2 * q @ r.T + r.square().sum(1)[None]).clamp_min(0)
    return (d2.min(1).values / q.shape[1]).sqrt()


def few_shot_frechet(generated_features: torch.Tensor, reference_features: torch.Tensor) -> torch.Tensor:
    """Fréchet distance between generated features [M, D] (variations of k held-out conditions) and the held-out
    set's features [R, D]. With few samples and large D the covariances are rank-deficient: compare numbers computed
    with the same M, R and D only (e.g. a reference model, or real images: `few_shot_frechet(real_subset, all)`)."""
    if generated_features.shape[1] != reference_features.shape[1]:
        raise ValueError(
            f"feature widths differ: generated {generated_features.shape[1]}, reference {reference_features.shape[1]}"
        )
    return frechet_distance_features(generated_features, reference_features)
