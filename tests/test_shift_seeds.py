"""tools/shift_seeds.py finds every way the chapters write a seed, and only those."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from shift_seeds import shift_seeds  # noqa: E402


def test_every_seed_form_is_shifted():
    source = ("ct.seed_everything(0)\nmodel = ct.mlp([40, 10], seed=3)\n"
              "SEEDS = range(5)\nseeds=range(2, 7)\nseeds = [0, 1, 2]\n"
              "torch.manual_seed(1); tf.random.set_seed(2); np.random.default_rng(4)\n"
              "for seed in range(3): pass\n")
    shifted, count = shift_seeds(source, 10)
    assert shifted == ("ct.seed_everything(10)\nmodel = ct.mlp([40, 10], seed=13)\n"
                       "SEEDS = range(10, 15)\nseeds=range(12, 17)\nseeds = [10, 11, 12]\n"
                       "torch.manual_seed(11); tf.random.set_seed(12); "
                       "np.random.default_rng(14)\nfor seed in range(10, 13): pass\n")
    assert count == 9


def test_other_numbers_are_left_alone():
    source = "model = ct.mlp([40, 300, 10], seed=s)\nlr = 0.05\nfor step in range(3): pass\n"
    assert shift_seeds(source, 7) == (source, 0)
