"""rotate_append: pool rows equal kvarn.reference.rotate(k) cast to the pool dtype (<= 1 ulp)."""

import pytest
import torch

from kvarn.reference import rotate

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("d,g,hk,act,pool", [
    (128, 128, 8, torch.bfloat16, torch.float16),
    (64, 64, 2, torch.float16, torch.float16),
    (256, 128, 1, torch.bfloat16, torch.bfloat16),
])
def test_rotate_append_matches_reference(dev, d, g, hk, act, pool):
    from kvarn.kernels import rotate_append
    torch.manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    nb, slots, t = 6, 4, 37
    key = (torch.randn(t, hk, d) * 3).to(act).to(dev)
    value = torch.randn(t, hk, d).to(act).to(dev)
    key = torch.cat([key, key], 1)[:, ::2]  # non-contiguous head stride
    assert key.stride(1) == 2 * d
    b2s = torch.tensor([2, -1, 0, 3, 1, -1], dtype=torch.int32, device=dev)
    blocks_with_slot = [0, 2, 3, 4]
    pos = torch.randperm(len(blocks_with_slot) * g)[:t]
    smap = torch.tensor([blocks_with_slot[p // g] * g + p % g for p in pos.tolist()], dtype=torch.int64)
    smap[5] = -1  # padding token: skipped
    smap = smap.to(dev)
    pk = torch.full((slots, g, hk, d), float("nan"), dtype=pool, device=dev)
    pv = pk.clone()
    rotate_append(key, value, pk, pv, b2s, smap, g)
    want_k = torch.full_like(pk, float("nan"))
    want_v = want_k.clone()
    rk, rv = rotate(key.cpu()).to(pool), rotate(value.cpu()).to(pool)
    for i, s in enumerate(smap.tolist()):
        if s < 0:
            continue
        slot = int(b2s[s // g])
        want_k[slot, s % g] = rk[i].to(dev)
        want_v[slot, s % g] = rv[i].to(dev)
    for got, want, src in ((pk, want_k, key), (pv, want_v, value)):
        assert torch.equal(torch.isnan(got), torch.isnan(want)), "written/unwritten rows differ"
        m = ~torch.isnan(want)
        w = want[m].float()
        # 1 ulp of the pool dtype, plus fp32 summation-order noise for results that cancel to ~0
        ulp = torch.finfo(pool).eps * torch.exp2(torch.floor(torch.log2(w.abs().clamp_min(1e-30))))
        noise = 1e-6 * src.float().abs().max() * d ** 0.5
        diff = (got[m].float() - w).abs()
        assert (diff <= ulp + noise).all(), f"max excess {(diff - ulp - noise).max()}"
        if not (dev == "cpu" and pool == torch.bfloat16):  # the interpreter truncates fp32 -> bf16
            assert (diff == 0).float().mean() > 0.98


def test_rotate_append_pool_rows(dev):
    """block_to_slot=None: slot_mapping holds flattened pool rows (slot * G + offset)."""
    from kvarn.kernels import rotate_append
    g, hk, d = 64, 2, 128
    key = torch.randn(9, hk, d).half().to(dev)
    rows = torch.tensor([5, 64, 65, -1, 130, 0, 191, 100, 7], dtype=torch.int64, device=dev)
    pk = torch.full((3, g, hk, d), float("nan"), dtype=torch.float16, device=dev)
    pv = pk.clone()
    rotate_append(key, key, pk, pv, None, rows, g)
    flat = pk.reshape(3 * g, hk, d).cpu()
    rk = rotate(key.cpu()).half()
    for i, r in enumerate(rows.tolist()):
        if r >= 0:
            assert (flat[r].float() - rk[i].float()).abs().max() <= 2e-3 * rk[i].float().abs().max()
    written = {r for r in rows.tolist() if r >= 0}
    untouched = [r for r in range(3 * g) if r not in written]
    assert torch.isnan(flat[untouched]).all()
    assert torch.equal(pv.reshape(3 * g, hk, d).cpu()[sorted(written)], flat[sorted(written)])


def test_rotate_append_rejects_bad_input(dev):
    from kvarn.kernels import rotate_append
    k = torch.randn(4, 2, 128, device=dev)  # fp32 is not an activation dtype here
    pk = torch.zeros(2, 128, 2, 128, dtype=torch.float16, device=dev)
    with pytest.raises(ValueError, match="dtype"):
        rotate_append(k, k, pk, pk.clone(), torch.zeros(2, dtype=torch.int32, device=dev),
                      torch.zeros(4, dtype=torch.int64, device=dev), 128)
