"""Server optimizers: plain, momentum (FedAvgM) and Adam (FedAdam) against numpy, and state across rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aggregation import LayoutError, OptionError, ServerAdam, ServerMomentum, ServerSGD, make_optimizer

F32 = np.float32
SHAPES = {"fc.weight": (30, 20), "fc.bias": (20,)}


def tensors(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * scale).astype(F32) for name, shape in SHAPES.items()}


def test_plain_step_at_rate_one_adds_the_delta():
    model, delta = tensors(1), tensors(2)
    new = ServerSGD().step(model, delta)
    for name in SHAPES:
        np.testing.assert_allclose(
            new[name], model[name].astype(np.float64) + delta[name], rtol=1e-6, atol=1e-7
        )
    assert not np.shares_memory(new["fc.weight"], model["fc.weight"])


def test_momentum_follows_fedavgm_over_several_rounds():
    optimizer = ServerMomentum(learning_rate=0.5, momentum=0.9)
    model = tensors(3)
    reference = {name: t.astype(np.float64) for name, t in model.items()}
    velocity = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    for round_ in range(4):
        delta = tensors(10 + round_, scale=0.1)
        model = optimizer.step(model, delta)
        for name in SHAPES:
            velocity[name] = 0.9 * velocity[name] + delta[name]
            reference[name] = reference[name] + 0.5 * velocity[name]
            np.testing.assert_allclose(model[name], reference[name], rtol=1e-5, atol=1e-6)
    assert optimizer.rounds == 4


def test_adam_follows_fedadam_with_bias_correction_over_several_rounds():
    optimizer = ServerAdam(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    model = tensors(4)
    reference = {name: t.astype(np.float64) for name, t in model.items()}
    m = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    v = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    for t in range(1, 5):
        delta = tensors(20 + t, scale=0.1)
        model = optimizer.step(model, delta)
        rate = 0.1 * math.sqrt(1 - 0.99**t) / (1 - 0.9**t)
        for name in SHAPES:
            m[name] = 0.9 * m[name] + 0.1 * delta[name]
            v[name] = 0.99 * v[name] + 0.01 * delta[name].astype(np.float64) ** 2
            reference[name] = reference[name] + rate * m[name] / (np.sqrt(v[name]) + 1e-3)
            np.testing.assert_allclose(model[name], reference[name], rtol=1e-5, atol=1e-5)


def test_adam_first_step_moves_each_parameter_by_about_the_learning_rate():
    # With bias correction, step one is lr * sign(delta) wherever |delta| >> tau.
    model, delta = tensors(5), tensors(6)
    new = ServerAdam(learning_rate=0.01).step(model, delta)
    for name in SHAPES:
        np.testing.assert_allclose(new[name] - model[name], 0.01 * np.sign(delta[name]), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_state_dict_resumes_exactly_where_it_left_off(name):
    model = tensors(7)
    original = make_optimizer(name)
    for round_ in range(2):
        model = original.step(model, tensors(30 + round_, scale=0.1))
    resumed = make_optimizer(name)
    resumed.load_state_dict(original.state_dict())
    assert resumed.rounds == 2
    delta = tensors(40, scale=0.1)
    expected = original.step(model, delta)
    got = resumed.step(model, delta)
    for tensor_name in SHAPES:
        np.testing.assert_array_equal(got[tensor_name], expected[tensor_name])


def test_state_for_another_optimizer_is_refused():
    state = make_optimizer("momentum").state_dict()
    with pytest.raises(OptionError, match="state is for optimizer 'momentum', expected 'adam'"):
        make_optimizer("adam").load_state_dict(state)


def test_a_delta_with_another_layout_is_refused():
    optimizer = ServerMomentum()
    optimizer.step(tensors(8), tensors(9))
    delta = tensors(10)
    delta["fc.bias"] = np.zeros(21, F32)
    with pytest.raises(
        LayoutError, match=r"the aggregated delta: tensor 'fc.bias' has shape \(21,\), expected \(20,\)"
    ):
        optimizer.step(tensors(8), delta)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nesterov", {}, "optimizer 'nesterov' is not one of plain, momentum, adam"),
        ("momentum", {"momentum": 1.5}, r"momentum must be in \[0.0, 1.0\]"),
        ("plain", {"learning_rate": 0.0}, r"learning_rate must be in \(0.0, inf\]"),
        ("adam", {"tau": float("nan")}, "tau must be a finite number"),
        ("adam", {"gamma": 0.1}, "unexpected keyword argument 'gamma'"),
    ],
)
def test_bad_optimizer_settings_are_refused(name, params, message):
    with pytest.raises(OptionError, match=message):
        make_optimizer(name, **params)
