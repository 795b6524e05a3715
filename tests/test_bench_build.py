"""The speed benchmark's bank-build section: a real build of synthetic images, timed."""

import pytest

from lib_safedenoise.bench.build_speed import measure_build_throughput


def test_measure_build_throughput_reports_images_per_second():
    result = measure_build_throughput(images=8, side=32, resolution=32, batch_size=4)
    assert result["images"] == 8 and result["batch_size"] == 4
    assert result["images_per_second"] == pytest.approx(8 / result["seconds"])
    assert result["images_per_second"] > 0
    assert (result["source_size"], result["resolution"]) == ("32x32", "32x32")
