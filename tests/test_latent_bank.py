"""LatentBank: validation, cover-then-centre-crop resizing, cached adaptation and its invalidation."""

import pytest
import torch

from lib_safedenoise.core.latent_bank import LatentBank, resize_latents


def ramp(height, width, count=2, channels=4):
    """Latents whose value is the column index: resizing must keep them a ramp along the width."""
    return torch.arange(width, dtype=torch.float32).expand(count, channels, height, width).clone()


def test_same_size_is_left_alone():
    latents = torch.randn(3, 4, 8, 8)
    assert resize_latents(latents, (8, 8)) is latents


def test_cover_then_centre_crop_keeps_aspect_and_content():
    latents = ramp(8, 8)
    wide = resize_latents(latents, (8, 16))  # scale 2 to cover 16 columns, then cut the middle 8 rows
    assert wide.shape == (2, 4, 8, 16)
    assert (wide[..., 1:] - wide[..., :-1] >= 0).all()  # still a ramp along the width
    assert torch.allclose(wide[:, :, 0], wide[:, :, -1])  # rows are identical: nothing distorted vertically
    tall = resize_latents(latents, (16, 8))
    assert tall.shape == (2, 4, 16, 8)
    # covered at 16x16, then the middle 8 columns 4..11: bilinear (half-pixel centres) puts column j of the
    # crop at source column (j + 4 + 0.5) / 2 - 0.5
    expected = (torch.arange(8, dtype=torch.float32) + 4.5) / 2 - 0.5
    torch.testing.assert_close(tall[0, 0, 5], expected)
    small = resize_latents(torch.full((1, 4, 16, 16), 3.0), (8, 8))
    torch.testing.assert_close(small, torch.full((1, 4, 8, 8), 3.0))


def test_half_precision_is_resized_in_float32_and_returned_in_its_dtype():
    latents = torch.randn(2, 4, 8, 8).half()
    out = resize_latents(latents, (12, 12))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), resize_latents(latents.float(), (12, 12)), atol=2e-3, rtol=2e-3)


def test_adapted_views_are_cached_per_device_dtype_and_size():
    bank = LatentBank("b", torch.randn(3, 4, 8, 8))
    view = bank.adapted(device="cpu", dtype=torch.float32, size=(8, 8))
    assert bank.adapted(device="cpu", dtype=torch.float32, size=(8, 8)) is view
    torch.testing.assert_close(view, bank.latents)
    half = bank.adapted(device="cpu", dtype=torch.float16, size=(8, 8))
    assert half.dtype == torch.float16 and half is not view
    assert bank.adapted(device="cpu", dtype=torch.float32, size=(6, 10)).shape == (3, 4, 6, 10)
    assert len(bank._views) == 3


def test_replacing_the_latents_invalidates_every_view():
    bank = LatentBank("b", torch.zeros(2, 4, 8, 8))
    old = bank.adapted(device="cpu", dtype=torch.float32, size=(8, 8))
    bank.replace(torch.ones(5, 4, 8, 8))
    new = bank.adapted(device="cpu", dtype=torch.float32, size=(8, 8))
    assert new is not old and new.shape[0] == 5 and bank.count == 5 and bank.version == 1
    bank.release()
    assert not bank._views


@pytest.mark.parametrize("latents,match", [
    (torch.zeros(4, 8, 8), r"\[M, C, H, W\]"),
    (torch.zeros(0, 4, 8, 8), "M >= 1"),
    (torch.zeros(2, 4, 8, 8, dtype=torch.int64), "floating point"),
    (torch.tensor([float("nan")]).expand(1, 4, 8, 8), "NaN or Inf"),
])
def test_invalid_latents_are_refused_with_a_clear_message(latents, match):
    with pytest.raises(ValueError, match=match):
        LatentBank("bad", latents)
    bank = LatentBank("good", torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=match):
        bank.replace(latents)
    assert bank.count == 1  # the old latents are kept


def test_role_must_be_known():
    with pytest.raises(ValueError, match="role"):
        LatentBank("b", torch.zeros(1, 4, 8, 8), role="other")
    assert LatentBank("b", torch.zeros(1, 4, 8, 8), role="reference").role == "reference"


def test_storage_keeps_half_banks_as_they_are_and_stores_large_float32_banks_in_half(monkeypatch):
    from lib_safedenoise.core import latent_bank

    half = LatentBank("h", torch.randn(3, 4, 8, 8).bfloat16())
    assert half.adapted(device="cpu", size=(8, 8)).dtype == torch.bfloat16  # no widening: the same values
    small = LatentBank("s", torch.randn(3, 4, 8, 8))
    assert small.adapted(device="cpu", size=(8, 8)).dtype == torch.float32
    monkeypatch.setattr(latent_bank, "LARGE_BANK_BYTES", 1024)  # these 3 KB banks now count as large
    large = LatentBank("l", torch.randn(3, 4, 8, 8))
    view = large.adapted(device="cpu", size=(8, 8))
    assert view.dtype == torch.float16
    torch.testing.assert_close(view.float(), large.latents, atol=2e-3, rtol=1e-3)
    huge = LatentBank("x", torch.full((3, 4, 8, 8), 1e5))  # beyond float16's range: bfloat16 keeps it
    assert huge.adapted(device="cpu", size=(8, 8)).dtype == torch.bfloat16
    assert latent_bank.storage_dtype(large.latents, "xla") == torch.bfloat16
    large.replace(torch.full((3, 4, 8, 8), 1e5))  # the storage choice follows the new latents
    assert large.adapted(device="cpu", size=(8, 8)).dtype == torch.bfloat16
    assert large.adapted(device="cpu", size=(8, 8), dtype=torch.float32).dtype == torch.float32  # asked for
