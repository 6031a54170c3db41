"""The method platform: registry, method options in recipes, and DDAS's step and hypergradient."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dra_dali.search import SearchConfig
from dra_dali.search.config import ConfigError
from dra_dali.search.methods import (
    METHODS,
    Batch,
    OptionsError,
    SearchMethod,
    StepContext,
    get_method,
    register,
)
from dra_dali.search.methods.ddas import DDASMethod, candidates
from dra_dali.search.ops import apply_op


def test_registry_holds_dra_and_ddas_and_refuses_clashes():
    assert {"dra", "ddas"} <= set(METHODS)
    assert get_method("ddas") is DDASMethod
    with pytest.raises(OptionsError,
                       match=r"unknown search method 'auto'; available: das, ddas, dra, faster-aa"):
        get_method("auto")

    class Impostor(SearchMethod):
        name = "ddas"

    with pytest.raises(ValueError, match="'ddas' is already registered by "
                                         "dra_dali.search.methods.ddas"):
        register(Impostor)
    assert METHODS["ddas"] is DDASMethod


def test_method_options_sit_under_the_method_name(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: ddas\nops: [Rotate, Invert]\nddas:\n  policies_per_step: 2\n")
    cfg = SearchConfig.from_recipe(recipe, settings={"ddas.init_gate": "0.5"})
    assert (cfg.method, cfg.options.policies_per_step, cfg.options.init_gate) == ("ddas", 2, 0.5)
    assert cfg.to_dict()["ddas"] == {"policies_per_step": 2, "init_gate": 0.5}
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"ddas: unknown option\(s\) \['gate'\]"):
        SearchConfig.from_dict({"method": "ddas", "ddas": {"gate": 0.3}})
    with pytest.raises(ConfigError, match="ddas.init_gate: must lie strictly between 0 and 1"):
        SearchConfig.from_dict({"method": "ddas", "ddas": {"init_gate": 1.0}})
    with pytest.raises(ConfigError, match=r"ddas.policies_per_step: cannot use 'three'"):
        SearchConfig.from_dict({"method": "ddas", "ddas": {"policies_per_step": "three"}})
    with pytest.raises(ConfigError, match=r"ddas.levels: must be non-empty and lie in "
                                          r"\[0, scale=1.0\]"):
        SearchConfig.from_dict({"method": "ddas", "ddas": {"op_levels": {"Rotate": [3.0]}}})
    with pytest.raises(ConfigError, match=r"ddas.fixed_sign: names operator\(s\) \['Rotate'\]"):
        SearchConfig.from_dict({"method": "ddas", "ops": ["Invert"],
                                "ddas": {"fixed_sign": ["Rotate"]}})
    with pytest.raises(ConfigError, match="ddas: options of method 'ddas', but method is 'dra'"):
        SearchConfig.from_dict({"ddas": {"init_gate": 0.5}})
    with pytest.raises(ConfigError, match="unknown search method 'nas'"):
        SearchConfig.from_dict({"method": "nas"})


def test_candidates_are_op_level_pairs_with_paper_count():
    cands = candidates(SearchConfig().ops[:16], (0.2, 0.4, 0.6, 0.8, 1.0), {}, ())
    # 13 operators with a magnitude x 5 levels + Equalize, AutoContrast, Invert: K = 68, K^2 = 4624.
    assert len(cands) == 68
    fixed = candidates(("Rotate", "Invert"), (0.5,), {"Rotate": [3.0]}, ("Rotate",))
    assert [c.label for c in fixed] == ["Rotate:3+", "Invert"]
    assert not fixed[0].random_sign


def _ddas(hypergradient: str = "paper", policy_batches: str = "full", policies_per_step: int = 3,
          **changes) -> tuple[DDASMethod, SearchConfig]:
    cfg = SearchConfig.from_dict({"method": "ddas", "resolution": 8, "scale": 3.0,
                                  "ops": ["Rotate", "Invert", "Brightness"],
                                  "ddas": {"levels": [0.5, 1.0], "op_levels": {"Rotate": [3.0]},
                                           "fixed_sign": ["Rotate"],
                                           "hypergradient": hypergradient,
                                           "policy_batches": policy_batches,
                                           "policies_per_step": policies_per_step},
                                  **changes})
    method = DDASMethod(cfg, cfg.options, num_classes=3, device=torch.device("cpu"))
    with torch.no_grad():  # a non-uniform point, so that every term of the gradient shows
        method.alpha_o.copy_(torch.linspace(-0.5, 0.7, len(method.candidates)))
    return method, cfg


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _policy_weights(method, picks, paper: bool) -> torch.Tensor:
    """``w_1 .. w_L`` of Eq. 12: the paper's (Z constant) or exact (Z differentiated)."""
    p_phi = torch.softmax(method.alpha_o, 0)[picks].prod(1)
    z = p_phi.sum().detach() if paper else p_phi.sum()
    return torch.sigmoid(method.alpha_tp) * p_phi / z


