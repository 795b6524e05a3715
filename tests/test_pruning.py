"""Certified pruning of the kernel sums: pruned results equal a float64 full computation within the
certified bound on adversarial banks, the full pass runs where bounds cannot pay, the index stays small,
and a bank held in CPU memory is read only where needed."""

import pytest
import torch
import torch.nn.functional as F

from lib_safedenoise.core import pruning as prune
from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.kernel import kernel_pass, pruning, pruning_index, reading
from lib_safedenoise.core.latent_bank import HostedBank, LatentBank
from lib_safedenoise.core.modes import Step, _log_unsafe_at_replacement, channel_normalized, smoothed_kernel

SHAPE = (4, 16, 16)
SMALL_BANK_LIMIT = 512
"""These tests prune banks of this size or more (the product's ``pruning.MIN_ITEMS`` is far larger)."""


@pytest.fixture(autouse=True)
def prune_small_banks():
    with pruning(prune.DEFAULT_TOLERANCE, min_items=SMALL_BANK_LIMIT):
        yield


def test_the_product_prunes_only_banks_of_min_items_or_more():
    generator = torch.Generator().manual_seed(9)
    bank = clustered(2048, generator)
    with pruning(prune.DEFAULT_TOLERANCE, min_items=prune.MIN_ITEMS):
        assert kernel_pass(bank[:1] + 0.01, 0.05, bank).bound == "full"
    assert kernel_pass(bank[:1] + 0.01, 0.05, bank).bound != "full"
    with pytest.raises(ValueError, match="min_items"):
        with pruning(1e-4, min_items=0):
            pass


def direct(x, h, bank, squared=True):
    """Float64 kernel over every item: (log-sum-exp of the scores, weighted mean)."""
    queries, items = x.flatten(1).double(), bank.flatten(1).double()
    distance = torch.cdist(queries, items)
    scores = -(distance.square() if squared else distance) / (2 * h ** 2)
    return torch.logsumexp(scores, 1), torch.softmax(scores, 1) @ items


