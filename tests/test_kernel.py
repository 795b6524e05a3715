"""The streaming kernel estimators against direct float64 computations, and their robustness."""

import gc
import math
import weakref

import pytest
import torch

from lib_safedenoise.bench.speed import memory_status
from lib_safedenoise.core.chunks import Widener, float_chunks
from lib_safedenoise.core.kernel import derived, kernel_pass, log_kernel_density, unsafe_denoiser


def direct(x, sigma, bank):
    """Float64 reference: squared distances, softmax weights, log of the mean Gaussian density."""
    queries, items = x.flatten(1).double(), bank.flatten(1).double()
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1).expand(len(queries), 1)
    scores = -torch.cdist(queries, items).square() / (2 * sigma ** 2)
    mean = torch.softmax(scores, 1) @ items
    log_density = (torch.logsumexp(scores, 1) - math.log(len(items))
                   - 0.5 * items.shape[1] * torch.log(2 * math.pi * sigma[:, 0] ** 2))
    return mean.reshape(x.shape), log_density


def test_matches_direct_computation_per_image_sigma_and_any_chunking():
    generator = torch.Generator().manual_seed(0)
    x, bank = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(50, 4, 8, 8, generator=generator)
    sigma = torch.tensor([0.7, 2.0, 10.0])
    mean, log_density = direct(x, sigma, bank)
    torch.testing.assert_close(unsafe_denoiser(x, sigma, bank).double(), mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_kernel_density(x, sigma, bank).double(), log_density, rtol=1e-6, atol=1e-3)
    for rows in (1, 7, 50):
        streamed = kernel_pass(x, sigma, bank, chunk_rows=rows)
        torch.testing.assert_close(streamed.mean.double(), mean.flatten(1), rtol=1e-4, atol=1e-4)
    expected_min = torch.cdist(x.flatten(1).double(), bank.flatten(1).double()).square().amin(1)
    torch.testing.assert_close(streamed.min_sq_distance.double(), expected_min, rtol=1e-4, atol=1e-3)