def _alpha_grad_after_unrolled_step(method, model, train_loss, val, eta):
    """dL_val(theta - eta * grad_theta train_loss(alpha, theta)) / dalpha by full autograd
    (second-order graph)."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(train_loss, params, create_graph=True)
    unrolled = {n: p - eta * g for n, p, g in zip(names, params, grads)}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    val_loss = F.cross_entropy(functional_call(model, {**unrolled, **buffers}, (val.images,)),
                               val.labels)
    return torch.autograd.grad(val_loss, [method.alpha_o, method.alpha_tp])


def _true_hypergradient(method, model, batches, labels, val, picks, eta, paper: bool):
    """The hypergradient of ``sum_l w_l(alpha) CE_l`` (``w_0 = 1 - sum w_l``) by autograd."""
    w = _policy_weights(method, picks, paper)
    weights = torch.cat([(1 - w.sum()).view(1), w])
    losses = torch.stack([F.cross_entropy(model(x), labels) for x in batches])
    return _alpha_grad_after_unrolled_step(method, model, weights @ losses, val, eta)


@pytest.mark.parametrize("hypergradient", ["paper", "exact"])
def test_hypergradient_matches_full_autograd(hypergradient):
    method, cfg = _ddas(hypergradient)
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    val = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([2, 2, 1, 0, 0, 1]))
    picks = torch.tensor([[0, 2], [3, 1], [2, 2]])
    batches = [x] + [method.augment(x, p, g) for p in picks]
    eta = 0.3
    params = list(model.parameters())
    grads = torch.stack([torch.cat([t.reshape(-1) for t in torch.autograd.grad(
        F.cross_entropy(model(b), labels), params)]) for b in batches])
    weights = method._weights(picks, exact_z=True).detach()
    ctx = StepContext(cfg, model, torch.optim.SGD(params, lr=eta), lambda t: t,
                      torch.Generator())
    from dra_dali.search.methods.ddas import _unrolled_val_grad

    _, g_val = _unrolled_val_grad(ctx, params, weights @ grads, eta, val)
    method.surrogate(picks, grads @ g_val, eta).backward()
    truth = _true_hypergradient(method, model, batches, labels, val, picks, eta,
                                paper=hypergradient == "paper")
    if hypergradient == "paper":  # Eq. 16-17 divide by Z_g (Eq. 15)
        diffs = (grads @ g_val)[0] - (grads @ g_val)[1:]
        truth = [t / diffs.abs().sum() for t in truth]
    assert torch.allclose(method.alpha_o.grad, truth[0], rtol=1e-4, atol=1e-7)
    assert torch.allclose(method.alpha_tp.grad, truth[1], rtol=1e-4, atol=1e-7)
    assert method.alpha_o.grad.abs().max() > 0 and method.alpha_tp.grad.abs() > 0


@pytest.mark.parametrize("hypergradient", ["paper", "exact"])
def test_split_batches_step_is_the_exact_gradient_of_its_paired_objective(hypergradient):
    """``policy_batches: split``: group l (of 7 images: 3, 2, 2) is augmented by policy l only;
    the model's update is -lr times the gradient of
    E = sum_l f_l CE(clean_l) + w_l (CE(aug_l) - CE(clean_l)), and alpha's update (plain SGD,
    lr 1, in place of Adam) is minus E's unrolled hypergradient (paper: Z constant, / Z_g)."""
    import copy

    method, cfg = _ddas(hypergradient, policy_batches="split")
    method.optimizer = torch.optim.SGD([method.alpha_o, method.alpha_tp], lr=1.0)
    model, eta = _model(), 0.3
    g = torch.Generator().manual_seed(1)
    train = Batch(torch.rand(7, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 1]))
    val = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([2, 2, 1, 0, 0, 1]))
    before, alpha = copy.deepcopy(model), [method.alpha_o.detach().clone(),
                                           method.alpha_tp.detach().clone()]
    ctx = StepContext(cfg, model, torch.optim.SGD(model.parameters(), lr=eta), lambda t: t,
                      torch.Generator().manual_seed(5))
    method.step(ctx, train, val)
    step = torch.cat([alpha[0] - method.alpha_o.detach(), (alpha[1] - method.alpha_tp).view(1)])

    with torch.no_grad():
        method.alpha_o.copy_(alpha[0])
        method.alpha_tp.copy_(alpha[1])
    draws = torch.Generator().manual_seed(5)
    picks = torch.randint(0, len(method.candidates), (3, 2), generator=draws)
    groups = torch.arange(7).tensor_split(3)
    assert [len(gr) for gr in groups] == [3, 2, 2]
    clean = torch.stack([F.cross_entropy(before(train.images[gr]), train.labels[gr])
                         for gr in groups])
    augmented = torch.stack([F.cross_entropy(before(method.augment(train.images[gr], p, draws)),
                                             train.labels[gr]) for gr, p in zip(groups, picks)])
    w = _policy_weights(method, picks, paper=hypergradient == "paper")
    objective = torch.tensor([3 / 7, 2 / 7, 2 / 7]) @ clean + w @ (augmented - clean)
    model_grad = torch.autograd.grad(objective, list(before.parameters()), retain_graph=True)
    for new, old, grad in zip(model.parameters(), before.parameters(), model_grad):
        assert torch.allclose(new, old - eta * grad, atol=1e-6)
    truth = torch.cat([t.reshape(-1) for t in
                       _alpha_grad_after_unrolled_step(method, before, objective, val, eta)])
    if hypergradient == "paper":  # Eq. 16-17 divide by Z_g > 0, a constant of the step
        truth = truth * (step @ truth) / (truth @ truth)
    assert torch.allclose(step, truth, rtol=1e-4, atol=1e-7)
    assert step[:-1].abs().max() > 0 and step[-1] != 0


