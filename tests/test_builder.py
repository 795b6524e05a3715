"""The bank builder on real images: per-file reports, image modes, EXIF, duplicates, atomicity, append."""

import hashlib
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from lib_safedenoise.banks import fileformat, builder
from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.banks.builder import BuildCancelled, EmptyBuildError
from lib_safedenoise.banks.encoders import TestEncoder
from tests.images import write_broken, write_digits, write_exif_rotated, write_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return folder, write_photos(folder)


def status_by_name(report):
    return {r.source.rsplit("/", 1)[-1]: r.status for r in report.files}


def test_folder_build_reports_every_file_and_keeps_going(tmp_path, photos):
    folder, paths = photos
    source = tmp_path / "in"
    shutil.copytree(folder, source)
    broken = write_broken(source)
    shutil.copy(source / "astronaut.png", source / "astronaut_again.png")
    (source / "captions.txt").write_text("a cat")
    (source / ".DS_Store").write_bytes(b"\x00\x01")
    report = builder.build_bank(source, TestEncoder(64), tmp_path / "bank.safetensors", batch_size=4)
    statuses = status_by_name(report)
    assert {name: statuses[name] for name in broken} == {name: status for name, (_, status) in broken.items()}
    assert statuses["astronaut_again.png"] == "duplicate" and statuses["astronaut.png"] == "added"
    assert statuses["captions.txt"] == "ignored" and ".DS_Store" not in statuses
    assert all(statuses[name] == "added" for name in paths)
    meta = fileformat.read_metadata(tmp_path / "bank.safetensors")
    added = [r for r in report.files if r.status == "added"]
    assert meta.count == len(paths) == report.bank_count
    assert list(meta.source_sha256) == [hashlib.sha256(open(r.source, "rb").read()).hexdigest() for r in added]
    assert meta.resize_policy == builder.RESIZE_POLICY and meta.source_resolution == "64x64"
    assert fileformat.verify_bank(tmp_path / "bank.safetensors", space_id="test").ok


def test_pixels_follow_the_image_policy(photos):
    _, paths = photos
    size = (48, 64)
    grey, _ = builder.read_image(paths["camera_grey.png"])
    deep, _ = builder.read_image(paths["camera_16bit.png"])
    assert deep.mode.startswith("I")
    grey_px, deep_px = builder.to_pixels(grey, size, 3), builder.to_pixels(deep, size, 3)
    assert deep_px.shape == (3, 48, 64) and np.abs(grey_px - deep_px).max() <= 2 / 127.5
    cmyk, _ = builder.read_image(paths["astronaut_cmyk.jpg"])
    assert cmyk.mode == "CMYK"
    expected = np.asarray(cmyk.convert("RGB").resize((64, 64), Image.Resampling.LANCZOS), np.float32) / 127.5 - 1
    assert np.allclose(builder.to_pixels(cmyk, (64, 64), 3), expected.transpose(2, 0, 1))
    palette, _ = builder.read_image(paths["chelsea_palette.png"])
    assert palette.mode == "P" and builder.to_pixels(palette, size, 3).shape == (3, 48, 64)
    clear = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    assert np.all(builder.to_pixels(clear, (8, 8), 3) == 1.0)  # transparency is composited over white
    wide = Image.fromarray(skdata.coffee())  # 600x400: cover-centre-crop keeps the middle 400x400
    fitted = builder.to_pixels(wide, (32, 32), 3)

    def error_to(box):
        crop = wide.crop(box).resize((32, 32), Image.Resampling.LANCZOS)
        return np.abs(fitted - (np.asarray(crop, np.float32).transpose(2, 0, 1) / 127.5 - 1)).mean() * 127.5

    assert error_to((100, 0, 500, 400)) < 0.5 < 10 < error_to((0, 0, 400, 400))
    assert builder.to_pixels(grey, (8, 8), 1).shape == (1, 8, 8)


def test_exif_orientation_is_applied(tmp_path):
    path, upright = write_exif_rotated(tmp_path / "rotated.jpg")
    image, _ = builder.read_image(path)
    assert image.size == (60, 120) == upright.size
    with Image.open(path) as raw:
        assert raw.size == (120, 60)
        assert np.array_equal(np.asarray(image), np.asarray(raw.transpose(Image.Transpose.ROTATE_270)))