def test_each_image_is_independent_of_the_rest_of_the_batch():
    generator = torch.Generator().manual_seed(1)
    x, bank = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(30, 4, 8, 8, generator=generator)
    together = unsafe_denoiser(x, 1.5, bank)
    alone = torch.cat([unsafe_denoiser(x[i:i + 1], 1.5, bank) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_huge_distances_in_sd3_sized_latents_stay_exact():
    """D = 16 x 128 x 128 = 262,144 and squared distances ~1e7: a plain exp underflows for every item."""
    generator = torch.Generator().manual_seed(2)
    bank = torch.randn(3, 16, 128, 128, generator=generator)
    x = bank[1:2] + 6.0 * torch.randn(1, 16, 128, 128, generator=generator)
    assert torch.exp(-torch.cdist(x.flatten(1), bank.flatten(1)).square() / 2).sum() == 0  # the naive way fails
    mean = unsafe_denoiser(x, 1.0, bank)
    torch.testing.assert_close(mean, bank[1:2])  # the nearest item takes all the weight
    expected = direct(x, 1.0, bank)[1]
    assert torch.isfinite(log_kernel_density(x, 1.0, bank)).all()
    torch.testing.assert_close(log_kernel_density(x, 1.0, bank).double(), expected, rtol=1e-6, atol=0)


def test_single_item_bank():
    generator = torch.Generator().manual_seed(3)
    item, x = torch.randn(1, 4, 6, 6, generator=generator), torch.randn(2, 4, 6, 6, generator=generator)
    torch.testing.assert_close(unsafe_denoiser(x, 0.3, item), item.expand(2, -1, -1, -1))
    expected = -(x - item).flatten(1).square().sum(1) / (2 * 0.09) - 0.5 * 144 * math.log(2 * math.pi * 0.09)
    torch.testing.assert_close(log_kernel_density(x, 0.3, item), expected, rtol=1e-5, atol=1e-3)


def test_duplicate_items_change_nothing_when_every_item_is_duplicated():
    generator = torch.Generator().manual_seed(4)
    x, bank = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(10, 4, 8, 8, generator=generator)
    doubled = torch.cat([bank, bank])
    torch.testing.assert_close(unsafe_denoiser(x, 2.0, doubled), unsafe_denoiser(x, 2.0, bank), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_kernel_density(x, 2.0, doubled), log_kernel_density(x, 2.0, bank), rtol=1e-6, atol=1e-4)
    # a duplicated item counts twice
    weighted = unsafe_denoiser(x, 2.0, torch.cat([bank, bank[:1]]))
    expected = direct(x, 2.0, torch.cat([bank, bank[:1]]))[0]
    torch.testing.assert_close(weighted.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_banks_accumulate_in_float32(dtype):
    generator = torch.Generator().manual_seed(5)
    x, bank = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(200, 4, 16, 16, generator=generator)
    low = bank.to(dtype)
    mean, log_density = direct(x, 8.0, low.float())
    torch.testing.assert_close(unsafe_denoiser(x, 8.0, low).double(), mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_kernel_density(x, 8.0, low).double(), log_density, rtol=1e-6, atol=1e-2)
    assert unsafe_denoiser(x.to(dtype), 8.0, low).dtype == dtype


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 4, 8, 8\).*\(5, 3, 8, 8\)"):
        unsafe_denoiser(torch.zeros(1, 4, 8, 8), 1.0, torch.zeros(5, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(1, 4, 8, 8\).*\(5, 4, 8, 9\)"):
        log_kernel_density(torch.zeros(1, 4, 8, 8), 1.0, torch.zeros(5, 4, 8, 9))
    with pytest.raises(ValueError, match="per-image values"):
        unsafe_denoiser(torch.zeros(2, 4, 8, 8), torch.ones(3), torch.zeros(5, 4, 8, 8))


def test_full_passes_report_what_they_read_and_reading_collects_every_pass():
    from lib_safedenoise.core.kernel import reading

    generator = torch.Generator().manual_seed(6)
    bank = torch.randn(40, 4, 8, 8, generator=generator).half()
    x = bank[:2].float() + 0.01 * torch.randn(2, 4, 8, 8, generator=generator)
    with reading() as records:
        stats = kernel_pass(x, 0.1, bank)  # peaked: the second sweep gathers the 2 nearest items only
        kernel_pass(x, 100.0, bank)  # flat: every item weighs, the second sweep reads the bank again
    row = 4 * 8 * 8 * 2
    assert stats.bound == "full" and stats.kept == 40 and (stats.certified_error == 0).all()
    assert [r.bytes_read for r in records] == [(40 + 2) * row, 2 * 40 * row]
    assert all(r.bank == id(bank) and r.count == 40 and r.certified_error == [0.0, 0.0] for r in records)


def test_widener_reuses_one_buffer_and_leaves_float32_rows_alone():
    bank = torch.randn(10, 4, 3, 3).half()
    chunks = [(start, chunk.data_ptr(), chunk.clone()) for start, chunk in float_chunks(bank, 4)]
    assert [start for start, _, _ in chunks] == [0, 4, 8]
    assert len({pointer for _, pointer, _ in chunks}) == 1  # every chunk written into the same buffer
    assert torch.equal(torch.cat([chunk for _, _, chunk in chunks]), bank.float())
    rows = torch.randn(3, 5)
    assert Widener()(rows) is rows


@pytest.mark.skipif(memory_status() is None, reason="resident memory is read from Linux's /proc")
def test_sweeps_over_a_half_precision_bank_keep_no_memory():
    """Widening every chunk into a fresh tensor left the CPU heap holding about twice the bank after each
    sweep (glibc keeps the freed chunks); the passes must give back what they take."""
    bank = torch.empty(8000, 4, 64, 64, dtype=torch.float16)  # 262 MB
    for part in bank.split(1000):
        part.normal_()
    query = bank[:1].float() + torch.randn(1, 4, 64, 64)
    before = memory_status()["rss"]
    for bandwidth in (3.0, 50.0, 0.5, 3.0):
        kernel_pass(query, bandwidth, bank)
    # measured: 1.8 times the bank before the fix; now one chunk buffer and the cached norms (about 16 MB)
    assert memory_status()["rss"] - before < bank.numel() * bank.element_size() / 4


def test_values_derived_from_an_edited_bank_are_recomputed_and_the_old_ones_freed():
    bank = torch.ones(4, 2)
    first = derived(bank, ("probe",), lambda: bank.sum(0))
    old = weakref.ref(first)
    bank.mul_(2)  # an in-place edit bumps the tensor's version
    second = derived(bank, ("probe",), lambda: bank.sum(0))
    assert first.tolist() == [4.0, 4.0] and second.tolist() == [8.0, 8.0]
    del first
    gc.collect()
    assert old() is None  # the value of the data before the edit is not kept beside the new one
