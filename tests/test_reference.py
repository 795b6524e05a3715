"""A reference nobody curated: the items the negation banks claim, and the engine dropping them."""

import math

import pytest
import torch

from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.reference import claimed


def on_a_line(*positions, offsets=None):
    """Items ``[M, 4, 1, 1]`` at ``positions`` along the first axis (``offsets`` along the second)."""
    items = torch.zeros(len(positions), 4, 1, 1)
    items[:, 0, 0, 0] = torch.tensor(positions, dtype=torch.float32)
    if offsets is not None:
        items[:, 1, 0, 0] = torch.tensor(offsets, dtype=torch.float32)
    return items


def clusters(seed=0):
    """A reference of 30 ordinary items and 5 of the concept (around another centre), and a bank of 40
    items of the concept."""
    generator = torch.Generator().manual_seed(seed)
    ordinary, concept = torch.zeros(4, 8, 8), torch.full((4, 8, 8), 1.5)
    reference = torch.cat([ordinary + torch.randn(30, 4, 8, 8, generator=generator),
                           concept + torch.randn(5, 4, 8, 8, generator=generator)])
    return reference, concept + torch.randn(40, 4, 8, 8, generator=generator)


def test_the_bank_claims_the_concept_items_of_the_reference_and_nothing_else():
    reference, bank = clusters()
    spread = 1.0  # the items' spread around their centres
    assert claimed(reference, [bank], spread_sq=spread).tolist() == [False] * 30 + [True] * 5


def test_the_claim_is_the_leave_one_out_posterior_at_the_clean_item():
    """log(prior) + log p_u(r) - log p_s^{-r}(r), each a mean of N(r; item, s^2 I): restated on a line.
    Bank at 0; reference items at 1.5 and 4 (and 4 more around 4): the item at 1.5 is claimed exactly when
    the prior odds exceed p_s / p_u there."""
    reference = on_a_line(1.5, 4.0, 4.0, 4.0, 4.0, 4.0, offsets=[0, 0.1, -0.1, 0.2, -0.2, 0.0])
    bank = on_a_line(0.0)
    spread = 1.0
    log_u = -1.5 ** 2 / 2
    log_s = math.log(sum(math.exp(-((2.5 ** 2 + o ** 2) / 2)) for o in (0.1, -0.1, 0.2, -0.2, 0.0)) / 5)
    odds = math.exp(log_s - log_u)  # the prior odds at which the item at 1.5 is on the fence
    assert claimed(reference, [bank], spread_sq=spread, prior_odds=odds * 1.01).tolist() == [True] + [False] * 5
    assert claimed(reference, [bank], spread_sq=spread, prior_odds=odds * 0.99).tolist() == [False] * 6


def test_a_second_round_drops_the_items_that_only_claimed_ones_supported():
    """Bank at 0; reference at 1 (clearly the bank's), 2 (nearer the item at 1 than anything else but the
    bank) and three ordinary items at 6: the first round claims 1 only; without it, 2 is the bank's too."""
    reference = on_a_line(1.0, 2.0, 6.0, 6.0, 6.0, offsets=[0, 0, 0.1, 0.0, -0.1])
    bank = on_a_line(0.0)
    assert claimed(reference, [bank], spread_sq=1.0, rounds=1).tolist() == [True, False, False, False, False]
    assert claimed(reference, [bank], spread_sq=1.0).tolist() == [True, True, False, False, False]


def test_the_union_of_the_banks_claims_and_banks_are_resized_to_the_reference():
    reference = on_a_line(0.0, 5.0, 7.0, 7.0, 7.0, offsets=[0, 0, 0.1, 0.0, -0.1])
    first, second = on_a_line(0.0), on_a_line(5.0)
    assert claimed(reference, [first], spread_sq=1.0).tolist() == [True, False, False, False, False]
    assert claimed(reference, [first, second], spread_sq=1.0).tolist() == [True, True, False, False, False]
    wide = second.expand(1, 4, 2, 3).clone()  # a constant latent: any resize of it is the same constant
    assert claimed(reference, [first, wide], spread_sq=1.0).tolist() == [True, True, False, False, False]


