"""Tests for ml/homefeed/model.py and baseline.py: shapes, gradients, export, learning."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from ml.homefeed import baseline, data, model

TINY = model.HomefeedModelConfig(
    num_users=50,
    num_items=40,
    context_cardinalities=(24, 4, 6),
    num_dense=5,
    num_positions=10,
    seq_len=7,
    embed_dim=16,
    seq_layers=2,
    seq_heads=2,
    cross_layers=2,
    mlp_dims=(32, 16),
    dropout=0.1,
)


def _inputs(batch: int, seed: int = 0, cfg: model.HomefeedModelConfig = TINY) -> tuple[torch.Tensor, ...]:
    return model.example_inputs(cfg, batch, generator=torch.Generator().manual_seed(seed))


def _model(cfg: model.HomefeedModelConfig = TINY, seed: int = 0) -> model.HomefeedRanker:
    torch.manual_seed(seed)
    return model.HomefeedRanker(cfg)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank-based (Mann-Whitney) AUC with tied scores given their average rank."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    mean_rank = np.bincount(inverse, weights=np.arange(1, len(scores) + 1)) / counts
    ranks = np.empty(len(scores))
    ranks[order] = mean_rank[inverse]
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def test_roc_auc_helper() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert roc_auc(np.array([0, 1, 1, 0]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.5


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value",
    [
        ("num_users", 0),
        ("num_items", -1),
        ("embed_dim", 0),
        ("seq_heads", 3),  # 16 is not divisible by 3
        ("seq_layers", 0),
        ("cross_layers", -1),
        ("mlp_dims", ()),
        ("mlp_dims", (32, 0)),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("context_cardinalities", ()),
        ("context_cardinalities", (24, 0)),
        ("num_action_types", 1),
        ("seq_len", 2.5),
    ],
)
def test_bad_config_raises_value_error_naming_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field.split("[")[0]):
        dataclasses.replace(TINY, **{field: value})


def test_config_round_trips_and_rejects_unknown_keys() -> None:
    d = TINY.to_dict()
    assert model.HomefeedModelConfig.from_dict(d) == TINY
    with pytest.raises(ValueError, match="embed_dimm"):
        model.HomefeedModelConfig.from_dict({**d, "embed_dimm": 8})


def test_config_from_data_kwargs_builds_a_model() -> None:
    cfg = model.HomefeedModelConfig(**data.model_config_kwargs(data.SyntheticConfig()))
    assert cfg.embed_dim == 32 and cfg.seq_heads == 4 and cfg.mlp_dims == (128, 64)
    m = model.HomefeedRanker(cfg)
    click, save = m(*_inputs(3, cfg=cfg))
    assert click.shape == save.shape == (3,)


# ----------------------------------------------------------------------------- forward
def test_output_shapes_and_dtypes() -> None:
    m = _model()
    click, save = m(*_inputs(11))
    assert click.shape == (11,) and save.shape == (11,)
    assert click.dtype == save.dtype == torch.float32
    assert torch.isfinite(click).all() and torch.isfinite(save).all()
    assert model.INPUT_NAMES == (
        "user_id", "item_id", "position", "context", "dense", "hist_items", "hist_actions", "hist_gaps"
    )
    assert model.OUTPUT_NAMES == ("click_logit", "save_logit")


def test_batch_inputs_picks_inputs_in_order() -> None:
    x = _inputs(4)
    batch = dict(zip(model.INPUT_NAMES, x, strict=True), click=torch.zeros(4), save=torch.zeros(4), row_id=torch.arange(4))
    picked = model.batch_inputs(batch)
    assert len(picked) == len(model.INPUT_NAMES) and all(a is b for a, b in zip(picked, x, strict=True))
    del batch["hist_gaps"]
    with pytest.raises(ValueError, match="hist_gaps"):
        model.batch_inputs(batch)


def test_gradients_reach_every_parameter() -> None:
    m = _model()
    click, save = m(*_inputs(32))
    loss, parts = model.multitask_loss(click, save, torch.randint(0, 2, (32,)).float(), torch.randint(0, 2, (32,)).float())
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    names = {n for n, _ in m.named_parameters()}
    for must in ("seq_encoder.layers.1.self_attn.in_proj_weight", "cross.layers.1.weight", "click_head.weight",
                 "save_head.weight", "cls_token", "gap_proj.weight", "context_embeddings.2.weight"):
        assert must in names


def test_all_padding_histories_stay_finite() -> None:
    m = _model()
    x = list(_inputs(6))
    for i in (5, 6, 7):  # hist_items, hist_actions, hist_gaps
        x[i] = torch.zeros_like(x[i])
    click, save = m(*x)
    assert torch.isfinite(click).all() and torch.isfinite(save).all()
    (click.sum() + save.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad():
        assert torch.isfinite(torch.stack(m(*x))).all()


def test_history_changes_predictions_and_padding_is_ignored() -> None:
    m = _model().eval()
    x = list(_inputs(8))
    with torch.no_grad():
        base = m(*x)[0]
        # Changing what sits under padding must not change anything.
        pad = x[5] == 0
        assert pad.any()
        x2 = list(x)
        x2[7] = torch.where(pad, torch.full_like(x[7], 99.0), x[7])
        x2[6] = torch.where(pad, torch.full_like(x[6], 3), x[6])
        assert torch.allclose(m(*x2)[0], base, atol=1e-6)
        # Changing real history items must change the output.
        x3 = list(x)
        x3[5] = torch.where(pad, x[5], (x[5] % TINY.num_items) + 1)
        assert not torch.allclose(m(*x3)[0], base, atol=1e-6)


@pytest.mark.parametrize("index, name", [(3, "context"), (4, "dense"), (5, "hist_items"), (7, "hist_gaps")])
def test_mismatched_feature_widths_are_explained(index: int, name: str) -> None:
    x = list(_inputs(4))
    x[index] = x[index][:, :-1]
    with pytest.raises(ValueError, match=name):
        _model()(*x)


def test_out_of_range_ids_map_to_unknown_rows() -> None:
    m = _model().eval()
    x = list(_inputs(5))
    x[0] = torch.tensor([0, 1, TINY.num_users + 7, -3, 10**9])
    x[1] = torch.tensor([0, TINY.num_items + 1, 2, -1, 3])
    x[2] = torch.tensor([0, 99, -2, 3, 4])
    x[3] = torch.tensor([[23, 3, 5], [24, 4, 6], [-1, 0, 0], [0, 0, 0], [100, 100, 100]])
    x[5][0, -1] = 10**6
    x[6][0, -1] = 17
    with torch.no_grad():
        click, save = m(*x)
    assert torch.isfinite(click).all() and torch.isfinite(save).all()


# ----------------------------------------------------------------------------- loss
def test_multitask_loss_matches_bce_and_validates() -> None:
    c, s = torch.randn(9), torch.randn(9)
    yc, ys = torch.randint(0, 2, (9,)).float(), torch.randint(0, 2, (9,)).float()
    loss, parts = model.multitask_loss(c, s, yc, ys, save_weight=0.5)
    want_c = F.binary_cross_entropy_with_logits(c, yc)
    want_s = F.binary_cross_entropy_with_logits(s, ys)
    assert math.isclose(loss.item(), (want_c + 0.5 * want_s).item(), rel_tol=1e-6)
    assert math.isclose(parts["click_loss"], want_c.item(), rel_tol=1e-6)
    assert math.isclose(parts["save_loss"], want_s.item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="save_weight"):
        model.multitask_loss(c, s, yc, ys, save_weight=-1.0)
    with pytest.raises(ValueError, match="click"):
        model.multitask_loss(c, s, yc[:3], ys)


# ----------------------------------------------------------------------------- precision
def test_bf16_autocast_forward_backward_close_to_fp32() -> None:
    m = _model()
    m.eval()  # no dropout, so fp32 and bf16 see the same function
    x = _inputs(64, seed=3)
    yc = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1)).float()
    ys = yc * torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(2)).float()
    ref_loss, _ = model.multitask_loss(*m(*x), yc, ys)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        click, save = m(*x)
        loss, _ = model.multitask_loss(click, save, yc, ys)
    assert click.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - ref_loss.item()) < 0.02 * max(1.0, ref_loss.item())
    loss.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------- export
def test_jit_trace_matches_eager_on_other_batch_size() -> None:
    m = _model().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, _inputs(8))
    x = _inputs(13, seed=5)
    with torch.no_grad():
        want = m(*x)
        got = traced(*x)
    for a, b in zip(got, want, strict=True):
        assert a.shape == (13,)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_torch_export_dynamic_batch_matches_eager(tmp_path: Path) -> None:
    m = _model().eval()
    ep = torch.export.export(m, _inputs(8), dynamic_shapes=model.dynamic_batch_shapes())
    path = tmp_path / "ranker.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    for batch in (1, 3, 21):
        x = _inputs(batch, seed=batch)
        with torch.no_grad():
            want = m(*x)
            got = loaded(*x)
        for a, b in zip(got, want, strict=True):
            assert a.shape == (batch,)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- learning
def test_baseline_rates_and_unknown_items(tmp_path: Path) -> None:
    cfg = data.SyntheticConfig(num_users=100, num_items=30, num_topics=5, seq_len=4, seed=2)
    files = data.generate_shards(tmp_path, cfg, 3000, 2)
    base = baseline.PopularityBaseline(prior_strength=10.0).fit(files)
    table = pq.read_table(files)
    items, clicks = table["item_id"].to_numpy(), table["click"].to_numpy().astype(np.float64)
    g = clicks.mean()
    assert math.isclose(base.global_click_rate, g, rel_tol=1e-9)
    item = int(np.bincount(items).argmax())
    n, k = (items == item).sum(), clicks[items == item].sum()
    pc, ps = base.predict(np.array([item, 10**6, -1]))
    assert math.isclose(pc[0], (k + 10.0 * g) / (n + 10.0), rel_tol=1e-9)
    assert pc[1] == pc[2] == base.global_click_rate and ps[1] == base.global_save_rate
    assert np.all(ps <= pc + 1e-12)
    with pytest.raises(ValueError, match="fit"):
        baseline.PopularityBaseline().predict(np.array([1]))
    with pytest.raises(ValueError, match="prior_strength"):
        baseline.PopularityBaseline(prior_strength=0)


def test_tiny_model_beats_popularity_baseline(tmp_path: Path) -> None:
    cfg = data.SyntheticConfig(num_users=300, num_items=200, num_topics=8, seq_len=10, seed=0)
    train = data.generate_shards(tmp_path, cfg, 12_800, 2, split="train")
    evals = data.generate_shards(tmp_path, cfg, 6000, 1, split="eval")
    pop = baseline.PopularityBaseline().fit(train)
    ev = next(iter(data.ParquetStream(evals, 6000, shuffle=False)))
    labels = ev["click"].numpy()
    pop_auc = roc_auc(labels, pop.predict(ev["item_id"].numpy())[0])

    mcfg = model.HomefeedModelConfig(
        **data.model_config_kwargs(cfg), embed_dim=16, seq_layers=1, seq_heads=2, cross_layers=2, mlp_dims=(32,),
        dropout=0.0,
    )
    m = _model(mcfg, seed=0)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    steps = 0
    for batch in data.ParquetStream(train, 128, seed=0):
        loss, _ = model.multitask_loss(*m(*model.batch_inputs(batch)), batch["click"], batch["save"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    assert steps == 100
    m.eval()
    with torch.no_grad():
        click_logit, _ = m(*model.batch_inputs(ev))
    model_auc = roc_auc(labels, click_logit.numpy())
    print(f"click AUC: popularity {pop_auc:.4f}, tiny model after {steps} steps {model_auc:.4f}")
    assert pop_auc > 0.55, pop_auc
    assert model_auc > pop_auc + 0.05, (model_auc, pop_auc)