def test_in_memory_images_and_upload_bytes(tmp_path, photos):
    _, paths = photos
    chelsea = Image.fromarray(skdata.chelsea())
    upload = ("upload.png", paths["astronaut.png"].read_bytes())
    report = builder.build_bank([chelsea, chelsea.copy(), upload, paths["astronaut.png"]], TestEncoder(32),
                                tmp_path / "mem.safetensors")
    assert [r.status for r in report.files] == ["added", "duplicate", "added", "duplicate"]
    assert report.files[0].source == "<image 0>" and report.files[2].source == "upload.png"


def test_encoder_sees_bounded_batches_and_progress_is_reported(tmp_path):
    digits = write_digits(tmp_path / "digits", count=11)
    batches, calls = [], []

    class Recording(TestEncoder):
        def __call__(self, pixels):
            batches.append(len(pixels))
            return super().__call__(pixels)

    recording = Recording(8, downscale=1)
    builder.build_bank(tmp_path / "digits", recording, tmp_path / "d.safetensors", batch_size=4,
                       progress=lambda done, total, label: calls.append((done, total)))
    assert batches == [4, 4, 3]
    assert calls == [(i, len(digits)) for i in range(1, len(digits) + 1)]


def test_recursive_option(tmp_path, photos):
    folder, _ = photos
    shutil.copy(folder / "astronaut.png", tmp_path / "top.png")
    write_digits(tmp_path / "sub", count=3)
    (tmp_path / ".hidden").mkdir()
    shutil.copy(folder / "coffee.jpg", tmp_path / ".hidden" / "secret.jpg")
    flat = builder.build_bank(tmp_path, TestEncoder(16), tmp_path / "out" / "flat.safetensors")
    deep = builder.build_bank(tmp_path, TestEncoder(16), tmp_path / "out" / "deep.safetensors", recursive=True)
    assert flat.bank_count == 1 and deep.bank_count == 4
    assert not any("secret" in r.source for r in deep.files)


def test_empty_result_is_an_error_with_the_report(tmp_path):
    write_broken(tmp_path / "bad")
    with pytest.raises(EmptyBuildError, match="no usable images") as error:
        builder.build_bank(tmp_path / "bad", TestEncoder(16), tmp_path / "bank.safetensors")
    assert error.value.report.count("truncated") == 1 and error.value.report.count("zero-byte") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_small_pixel_limit_rejects_large_images(tmp_path, photos):
    _, paths = photos
    report = builder.build_bank([paths["rocket_small.jpg"], paths["astronaut.png"]], TestEncoder(16),
                                tmp_path / "b.safetensors", max_pixels=200 * 200)
    assert [r.status for r in report.files] == ["added", "decompression-bomb"]


class FailingEncoder(TestEncoder):
    def __init__(self, fail_on_call):
        super().__init__(32)
        self.calls, self.fail_on_call = 0, fail_on_call

    def __call__(self, pixels):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().__call__(pixels)


def test_failed_or_cancelled_build_leaves_existing_bank_untouched(tmp_path, photos):
    folder, _ = photos
    dest = tmp_path / "bank.safetensors"
    builder.build_bank(folder / "coffee.jpg", TestEncoder(32), dest)
    before = dest.read_bytes()
    with pytest.raises(RuntimeError, match="simulated"):
        builder.build_bank(folder, FailingEncoder(fail_on_call=3), dest, batch_size=2, overwrite=True)
    assert dest.read_bytes() == before
    cancel = threading.Event()

    def progress(done, total, label):
        if done == 4:
            cancel.set()

    with pytest.raises(BuildCancelled) as error:
        builder.build_bank(folder, TestEncoder(32), dest, batch_size=2, progress=progress, cancel=cancel,
                           overwrite=True)
    assert error.value.report.count("added") == 4
    with pytest.raises(RuntimeError):
        builder.build_bank(folder, FailingEncoder(fail_on_call=2), dest, batch_size=2, append=True)
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]


