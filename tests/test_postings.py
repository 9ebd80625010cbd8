"""The packed layout of the fingerprint index: bucket widths, keys, records."""

from __future__ import annotations

import numpy as np
import pytest

from soundkit import postings


def test_buckets_narrow_as_the_index_grows_and_stay_about_target_full() -> None:
    sizes = [0, 10, 10_000, 1_000_000, 30_000_000, 300_000_000, 3_000_000_000, 10**12]
    shifts = [postings.shift_for(n) for n in sizes]
    assert shifts[0] == shifts[1] == postings.MAX_SHIFT
    assert shifts == sorted(shifts, reverse=True) and shifts[-1] == 0
    for n in sizes[3:-1]:
        per_bucket = n / (2**postings.KEY_BITS / 2 ** postings.shift_for(n))
        assert postings.TARGET_PER_BUCKET / 2 < per_bucket <= postings.TARGET_PER_BUCKET


def test_a_layout_is_refitted_only_well_outside_its_size() -> None:
    n = 30_000_000
    ideal = postings.shift_for(n)
    assert postings.refit(ideal, n) is None
    assert postings.refit(ideal - 1, n) is None  # a little sparse: kept
    assert postings.refit(ideal - 2, n) == ideal  # far too sparse: merged
    assert postings.refit(ideal + 1, n) == ideal  # over target: split


def test_records_group_into_one_block_per_bucket_and_read_back() -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32)
    tracks = rng.integers(1, 50, 5000).astype(np.int32)
    times = rng.integers(0, 10**6, 5000).astype(np.int32)
    recs = postings.records(hashes, tracks, times)
    assert recs.tobytes()[:4] == int(hashes[0]).to_bytes(4, "big")  # what int4send writes
    blocks = postings.group(recs, 22)
    keys = [k for k, _ in blocks]
    assert keys == sorted(set(keys))
    for key, blob in blocks:
        got = postings.decode(blob)
        assert postings.key_shift(key) == 22
        assert set(postings.buckets_for(got["hash"], 22).tolist()) == {key & 0xFFFF_FFFF}
    back = postings.decode(b"".join(blob for _, blob in blocks))
    assert sorted(map(tuple, back.tolist())) == sorted(zip(hashes.tolist(), tracks.tolist(),
                                                          times.tolist(), strict=True))
    assert postings.group(recs[:0], 22) == []


def test_a_crowded_run_of_hashes_is_spread_evenly_over_the_buckets() -> None:
    """Music crowds some regions of the hash space; a bucket must not hold a whole region."""
    crowded = np.arange(2**16, dtype=np.uint32) + 5 * 2**16  # consecutive hash values
    shift = postings.KEY_BITS - 12  # 4096 buckets: 16 of these hashes each on average
    per_bucket = np.bincount(postings.buckets_for(crowded, shift), minlength=4096)
    assert per_bucket.size == 4096
    assert per_bucket.max() <= 2 * 16 and np.count_nonzero(per_bucket) == 4096
    assert np.unique(crowded >> shift).size == 1  # cut unscrambled, all in one bucket
    sample = np.random.default_rng(3).integers(0, 2**postings.KEY_BITS, 100_000).astype(np.uint32)
    scrambled = postings.buckets_for(sample, 0)
    assert np.unique(scrambled).size == np.unique(sample).size  # a bijection
    assert scrambled.max() < 2**postings.KEY_BITS


def test_keys_of_two_layouts_never_collide() -> None:
    h = np.array([0, 1, 2**20, 2**31 + 5, 2**32 - 1], dtype=np.uint32)
    assert not set(postings.keys_for(h, 3).tolist()) & set(postings.keys_for(h, 4).tolist())


def test_a_track_is_cut_out_of_a_block() -> None:
    recs = postings.records([1, 2, 3], [7, 8, 7], [10, 20, 30])
    blob = recs.tobytes()
    assert postings.without_track(blob, 9) is None
    kept = postings.without_track(blob, 7)
    assert kept is not None and postings.decode(kept)["track"].tolist() == [8]
    assert postings.without_track(postings.records([4], [7], [1]).tobytes(), 7) == b""


def test_a_torn_block_is_an_error() -> None:
    with pytest.raises(ValueError, match="damaged"):
        postings.decode(b"\x00" * 25)


def test_slices_never_split_a_bucket() -> None:
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**12, 3000, dtype=np.uint32)  # many postings per bucket
    recs = postings.records(hashes, np.arange(3000), np.zeros(3000))
    parts = list(postings.grouped(recs, 4, slice_postings=100))
    assert len(parts) > 10
    keys = [k for part in parts for k, _ in part]
    assert keys == sorted(set(keys))  # each bucket in exactly one slice, in order
    assert [b for part in parts for b in part] == postings.group(recs, 4)
    same = postings.records(np.zeros(500, np.uint32), np.arange(500), np.zeros(500))
    [[(_, blob)]] = list(postings.grouped(same, 4, slice_postings=100))  # one bucket, one slice
    assert len(blob) == 500 * postings.RECORD.itemsize