def clustered(count, generator, centres=32, spread=0.3, smooth=False):
    """``count`` items around ``centres`` centres; ``smooth``: constant over 4x4 blocks (as pooled)."""
    size = (centres, SHAPE[0], SHAPE[1] // 4, SHAPE[2] // 4) if smooth else (centres, *SHAPE)
    means = torch.randn(size, generator=generator)
    labels = torch.arange(count) % centres
    items = means[labels] + spread * torch.randn(count, *size[1:], generator=generator)
    return F.interpolate(items, scale_factor=4, mode="nearest") if smooth else items


def assert_within_certificate(x, h, bank, result, squared=True):
    log_sum, mean = direct(x, h, bank.float(), squared)
    slack = 1e-4 + 1e-7 * log_sum.abs()  # float32 rounding of the kept items' own scores and sums
    assert ((log_sum - result.log_weight_sum.double()).abs() <= result.certified_error.double() + slack).all()
    error = (mean - result.mean.double()).norm(dim=1)
    assert (error <= result.denoiser_error.double() + 1e-4 * mean.norm(dim=1)).all()


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_low_noise_prunes_and_stays_within_the_certified_error(smooth, dtype):
    generator = torch.Generator().manual_seed(0)
    bank = clustered(2048, generator, smooth=smooth).to(dtype)
    x = bank[5:7].float() + 0.2 * torch.randn(2, *SHAPE, generator=generator)
    result = kernel_pass(x, 0.5, bank)
    assert result.bound != "full" and result.kept * prune.PAY_SHARE <= len(bank)
    assert (result.certified_error <= prune.DEFAULT_TOLERANCE).all()
    assert result.bytes_read < bank.numel() * bank.element_size() / 2
    assert_within_certificate(x, 0.5, bank, result)
    with pruning(None):
        full = kernel_pass(x, 0.5, bank)
    assert full.bound == "full" and full.kept == len(bank)
    torch.testing.assert_close(result.mean, full.mean, rtol=1e-3, atol=1e-3)


def test_a_looser_tolerance_skips_real_weight_and_certifies_it():
    """Blockwise-constant items make the pooled bound exact, so a loose tolerance skips items of measurable
    weight: the result then differs from the full one, by no more than the certified error."""
    generator = torch.Generator().manual_seed(1)
    bank = clustered(1024, generator, smooth=True)
    x = bank[:1].clone()
    with pruning(1e-4):
        tight = kernel_pass(x, 4.5, bank)
    with pruning(0.3):
        loose = kernel_pass(x, 4.5, bank)
    assert loose.bound != "full" and loose.kept < tight.kept
    log_sum, mean = direct(x, 4.5, bank)
    missed = float(log_sum - loose.log_weight_sum.double())
    assert 1e-3 < missed <= float(loose.certified_error) <= 0.3
    assert_within_certificate(x, 4.5, bank, loose)
    assert_within_certificate(x, 4.5, bank, tight)


def test_equidistant_items_cannot_be_pruned_so_the_full_pass_runs():
    generator = torch.Generator().manual_seed(2)
    directions = torch.randn(1024, *SHAPE, generator=generator)
    bank = 5 * directions / directions.flatten(1).norm(dim=1)[:, None, None, None]  # all at distance 5 from 0
    x = torch.zeros(1, *SHAPE)
    result = kernel_pass(x, 1.0, bank)
    assert result.bound == "full" and result.kept == 1024
    assert_within_certificate(x, 1.0, bank, result)


def test_duplicated_items_are_kept_or_skipped_together():
    generator = torch.Generator().manual_seed(3)
    distinct = clustered(128, generator, centres=16)
    bank = distinct.repeat(8, 1, 1, 1)  # every item 8 times
    x = distinct[:1] + 0.1 * torch.randn(1, *SHAPE, generator=generator)
    result = kernel_pass(x, 0.4, bank)
    assert result.bound != "full" and result.kept % 8 == 0
    assert_within_certificate(x, 0.4, bank, result)


def test_one_far_outlier_is_skipped_and_its_distance_enters_the_denoiser_bound():
    generator = torch.Generator().manual_seed(4)
    bank = clustered(1024, generator)
    bank[-1] = 1e3  # far from everything: skipped, but the bound must allow for its distance
    x = bank[:1] + 0.2 * torch.randn(1, *SHAPE, generator=generator)
    with pruning(0.05):
        result = kernel_pass(x, 0.5, bank)
    assert result.bound != "full"
    assert_within_certificate(x, 0.5, bank, result)
    assert float(result.denoiser_error) >= float(result.certified_error) * 1e3 * 32  # the outlier's norm


def test_the_flat_released_kernel_falls_back_to_the_full_pass():
    generator = torch.Generator().manual_seed(5)
    bank = channel_normalized(clustered(1024, generator))
    x = torch.randn(2, *SHAPE, generator=generator)
    result = kernel_pass(x, 3.15, bank, squared=False)
    assert result.bound == "full"
    assert_within_certificate(x, 3.15, bank, result, squared=False)


def test_small_banks_are_never_pruned_and_bad_tolerances_are_refused():
    generator = torch.Generator().manual_seed(6)
    bank = clustered(SMALL_BANK_LIMIT - 1, generator)
    assert kernel_pass(bank[:1], 0.1, bank).bound == "full"
    for bad in (0.0, 1.0, -1e-4):
        with pytest.raises(ValueError, match="tolerance"):
            with pruning(bad):
                pass


def test_the_index_adds_at_most_a_fifth_of_the_float16_bank():
    generator = torch.Generator().manual_seed(7)
    bank = clustered(2048, generator).half()
    index = pruning_index(bank, torch.device("cpu"))
    assert index.nbytes() <= 0.2 * bank.numel() * 2
    assert index.pooled is not None and index.centroids.dtype == torch.float16
    # every bound is a true lower bound on the squared distance: far queries, and queries near items
    x = torch.cat([torch.randn(3, *SHAPE, generator=generator) * 2,
                   bank[:3].float() + 0.05 * torch.randn(3, *SHAPE, generator=generator)])
    exact = torch.cdist(x.flatten(1).double(), bank.flatten(1).double()).square()
    query_sq = x.flatten(1).square().sum(1)
    cluster = index.cluster_lower_bound(x.flatten(1), query_sq).double()
    assert (cluster <= exact).all() and (cluster > 0).any()
    assert (index.pooled_lower_bound(x.flatten(1), query_sq, SHAPE).double() <= exact).all()


def test_where_pruning_failed_is_remembered_per_kind_of_query():
    """An average of many items (the replacement ``E_s`` of ``posterior-replace``) is about equally far from
    every cluster, so its pass cannot prune; that failure skips the bounds for later queries of its kind at
    that bandwidth or wider, but not for the noisy latent, which sits near a banked item."""
    generator = torch.Generator().manual_seed(13)
    bank = LatentBank("kinds", clustered(2048, generator)).adapted(device="cpu", size=SHAPE[-2:])
    average = bank[:1024].mean(0, keepdim=True)
    near_item = bank[:1] + 0.01
    assert kernel_pass(average, 0.05, bank, query="replacement").bound == "full"
    assert pruning_index(bank, torch.device("cpu")).failed == {(True, "replacement"): pytest.approx(0.05)}
    assert kernel_pass(near_item, 0.05, bank, query="noisy").bound != "full"
    assert kernel_pass(near_item, 0.05, bank, query="replacement").bound == "full"  # remembered: not tried


def test_the_index_is_built_once_per_bank_and_outlives_each_generation():
    """``release`` (end of a generation) drops the adapted views, not their index: the next generation's
    view reuses it (with a fresh ``failed`` record); editing the bank builds a new one."""
    generator = torch.Generator().manual_seed(12)
    bank = LatentBank("kept", clustered(1024, generator))
    size, cpu = (8, 8), torch.device("cpu")  # a resized view: a new tensor per generation
    first = pruning_index(bank.adapted(device="cpu", size=size), cpu)
    first.failed[(True, "noisy")] = 0.5
    bank.release()
    again = pruning_index(bank.adapted(device="cpu", size=size), cpu)
    assert again.centroids.data_ptr() == first.centroids.data_ptr() and again.failed == {}
    bank.replace(clustered(1024, generator))
    rebuilt = pruning_index(bank.adapted(device="cpu", size=size), cpu)
    view = bank.adapted(device="cpu", size=size)
    torch.testing.assert_close(rebuilt.sq_norms, view.flatten(1).square().sum(1))
    edited = bank.adapted(device="cpu", size=(4, 4)).mul_(2)  # edited in place: no longer the bank's view
    assert pruning_index(edited, cpu).sq_norms.data_ptr() != rebuilt.sq_norms.data_ptr()
    bank.release()
    assert pruning_index(bank.adapted(device="cpu", size=(4, 4)), cpu).sq_norms.max() < edited.square().sum(
        (1, 2, 3)).max() / 3  # the edited copy's index was not kept for the bank


def test_an_index_that_rules_the_bank_out_skips_reading_it_and_changes_no_output():
    """The default mode asks the index first: an ordinary image's posterior, bounded from the centroids
    alone, stays below the threshold, so the bank is not read; one heading for the bank fires as before."""
    generator = torch.Generator().manual_seed(13)
    negation = LatentBank("neg", clustered(1024, generator))
    reference = LatentBank("ref", clustered(1024, generator), role="reference")
    index_bytes = pruning_index(negation.adapted(device="cpu", size=SHAPE[1:]), torch.device("cpu")).cluster_bytes()
    for anchor, fires in ((reference.latents[5:6], False), (negation.latents[3:4], True)):
        x0 = anchor + 0.1 * torch.randn(1, *SHAPE, generator=generator)
        steps = [(x0 + 0.05 * torch.randn(1, *SHAPE, generator=generator),
                  x0 + sigma * torch.randn(1, *SHAPE, generator=generator), sigma) for sigma in (2.0, 1.0, 0.5, 0.2)]
        outputs, records = {}, {}
        for tolerance in (prune.DEFAULT_TOLERANCE, None):
            engine = SafeDenoiser([(negation, 1.0)], reference=reference)
            with pruning(tolerance):
                outputs[tolerance] = [engine.correct_x0(x0_hat, x, sigma, i, len(steps))
                                      for i, (x0_hat, x, sigma) in enumerate(steps)]
            records[tolerance] = engine.report.images[0]
        assert [r.fired for r in records[None]] == [fires] * len(steps)
        assert [r.fired for r in records[prune.DEFAULT_TOLERANCE]] == [fires] * len(steps)
        for pruned, full in zip(outputs[prune.DEFAULT_TOLERANCE], outputs[None]):
            torch.testing.assert_close(pruned, full, rtol=1e-4, atol=1e-4)
        read = [r.banks[0]["bytes_read"] for r in records[prune.DEFAULT_TOLERANCE]]
        if fires:
            assert all(value > index_bytes for value in read)
        else:  # the centroids only; the reported posterior is a bound above the exact one
            assert read == [index_bytes] * len(steps)
            assert all(bound.beta >= exact.beta for bound, exact in zip(records[prune.DEFAULT_TOLERANCE],
                                                                        records[None]))


def test_the_replacement_is_judged_from_the_index_where_that_proves_it_safe():
    """``posterior-replace`` judges its replacement ``E_s`` against the negation bank; as the noise falls
    ``E_s`` nears a reference item, which the centroids alone prove safe (one read of them, no pass over the
    bank); the bound stands in only where it certifies ``pi(E_s)`` within the tolerance."""
    generator = torch.Generator().manual_seed(14)
    negation = clustered(1024, generator).flatten(1)
    reference = clustered(1024, generator).flatten(1)
    spread, tau, options = 0.09, torch.tensor([0.2]), {"prior_odds": 1.0, "temperature": 1.0}
    near_reference = reference[:1] + 0.05 * torch.randn(1, reference.shape[1], generator=generator)
    for target, proved in ((near_reference, True), (negation[:1], False)):
        step = Step(target, target, tau, (1, *SHAPE), query="replacement")
        log_safe = smoothed_kernel(step, reference.reshape(-1, *SHAPE), spread)[0]
        with reading() as records:
            got = _log_unsafe_at_replacement(step, negation.reshape(-1, *SHAPE), spread, log_safe, options)
        with pruning(None):
            exact = smoothed_kernel(step, negation.reshape(-1, *SHAPE), spread)[0]
        if proved:
            assert [r.bound for r in records] == ["ceiling"] and got >= exact - 1e-3
            assert torch.sigmoid(got - log_safe) <= prune.DEFAULT_TOLERANCE
        else:
            assert [r.bound for r in records][0] == "ceiling" and len(records) == 2
            torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-3)