def test_bad_input_is_refused_with_what_is_wrong():
    reference = torch.zeros(3, 4, 2, 2)
    with pytest.raises(ValueError, match="same channel count"):
        claimed(reference, [torch.zeros(2, 3, 2, 2)], spread_sq=1.0)
    with pytest.raises(ValueError, match="at least one negation bank"):
        claimed(reference, [], spread_sq=1.0)
    with pytest.raises(ValueError, match="spread_sq"):
        claimed(reference, [torch.zeros(2, 4, 2, 2)], spread_sq=0.0)
    with pytest.raises(ValueError, match="prior_odds"):
        claimed(reference, [torch.zeros(2, 4, 2, 2)], spread_sq=1.0, prior_odds=-1.0)
    assert claimed(torch.zeros(1, 4, 2, 2), [torch.zeros(2, 4, 2, 2)], spread_sq=1.0).tolist() == [False]


def test_the_engine_drops_the_claimed_items_once_and_corrects_with_the_rest():
    latents, bank_latents = clusters(seed=1)
    bank = LatentBank("concept", bank_latents)
    given = LatentBank("own-samples", latents, role="reference")
    engine = SafeDenoiser([(bank, 1.0)], reference=given)
    assert engine.reference_claimed == 5 and engine.reference.count == 30
    torch.testing.assert_close(engine.reference.latents, latents[:30])
    assert engine.describe()["reference"] == "own-samples"
    assert SafeDenoiser([(bank, 1.0)], reference=given).reference is engine.reference  # filtered once

    curated = SafeDenoiser([(bank, 1.0)], reference=LatentBank("curated", latents[:30].clone(), role="reference"))
    assert curated.reference_claimed == 0
    generator = torch.Generator().manual_seed(2)
    x0_hat = bank_latents[:2] + 0.2 * torch.randn(2, 4, 8, 8, generator=generator)
    x = x0_hat + 1.5 * torch.randn(2, 4, 8, 8, generator=generator)
    corrected = engine.correct_x0(x0_hat, x, 1.5, 0, 10)
    torch.testing.assert_close(corrected, curated.correct_x0(x0_hat, x, 1.5, 0, 10))
    assert not torch.allclose(corrected, x0_hat)


def test_a_reference_the_bank_claims_entirely_leaves_the_mode_its_background():
    _, bank_latents = clusters()
    bank = LatentBank("concept", bank_latents)
    engine = SafeDenoiser([(bank, 1.0)], reference=LatentBank("same", bank_latents[:10].clone(), role="reference"))
    assert engine.reference is None and engine.reference_claimed == 10
    assert engine.describe()["reference"] is None


def test_a_bank_at_strength_zero_claims_nothing_and_edits_are_seen():
    latents, bank_latents = clusters(seed=3)
    bank = LatentBank("concept", bank_latents)
    given = LatentBank("own-samples", latents, role="reference")
    assert SafeDenoiser([(bank, 0.0)], reference=given).reference is given
    assert SafeDenoiser([(bank, 1.0)], reference=given).reference_claimed == 5
    given.replace(latents[:30].clone())
    assert SafeDenoiser([(bank, 1.0)], reference=given).reference is given


def test_banks_read_from_files_are_filtered_once_per_content():
    """Banks known by the hash of their data (as the WebUI loads them afresh per generation) reuse the claim
    made for that content: the hash stands for the data, so a reference loaded again with the same hash keeps
    the first claim's items even were its rows (here: deliberately) reordered; once edited, a bank's hash no
    longer describes it and it is judged afresh."""
    latents, bank_latents = clusters(seed=4)

    def loaded(rows):
        return (LatentBank("concept", bank_latents.clone(), metadata={"hash_sha256": "0xaa"}),
                LatentBank("own", latents[rows].clone(), role="reference", metadata={"hash_sha256": "0xbb"}))

    bank, given = loaded(torch.arange(35))
    assert SafeDenoiser([(bank, 1.0)], reference=given).reference_claimed == 5
    reordered = torch.cat([torch.arange(30, 35), torch.arange(30)])  # the concept items first
    bank, given = loaded(reordered)
    torch.testing.assert_close(SafeDenoiser([(bank, 1.0)], reference=given).reference.latents,
                               latents[reordered][:30])  # the first claim's mask: the last 5 rows dropped
    given.replace(given.latents.clone())  # edited: judged on its data
    torch.testing.assert_close(SafeDenoiser([(bank, 1.0)], reference=given).reference.latents, latents[:30])
    unhashed = LatentBank("own", latents[reordered].clone(), role="reference")
    torch.testing.assert_close(SafeDenoiser([(bank, 1.0)], reference=unhashed).reference.latents, latents[:30])