def test_split_batches_with_one_policy_is_the_paper_step():
    """With L^ = 1 the single group is the whole batch: split and full take the same step."""
    g = torch.Generator().manual_seed(3)
    train = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]))
    val = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([2, 2, 1, 0, 0, 1]))
    results = []
    for mode in ("full", "split"):
        method, cfg = _ddas(policy_batches=mode, policies_per_step=1)
        model = _model()
        ctx = StepContext(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), lambda t: t,
                          torch.Generator().manual_seed(0))
        results.append((method.step(ctx, train, val), method.alpha_o.detach(),
                        [p.detach() for p in model.parameters()]))
    (m_full, a_full, p_full), (m_split, a_split, p_split) = results
    assert m_full == pytest.approx(m_split, rel=1e-6)
    assert torch.allclose(a_full, a_split, atol=1e-7)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(p_full, p_split))


def test_split_batches_need_a_batch_per_policy():
    with pytest.raises(ConfigError, match=r"ddas.policy_batches: 'split' needs batch_size=2 >= "
                                          r"policies_per_step=3, got 'split'"):
        SearchConfig.from_dict({"method": "ddas", "batch_size": 2,
                                "ddas": {"policy_batches": "split"}})
    with pytest.raises(ConfigError, match=r"ddas.policy_batches: must be 'full' \(the paper\) "
                                          r"or 'split', got 'half'"):
        SearchConfig.from_dict({"method": "ddas", "ddas": {"policy_batches": "half"}})


def test_fixed_sign_rotate_is_the_exact_quarter_turn_and_augments_whole_batch():
    method, _ = _ddas()
    x = torch.rand(4, 3, 8, 8)
    out = method.augment(x, [0], torch.Generator().manual_seed(0))   # Rotate:3+ = 90 degrees
    expected = apply_op("Rotate", x, torch.full((4,), 3.0), torch.ones(4), 8)
    assert torch.allclose(out, expected)
    assert torch.allclose(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-4)


def test_ddas_step_updates_model_and_policy_and_reports_metrics():
    method, cfg = _ddas()
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    running = model[1].running_mean.clone()
    ctx = StepContext(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), lambda t: t,
                      torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    train = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]))
    val = Batch(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([2, 2, 1, 0, 0, 1]))
    alpha = method.alpha_o.detach().clone()
    metrics = method.step(ctx, train, val)
    assert set(metrics) == {"model_ce", "clean_ce", "clean_acc", "val_ce", "gate"}
    assert metrics["gate"] != pytest.approx(0.35, abs=1e-6)
    assert not torch.equal(method.alpha_o.detach(), alpha)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # 4 training forwards in train mode update the running statistics; the unrolled validation
    # pass works on copies of the buffers.
    assert model[1].num_batches_tracked.item() == 4 and not torch.equal(running,
                                                                          model[1].running_mean)
    snap = method.snapshot()
    assert len(snap["p_o"]) == len(method.candidates) and snap["p_tp"] == metrics["gate"]
    state = method.state_dict()
    other, _ = _ddas()
    other.load_state_dict(state)
    assert torch.equal(other.alpha_o, method.alpha_o) and other.gate() == method.gate()


def test_options_dataclass_defaults_follow_the_paper():
    defaults = {f.name: f.default for f in dataclasses.fields(DDASMethod.Options)}
    assert (defaults["policies_per_step"], defaults["ops_per_policy"],
            defaults["init_gate"]) == (3, 2, 0.35)
