"""The vectorised pair loss against a Python loop over pairs, and the alpha weighting."""

import pytest
import torch
import torch.nn.functional as F

from sslight.methods.pair_loss import cross_entropy_pairs, pair_counts, pair_weights, weighted_pair_loss


def loop_pair_losses(targets, log_probs):
    """Reference: DINO's loop over (teacher view, student view) pairs, skipping same views."""
    losses = {}
    for i in range(targets.shape[0]):
        for j in range(log_probs.shape[0]):
            if i != j:
                losses[(i, j)] = (-targets[i] * log_probs[j]).sum(-1).mean()
    return losses


@pytest.fixture
def views():
    g = torch.Generator().manual_seed(0)
    n_global, n_local, batch, k = 2, 6, 5, 11
    targets = F.softmax(torch.randn(n_global, batch, k, generator=g), -1)
    log_probs = F.log_softmax(torch.randn(n_global + n_local, batch, k, generator=g), -1)
    return n_global, n_local, targets, log_probs


def test_pair_counts_match_design():
    assert pair_counts([0, 1], list(range(8)), 2) == (2, 12)
    assert pair_counts([0, 1], list(range(12)), 2) == (2, 20)
    assert pair_counts([0], list(range(1, 8)), 2) == (1, 6)  # MoCo: key is global 1


def test_auto_alpha_is_plain_average(views):
    n_global, n_local, targets, log_probs = views
    w = pair_weights(list(range(n_global)), list(range(n_global + n_local)), n_global, "auto")
    loss = weighted_pair_loss(cross_entropy_pairs(targets, log_probs), w)
    reference = torch.stack(list(loop_pair_losses(targets, log_probs).values())).mean()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)


def test_alpha_equal_to_pair_share_is_plain_average(views):
    n_global, n_local, targets, log_probs = views
    pairs = cross_entropy_pairs(targets, log_probs)
    ids = list(range(n_global + n_local))
    auto = weighted_pair_loss(pairs, pair_weights([0, 1], ids, n_global, "auto"))
    explicit = weighted_pair_loss(pairs, pair_weights([0, 1], ids, n_global, 2 / 14))
    torch.testing.assert_close(auto, explicit)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 0.7, 1.0])
def test_alpha_moves_weight_between_pair_kinds(views, alpha):
    n_global, n_local, targets, log_probs = views
    ref = loop_pair_losses(targets, log_probs)
    l_g = sum(v for (i, j), v in ref.items() if j < n_global)
    l_l = sum(v for (i, j), v in ref.items() if j >= n_global)
    expected = alpha * l_g / 2 + (1 - alpha) * l_l / 12
    w = pair_weights([0, 1], list(range(8)), n_global, alpha)
    torch.testing.assert_close(weighted_pair_loss(cross_entropy_pairs(targets, log_probs), w), expected)
    assert w.sum().item() == pytest.approx(1.0)
    assert torch.all(w.diagonal() == 0)


def test_without_locals_only_global_pairs_count():
    w = pair_weights([0, 1], [0, 1], 2, 0.4)
    assert w.tolist() == [[0.0, 0.5], [0.5, 0.0]]