def test_append_keeps_provenance_and_rows(tmp_path, photos):
    _, paths = photos
    dest = tmp_path / "bank.safetensors"
    first = builder.build_bank([paths["coffee.jpg"], paths["astronaut.png"]], TestEncoder(32), dest,
                               description="original card", settings={"paper": {"strength": 1.5}})
    original = fileformat.load_bank(dest).latents.clone()
    original_meta = fileformat.read_metadata(dest)
    report = builder.build_bank([paths["astronaut.png"], paths["chelsea.webp"]], TestEncoder(32), dest, append=True,
                                category="cats")
    assert [r.status for r in report.files] == ["duplicate", "added"]
    meta = fileformat.read_metadata(dest)
    assert meta.count == 3 and meta.description == "original card" and meta.settings == {"paper": {"strength": 1.5}}
    assert meta.source_sha256[:2] == original_meta.source_sha256 and len(set(meta.source_sha256)) == 3
    assert meta.merged_from[0] == {"title": "bank", "hash_sha256": original_meta.hash_sha256, "count": 2}
    assert torch.equal(fileformat.load_bank(dest).latents[:2], original) and first.bank_count == 2
    assert fileformat.read_extra_tensors(dest)["labels"].tolist() == [-1, -1, 0] and meta.categories == {"0": "cats"}
    with pytest.raises(BankError, match="cannot append to bank.safetensors: it holds test encoder latents"):
        builder.build_bank([paths["camera_grey.png"]], TestEncoder(32, latent_space="sd3"), dest, append=True)


def test_merge_refuses_mixed_latent_spaces_and_deduplicates(tmp_path, photos):
    _, paths = photos
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    builder.build_bank([paths["coffee.jpg"], paths["camera_grey.png"]], TestEncoder(32), a)
    builder.build_bank([paths["camera_grey.png"], paths["chelsea.webp"]], TestEncoder(32), b)
    merged = builder.merge_banks([a, b], tmp_path / "m.safetensors", title="merged")
    assert merged.count == 3 and [m["count"] for m in merged.merged_from] == [2, 2]
    rows = fileformat.load_bank(tmp_path / "m.safetensors").latents
    assert torch.equal(rows[:2], fileformat.load_bank(a).latents)
    assert torch.equal(rows[2], fileformat.load_bank(b).latents[1])


def test_names_are_sanitised(tmp_path, photos):
    _, paths = photos
    assert "/" not in builder.sanitize_name("../../etc/passwd")
    assert builder.sanitize_name(".hidden") == "hidden"
    assert builder.sanitize_name("nudity v2.safetensors") == "nudity v2"
    assert builder.sanitize_name("a,b|c;d=e@f*g") == "a_b_c_d_e_f_g"
    for bad in ("CON", "nul.txt", "Lpt1", "", "...", "///"):
        with pytest.raises(BankError):
            builder.sanitize_name(bad)
    report = builder.build_bank(paths["coffee.jpg"], TestEncoder(16), tmp_path / "..secret")
    assert report.path == str(tmp_path / "secret.safetensors")


def test_digits_encoder_builds_in_the_digits_space(tmp_path):
    pytest.importorskip("lib_safedenoise.bench.digits.latents", reason="the digits model is written by another helper")
    from lib_safedenoise.bench.digits.latents import encode
    from lib_safedenoise.bench.digits.encoder import DigitsEncoder

    paths = write_digits(tmp_path / "digits", count=12)
    report = builder.build_bank(tmp_path / "digits", DigitsEncoder(), tmp_path / "d.safetensors")
    meta = fileformat.read_metadata(tmp_path / "d.safetensors")
    assert report.bank_count == 12 and meta.latent_space == "digits" and meta.shape == (12, 4, 8, 8)
    latents = fileformat.load_bank(tmp_path / "d.safetensors").latents.float()
    for row, path in enumerate(paths.values()):  # 8x8 files go through unresized: exactly the model's encoding
        with Image.open(path) as image:
            if image.size == (8, 8):
                pixels = torch.from_numpy(np.asarray(image, np.float32) / 255)[None, None]
                assert torch.allclose(latents[row], encode(pixels)[0], atol=2e-3)
