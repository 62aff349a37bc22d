import math

import pytest
import torch
import torch.nn.functional as F

from retriever.training.losses import Objective, distance_loss, infonce_loss, positive_distance


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def plain_infonce(images: torch.Tensor, texts: torch.Tensor, scale: float) -> float:
    n = len(images)
    sims = [[scale * float(images[i] @ texts[j]) for j in range(n)] for i in range(n)]
    image_to_text = [
        -sims[i][i] + math.log(sum(math.exp(sims[i][j]) for j in range(n))) for i in range(n)
    ]
    text_to_image = [
        -sims[j][j] + math.log(sum(math.exp(sims[i][j]) for i in range(n))) for j in range(n)
    ]
    return (sum(image_to_text) / n + sum(text_to_image) / n) / 2


def plain_distance(images: torch.Tensor, texts: torch.Tensor, margin: float) -> float:
    n = len(images)
    d = [[float((images[i] - texts[j]).norm()) for j in range(n)] for i in range(n)]
    positive = sum(d[i][i] ** 2 for i in range(n)) / n
    hinges = [max(0.0, margin - d[i][j]) ** 2 for i in range(n) for j in range(n) if i != j]
    return positive + sum(hinges) / len(hinges)


def test_infonce_matches_a_plain_loop():
    images, texts = unit(7, 16, seed=0), unit(7, 16, seed=1)
    log_scale = torch.tensor(math.log(1 / 0.07))
    expected = plain_infonce(images, texts, 1 / 0.07)
    assert infonce_loss(images, texts, log_scale).item() == pytest.approx(expected, rel=1e-5)


def test_infonce_applies_exp_to_the_log_scale():
    images, texts = unit(5, 8, seed=2), unit(5, 8, seed=3)
    got = infonce_loss(images, texts, torch.tensor(math.log(3.0))).item()
    assert got == pytest.approx(plain_infonce(images, texts, 3.0), rel=1e-5)


def test_infonce_is_lower_for_aligned_than_shuffled_pairs():
    images = unit(16, 32, seed=4)
    texts = F.normalize(images + 0.1 * unit(16, 32, seed=5), dim=1)  # each text near its image
    shuffled = texts[torch.roll(torch.arange(16), 1)]
    scale = torch.tensor(math.log(1 / 0.07))
    assert infonce_loss(images, texts, scale) < infonce_loss(images, shuffled, scale) - 1.0


def test_distance_loss_matches_a_plain_loop():
    images, texts = unit(6, 4, seed=6), unit(6, 4, seed=7)  # 4 dims: some negatives within 1.2
    expected = plain_distance(images, texts, margin=1.2)
    assert distance_loss(images, texts, margin=1.2).item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0


def test_identical_pairs_have_no_positive_term():
    x = unit(6, 16, seed=8)
    assert positive_distance(x, x).item() == 0.0
    # what is left of the distance loss is exactly the hinge over negatives
    hinge_only = plain_distance(x, x, margin=1.5)
    assert distance_loss(x, x, margin=1.5).item() == pytest.approx(hinge_only, rel=1e-5)


def test_positive_distance_is_mean_squared_distance():
    images, texts = unit(5, 8, seed=9), unit(5, 8, seed=10)
    expected = sum(float((images[i] - texts[i]).norm()) ** 2 for i in range(5)) / 5
    assert positive_distance(images, texts).item() == pytest.approx(expected, rel=1e-5)


def test_the_hinge_pushes_a_close_negative_away():
    # image 0 sits on its own text; text 1 (a negative for image 0) is only 0.2 away from it
    e0, e1 = torch.eye(3)[0], torch.eye(3)[1]
    images = torch.stack([e0, e1]).requires_grad_()
    texts = torch.stack([e0, F.normalize(e0 + 0.2 * e1, dim=0)])
    distance_loss(images, texts, margin=1.0).backward()
    assert images.grad is not None
    moved = F.normalize(images[0].detach() - 0.1 * images.grad[0], dim=0)  # one descent step
    assert (moved - texts[1]).norm() > (images[0].detach() - texts[1]).norm()


def test_collapse_costs_more_than_a_separated_space():
    separated = torch.eye(4)  # pair i on axis i: positives at 0, negatives sqrt(2) apart
    collapsed = F.normalize(torch.ones(4, 4), dim=1)  # every embedding the same point
    margin = 1.2
    assert distance_loss(separated, separated, margin).item() == pytest.approx(0.0, abs=1e-6)
    assert distance_loss(collapsed, collapsed, margin).item() == pytest.approx(margin**2)


# --- shares of the loss over slices of the batch (processes, micro-batches) -------------------


@pytest.mark.parametrize("objective", [
    Objective("infonce"), Objective("infonce", distance_weight=0.5),
    Objective("distance", margin=1.2),
])
def test_shares_over_slices_add_up_to_the_whole_batch_loss_and_gradient(objective):
    images = unit(9, 4, seed=11).requires_grad_()
    texts = unit(9, 4, seed=12).requires_grad_()
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    whole = objective.terms(images, texts, scale)
    inputs = (images, texts, scale) if objective.learns_temperature else (images, texts)
    whole_grads = torch.autograd.grad(sum(whole.values()), inputs)

    shares = [objective.terms(images, texts, scale, rows)
              for rows in (slice(0, 4), slice(4, 5), slice(5, 9))]
    added = {name: sum(share[name] for share in shares) for name in whole}
    share_grads = torch.autograd.grad(sum(added.values()), inputs)

    assert set(whole) == set(objective.term_names)
    for name in whole:
        assert added[name].item() == pytest.approx(whole[name].item(), rel=1e-6)
    for got, expected in zip(share_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_a_share_sees_negatives_outside_its_slice():
    images, texts = unit(6, 8, seed=13), unit(6, 8, seed=14)
    scale = torch.tensor(math.log(1 / 0.07))
    share = infonce_loss(images, texts, scale, slice(0, 3))
    alone = infonce_loss(images[:3], texts[:3], scale) * 3 / 6  # the same rows, own negatives
    assert share.item() > alone.item()  # three more negatives per query can only add loss