def test_the_pooled_bound_is_tight_for_blockwise_constant_latents():
    generator = torch.Generator().manual_seed(10)
    bank = clustered(1024, generator, smooth=True)
    index = pruning_index(bank, torch.device("cpu"))
    x = F.interpolate(torch.randn(2, SHAPE[0], SHAPE[1] // 4, SHAPE[2] // 4, generator=generator), scale_factor=4)
    exact = torch.cdist(x.flatten(1).double(), bank.flatten(1).double()).square()
    bound = index.pooled_lower_bound(x.flatten(1), x.flatten(1).square().sum(1), SHAPE).double()
    assert (bound <= exact).all() and (bound >= 0.999 * exact - 1e-2).all()  # Jensen holds with equality


def test_a_bank_over_the_memory_budget_stays_in_cpu_memory_and_only_its_survivors_are_fetched():
    generator = torch.Generator().manual_seed(8)
    latents = clustered(2048, generator).half()
    bank = LatentBank("big", latents)
    size = latents.shape[-2:]
    assert isinstance(bank.hosted(device="cpu", size=size, memory_budget=None), torch.Tensor)
    hosted = bank.hosted(device="cpu", size=size, memory_budget=1 << 20)  # 1 MB: the 2 MB bank does not fit
    assert isinstance(hosted, HostedBank) and hosted.nbytes() == latents.numel() * 2
    x = latents[10:11].float() + 0.2 * torch.randn(1, *SHAPE, generator=generator)
    pruning_index(hosted, torch.device("cpu"))  # built once (one-off passes over the bank)
    result = kernel_pass(x, 0.5, hosted)
    on_device = kernel_pass(x, 0.5, latents)
    torch.testing.assert_close(result.mean, on_device.mean)
    assert result.bound != "full" and result.bytes_read < hosted.nbytes() / 2
    assert_within_certificate(x, 0.5, latents, result)
    with pruning(None):  # a full pass streams every row through, chunk by chunk
        full = kernel_pass(x, 0.5, hosted)
    assert full.bytes_read >= hosted.nbytes()
    torch.testing.assert_close(full.mean, result.mean, rtol=1e-3, atol=1e-3)


def test_the_engine_reports_bytes_read_and_certified_error_per_bank():
    generator = torch.Generator().manual_seed(9)
    negation = LatentBank("neg", clustered(1024, generator))
    reference = LatentBank("ref", clustered(1024, generator), role="reference")
    x0_hat = negation.latents[:2] + 0.05 * torch.randn(2, *SHAPE, generator=generator)
    x = x0_hat + 0.2 * torch.randn(2, *SHAPE, generator=generator)
    bank_bytes = negation.latents.numel() * 4
    records = {}
    for tolerance in (prune.DEFAULT_TOLERANCE, None):
        engine = SafeDenoiser([(negation, 1.0)], reference=reference)
        with pruning(tolerance):
            engine.correct_x0(x0_hat, x, 0.2, 10, 20)
        records[tolerance] = engine.report.images[0][-1]
    pruned, full = records[prune.DEFAULT_TOLERANCE], records[None]
    # the default mode reads each bank twice (at x and at the prediction): pruned, well under one read each
    assert 0 < pruned.banks[0]["bytes_read"] < bank_bytes
    assert 0 <= pruned.banks[0]["certified_error"] <= prune.DEFAULT_TOLERANCE
    assert pruned.reference["name"] == "ref" and pruned.reference["bytes_read"] > 0  # far: equidistant, full
    assert full.banks[0]["bytes_read"] >= 2 * bank_bytes and full.banks[0]["certified_error"] == 0
    assert full.reference["bytes_read"] >= 2 * bank_bytes
    assert pruned.beta == pytest.approx(full.beta, rel=1e-3, abs=1e-6)
