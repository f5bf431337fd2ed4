"""Search-space sampling against the formulas of SPEC §8.1 (checked statistically), and grid expansion."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter
from scipy import stats

from scheduler.searchers import SpaceSearcher
from scheduler.space import Distribution, grid_configs, sample_config
from scheduler.spec import parse_job

N = 20000
dist = TypeAdapter(Distribution).validate_python


def draws(d, n=N, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([d.sample(rng) for _ in range(n)], dtype=float)


def test_uniform_is_uniform_between_bounds():
    x = draws(dist({"type": "uniform", "min_value": 0.05, "max_value": 0.1}))
    assert x.min() >= 0.05 and x.max() <= 0.1
    assert stats.kstest(x, "uniform", args=(0.05, 0.05)).pvalue > 0.01


def test_loguniform_bounds_are_exponents():
    # loguniform(low, high) = exp(uniform(low, high)): the log of the value is uniform (§8.1).
    x = draws(dist({"type": "loguniform", "min_value": -6.9, "max_value": -2.3}))
    assert stats.kstest(np.log(x), "uniform", args=(-6.9, 4.6)).pvalue > 0.01
    assert math.exp(-6.9) <= x.min() and x.max() <= math.exp(-2.3)


def test_normal_and_lognormal():
    x = draws(dist({"type": "normal", "mu": 10, "sigma": 3}))
    assert stats.kstest(x, "norm", args=(10, 3)).pvalue > 0.01
    y = draws(dist({"type": "lognormal", "mu": 0.5, "sigma": 0.2}))
    assert stats.kstest(np.log(y), "norm", args=(0.5, 0.2)).pvalue > 0.01


def _freqs(x):
    vals, counts = np.unique(x, return_counts=True)
    return dict(zip(vals.tolist(), (counts / len(x)).tolist()))


def close(a, b, tol=0.015):
    return abs(a - b) < tol


def test_quniform_is_round_of_uniform_over_q_times_q():
    # round(uniform(0, 10) / 5) * 5: 0 for u < 2.5, 5 for 2.5..7.5, 10 above -> 1/4, 1/2, 1/4.
    f = _freqs(draws(dist({"type": "quniform", "min_value": 0, "max_value": 10, "q": 5})))
    assert set(f) == {0, 5, 10}
    assert close(f[0], 0.25) and close(f[5], 0.5) and close(f[10], 0.25)


def test_quniform_with_integral_q_gives_ints():
    d = dist({"type": "quniform", "min_value": 16, "max_value": 64, "q": 16})
    rng = np.random.default_rng(1)
    vals = {d.sample(rng) for _ in range(200)}
    assert vals <= {16, 32, 48, 64} and all(isinstance(v, int) for v in vals)


def test_qloguniform():
    # round(exp(uniform(0, ln 100)) / 10) * 10; P(0) = P(exp(u) < 5) = ln 5 / ln 100.
    f = _freqs(draws(dist({"type": "qloguniform", "min_value": 0, "max_value": math.log(100), "q": 10})))
    assert all(v % 10 == 0 for v in f)
    assert close(f[0], math.log(5) / math.log(100))
    assert close(f[10], (math.log(15) - math.log(5)) / math.log(100))


def test_qnormal_and_qlognormal():
    f = _freqs(draws(dist({"type": "qnormal", "mu": 0, "sigma": 1, "q": 1})))
    assert close(f[0], stats.norm.cdf(0.5) - stats.norm.cdf(-0.5))
    g = _freqs(draws(dist({"type": "qlognormal", "mu": 0, "sigma": 1, "q": 1})))
    assert close(g[1], stats.norm.cdf(math.log(1.5)) - stats.norm.cdf(math.log(0.5)))
    assert close(g[0], stats.norm.cdf(math.log(0.5)))


def test_randint_upper_is_exclusive():
    f = _freqs(draws(dist({"type": "randint", "upper": 5})))
    assert set(f) == {0, 1, 2, 3, 4}
    assert all(close(p, 0.2) for p in f.values())


def test_choice_is_uniform_over_values():
    f = _freqs(draws(dist({"type": "choice", "values": [16, 32, 64, 128]})))
    assert set(f) == {16, 32, 64, 128} and all(close(p, 0.25) for p in f.values())


def test_random_picks_sub_spaces_uniformly_and_samples_inside():
    space = [
        {"model_name": dist({"type": "choice", "values": ["resnet18"]}),
         "learning_rate": dist({"type": "uniform", "min_value": 0.1, "max_value": 0.2})},
        {"model_name": dist({"type": "choice", "values": ["mobilenetv2"]}),
         "optimizer": dist({"type": "choice", "values": ["adam"]})},
    ]
    rng = np.random.default_rng(3)
    cfgs = [sample_config(space, rng) for _ in range(4000)]
    share = sum(c["model_name"] == "resnet18" for c in cfgs) / len(cfgs)
    assert close(share, 0.5, 0.03)
    # a sub-space's parameters never leak into another's configurations
    assert all(set(c) == ({"model_name", "learning_rate"} if c["model_name"] == "resnet18"
                          else {"model_name", "optimizer"}) for c in cfgs)


def test_grid_over_conditional_sub_spaces_is_the_union_of_products():
    a = {"model_name": ["resnet18", "resnet34"], "optimizer": ["sgd", "adam", "adamw"]}
    b = {"model_name": ["mobilenetv2"], "early_stopping": [True, False]}
    space = [{k: dist({"type": "choice", "values": v}) for k, v in sub.items()} for sub in (a, b)]
    expected = [dict(zip(a, c)) for c in itertools.product(*a.values())] + \
               [dict(zip(b, c)) for c in itertools.product(*b.values())]
    assert grid_configs(space) == expected
    assert len(expected) == 8


def test_grid_searcher_stops_when_the_grid_is_exhausted_and_at_max_trials():
    space = [{"optimizer": dist({"type": "choice", "values": ["sgd", "adam", "adamw"]})}]
    s = SpaceSearcher(space, "grid", max_trials=10)
    got = [s.suggest(f"t{i}") for i in range(5)]
    assert got[:3] == [{"optimizer": "sgd"}, {"optimizer": "adam"}, {"optimizer": "adamw"}]
    assert got[3] == SpaceSearcher.FINISHED and s.total_trials == 3
    s2 = SpaceSearcher(space, "grid", max_trials=2)
    assert s2.total_trials == 2 and s2.suggest("a") and s2.suggest("b") and s2.suggest("c") == SpaceSearcher.FINISHED


def test_random_searcher_is_reproducible_from_its_seed():
    space = [{"learning_rate": dist({"type": "uniform", "min_value": 0.0, "max_value": 1.0})}]
    one = [SpaceSearcher(space, "random", 5, seed=7).suggest(str(i)) for i in range(1)]
    two = [SpaceSearcher(space, "random", 5, seed=7).suggest(str(i)) for i in range(1)]
    assert one == two
    assert SpaceSearcher(None, "random", 1).suggest("x") == {}  # single trial: the defaults


def test_distribution_keys_from_yaml():
    j = parse_job("""task: image_classification
