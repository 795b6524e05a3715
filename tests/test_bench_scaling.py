"""The big-bank scaling benchmark (``python -m lib_safedenoise.bench speed --scaling``) on a small bank:
one record per sigma and case plus the whole sampling's, pruned and brute-force corrections on the same
inputs, and queries that fire (near the negation bank) or not (an ordinary image)."""

import json
import math

from lib_safedenoise.bench import speed
from lib_safedenoise.core import pruning as prune
from lib_safedenoise.core.kernel import pruning


def test_scaling_records_every_sigma_and_the_whole_sampling(tmp_path):
    out = tmp_path / "scaling.json"
    with pruning(prune.DEFAULT_TOLERANCE, min_items=200):  # prune the small bank as the product prunes big ones
        assert speed.main(["--scaling", "--sizes", "240", "--batches", "1", "--structures", "clustered",
                           "--modes", "default", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["scaling"]
    steps = len(speed.sd1_sigmas())
    assert len(records) == 2 * (steps + 1)
    for query in speed.QUERIES:
        rows = [r for r in records if r["query"] == query]
        whole = rows[-1]
        assert whole["sigma"] is None and [r["sigma"] for r in rows[:-1]] == speed.sd1_sigmas()
        assert whole["brute_force_s"] == sum(r["brute_force_s"] for r in rows[:-1]) > 0
        assert whole["certified_error"] <= prune.DEFAULT_TOLERANCE and whole["index_share"] <= 0.2
        assert all(r["bytes_read"] > 0 and r["brute_force_bytes"] > 0 for r in rows)
        if speed.reset_peak_memory():  # Linux: the case's peak beyond the process before the bank existed
            # (a 4 MB bank is within the heap's own ups and downs after the earlier tests, so only its
            # presence is checked here; the kernel tests measure memory on a bank big enough to see)
            assert whole["peak_rss_bytes"] > 0 and math.isfinite(whole["peak_memory_over_bank"])
    near = [r for r in records if r["query"] == "near"]
    away = [r for r in records if r["query"] == "away"]
    assert near[-1]["fired"] == steps and away[-1]["fired"] == 0
    # not firing, the correction reads no bank at the noisy latent: about half of what firing reads
    negation = [sum(r["brute_force_bytes_by_bank"]["clustered-240"] for r in rows[:-1]) for rows in (near, away)]
    assert 0 < negation[1] < 0.6 * negation[0]
