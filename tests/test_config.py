import pytest

from kvarn.config import (
    NUMERICS,
    PRESETS,
    KvarnConfig,
    kv_cache_dtype_names,
    max_num_seqs_for_ratio,
    parse_kv_cache_dtype,
    pool_bytes_per_layer,
    pool_slots,
    sink_row_slots,
    total_pool_slots,
)

# method.md §1.5 byte table: (preset, head_dim) -> (record bytes, bytes per token per head)
EXPECTED = {
    ("k4v2_g128", 128): (13824, 108),
    ("k4v2_g64", 128): (7296, 114),
    ("k4v2_g128", 64): (7296, 57),
    ("k4v2_g64", 64): (3840, 60),
    ("k4v4_g128", 128): (17920, 140),
    ("k4v4_g64", 128): (9344, 146),
    ("k2v2_g128", 128): (9728, 76),
    ("k4v2_g128", 256): (26880, 210),  # upstream pads this to 32,768; kvarn does not
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_record_sizes_match_table(key):
    cfg = KvarnConfig.from_name(key[0], head_dim=key[1])
    assert (cfg.record_bytes, cfg.bytes_per_token) == EXPECTED[key]


def test_storage_contract_k4v2_g128():
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128")
    assert cfg.bytes_per_token <= 108
    assert cfg.ratio_vs(2) >= 4.74 - 1e-9
    assert cfg.bits_per_element == pytest.approx(3.375)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_offsets_tile_the_record(preset, head_dim):
    cfg = KvarnConfig.from_name(preset, head_dim)
    pos = 0
    for name, (start, length) in cfg.offsets.items():
        assert start == pos and start % 2 == 0, name
        pos += length
    assert pos == cfg.raw_record_bytes <= cfg.record_bytes
    assert cfg.record_bytes % cfg.group == 0 and cfg.record_bytes % 8 == 0


def test_parse_names_and_errors():
    assert parse_kv_cache_dtype("auto") is None
    assert parse_kv_cache_dtype("kvarn_k4v4_g64") == "k4v4_g64"
    assert KvarnConfig.from_name("k2v2_g128@reference").numerics is NUMERICS["reference"]
    with pytest.raises(ValueError) as e:
        parse_kv_cache_dtype("kvarn_k3v2_g128")
    for name in kv_cache_dtype_names():
        assert name in str(e.value)
    with pytest.raises(ValueError, match="head_dim 96"):
        KvarnConfig.from_name("k4v2_g128", head_dim=96)
    with pytest.raises(ValueError, match="valid: reference, improved"):
        KvarnConfig.from_name("k4v2_g128", numerics="fancy")


def test_config_is_frozen_and_hashable():
    cfg = KvarnConfig()
    with pytest.raises(Exception):
        cfg.group = 64  # type: ignore[misc]
    assert hash(cfg) == hash(KvarnConfig())


def test_sink_modes():
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128")
    assert (cfg.sink, cfg.first_quantized_tile, cfg.pool_slots_per_seq) == ("fp16", 1, 2)
    q = KvarnConfig.from_name("kvarn_k4v2_g128", sink="quantized")
    assert (q.first_quantized_tile, q.pool_slots_per_seq) == (0, 1)
    assert "sink quantized" in q.describe() and "sink" not in cfg.describe()
    assert q.record_bytes == cfg.record_bytes  # same bytes: only when block 0 is flushed changes
    t = KvarnConfig.from_name("kvarn_k4v2_g128", sink="token")
    assert (t.first_quantized_tile, t.pool_slots_per_seq, t.token_sink, q.token_sink) == (0, 1, True, False)
    assert "first token fp16" in t.describe() and t.record_bytes == cfg.record_bytes
    assert sink_row_slots(1024, 128) == 16 and sink_row_slots(8, 128) == 1 and sink_row_slots(64, 64) == 2
    with pytest.raises(ValueError, match="sink must be one of .*fp16.*quantized"):
        KvarnConfig.from_name("kvarn_k4v2_g128", sink="int8")
    assert pool_slots(64, 2048, 128, per_seq=1) == 64 + 16 + 8
    with pytest.raises(ValueError, match="must be 1 or 2"):
        pool_slots(64, 2048, 128, per_seq=3)


def test_pool_slots_formula():
    # method.md §1.6: 2*max_num_seqs + ceil(max_num_batched_tokens / G) + 8
    assert pool_slots(64, 2048, 128) == 128 + 16 + 8
    assert pool_slots(1, 100, 64) == 2 + 2 + 8


def test_max_num_seqs_for_ratio_inverts_the_pool_counted_capacity():
    """The startup hint's max_num_seqs: the largest (multiple of 8) whose pool still leaves the target ratio."""
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128")
    layers, heads, mbt = 36, 8, 16384
    assert total_pool_slots(cfg, 1024, mbt) == 2184  # the H200 bursts' engine (docs/gpu.md)
    tok = KvarnConfig.from_name("kvarn_k4v2_g128", sink="token")
    assert total_pool_slots(tok, 1024, mbt) == 1024 + 136 + 16  # tail only, plus the sink-row slots

    def ratio(c, seqs, total):
        pool = pool_bytes_per_layer(total_pool_slots(c, seqs, mbt), c.group, heads, c.head_dim) * layers
        return c.ratio_vs(2) * (total - pool) / total

    total = 18628 * 128 * heads * 108 * layers + pool_bytes_per_layer(2184, 128, heads, 128) * layers
    for c in (cfg, tok):
        for target in (4.5, 4.2, 4.0):
            seqs = max_num_seqs_for_ratio(c, target, total, layers, heads, mbt, 1024)
            assert seqs % 8 == 0 and 8 <= seqs < 1024
            assert ratio(c, seqs, total) >= target > ratio(c, seqs + 8, total)
    assert max_num_seqs_for_ratio(cfg, 2.0, total, layers, heads, mbt, 1024) == 1024  # already there
    assert max_num_seqs_for_ratio(cfg, 4.8, total, layers, heads, mbt, 1024) == 0  # above the records' own 4.74x