target_column_name: label
training_data: {path: x}
limits: {max_trials: 3}
search_space:
  - warmup_cosine_lr_warmup_epochs: {type: randint, upper: 20}
    learning_rate: {type: qloguniform, min_value: -6, max_value: -2, q: 0.001}
    momentum: {type: qnormal, mu: 0.9, sigma: 0.01, q: 0.01}
    weight_decay: {type: lognormal, mu: -9, sigma: 1}
sweep: {sampling_algorithm: random}
""", source=Path("job.yml"))
    cfg = sample_config(j.search_space, np.random.default_rng(0))
    assert 0 <= cfg["warmup_cosine_lr_warmup_epochs"] < 20 and isinstance(cfg["warmup_cosine_lr_warmup_epochs"], int)
    assert set(cfg) == {"warmup_cosine_lr_warmup_epochs", "learning_rate", "momentum", "weight_decay"}


def test_configurations_given_first_are_suggested_before_sampled_ones():
    """AutoMode's first trial is the leading model at its defaults: the searcher's ``first`` configuration."""
    space = [{"model_name": dist({"type": "choice", "values": ["resnet18"]}),
              "learning_rate": dist({"type": "uniform", "min_value": 0.001, "max_value": 0.1})}]
    s = SpaceSearcher(space, "random", max_trials=3, seed=0, first=[{"model_name": "resnet18"}])
    got = [s.suggest(f"t{i}") for i in range(4)]
    assert got[0] == {"model_name": "resnet18"}
    assert all(set(g) == {"model_name", "learning_rate"} for g in got[1:3])
    assert got[3] == SpaceSearcher.FINISHED
