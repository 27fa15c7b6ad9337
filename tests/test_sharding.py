"""`ganinv_jax.sharding`: rules as config data, and an FSDP-sharded InvGAN step that equals the
replicated single-device one (8 fake CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.invgan_fashion_mnist import get_config
from ganinv_jax import sharding as shd
from ganinv_jax.training import invgan
from ganinv_jax.training import state as state_lib


def test_rules_from_config_and_fsdp_specs():
    rules = shd.rules_from_config((("g/.*/bias", "replicate"), (".*", "fsdp")))
    assert shd.spec_for("g/conv/bias", rules, (64,), 8) == P()
    # the largest dimension divisible by the axis size is split over "data"
    assert shd.spec_for("g/conv/weight", rules, (3, 3, 16, 64), 8) == P(None, None, None, "data")
    assert shd.spec_for("g/dense/w", rules, (24, 12), 8) == P("data", None)  # 24 % 8 == 0
    assert shd.spec_for("d/x", rules, (3, 5), 8) == P()  # nothing divisible: replicated
    assert shd.spec_for("d/x", rules, (16,), 1) == P()  # one device: nothing to split
    literal = shd.rules_from_config(((".*", (None, "data")),))
    assert shd.spec_for("a", literal, (4, 8), 8) == P(None, "data")
    assert shd.rules_from_config(None) == shd.REPLICATED_RULES
    with pytest.raises(ValueError, match="want 'replicate', 'fsdp'"):
        shd.rules_from_config(((".*", "zero3"),))
    with pytest.raises(ValueError, match="no sharding rule"):
        shd.spec_for("x", shd.rules_from_config((("g/.*", "fsdp"),)), (8,), 8)


def test_fsdp_step_equals_replicated_single_device_step():
    assert jax.device_count() >= 8, "conftest should provide 8 CPU devices"
    c = get_config("tiny")
    c.update(eval_at_end=False, num_train_steps=2, num_devices=1)
    nets, _, init_fn = invgan.setup(c, shd.make_mesh(1))
    host_state = jax.device_get(init_fn(jax.random.key(0)))
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (c.batch_size, 8, 8, 3)).astype(np.float32) for _ in range(2)]
    out = {}
    for n, pairs in ((1, ((".*", "replicate"),)), (8, ((".*", "fsdp"),))):
        cn = c.copy_and_resolve_references()
        cn.param_sharding = pairs
        mesh = shd.make_mesh(n)
        _, sh = state_lib.abstract_state(
            init_fn, jax.random.key(0), mesh, shd.rules_from_config(cn.param_sharding)
        )
        if n == 8:  # really sharded: some weights live in 8 pieces
            split = [s for s in jax.tree.leaves(sh) if s.spec != P()]
            assert len(split) > 10
        st = jax.device_put(host_state, sh)
        step = invgan.jit_train_step(cn, nets, sh, mesh)
        with jax.set_mesh(mesh):
            for b in batches:  # step 0 runs lazy R1 (r1_interval=2), step 1 does not
                st, metrics = step(st, shd.host_to_global(b, mesh))
        out[n] = jax.device_get((st, metrics))
    diff = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - b))), out[1], out[8]
    )
    assert max(jax.tree.leaves(diff)) < 1e-4
    moved = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - b))), host_state.d, out[8][0].d
    )
    assert max(jax.tree.leaves(moved)) > 1e-3  # the comparison is not vacuous
