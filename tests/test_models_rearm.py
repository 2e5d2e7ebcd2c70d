"""REARM against a naive implementation written straight from REARM_SPEC.md sections 4-8: dense
graphs, nn.MultiheadAttention, Python loops over nodes. Also gradient flow and ablations."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rearm.data.synth import make_synthetic
from rearm.models.layers import ScalarTokenAttention
from rearm.models.rearm import REARM

U, I, D = 7, 9, 8


def random_graph(n: int, generator: torch.Generator, density: float = 0.4) -> torch.Tensor:
    dense = (torch.rand(n, n, generator=generator) < density).float()
    dense = dense * torch.rand(n, n, generator=generator)
    return dense.to_sparse_csr()


def bipartite(generator: torch.Generator) -> torch.Tensor:
    r = (torch.rand(U, I, generator=generator) < 0.4).float()
    r[0, 0] = 1.0
    a = torch.zeros(U + I, U + I)
    a[:U, U:] = r
    a[U:, :U] = r.T
    degree = a.sum(1)
    scale = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    return (scale[:, None] * a * scale[None, :]).to_sparse_csr()


def make_model(modalities=("image", "text"), **kwargs) -> REARM:
    generator = torch.Generator().manual_seed(0)
    dims = {"image": 12, "text": 5, "audio": 3}
    item_features = {m: torch.rand(I, dims[m], generator=generator) for m in modalities}
    user_features = {m: torch.rand(U, dims[m], generator=generator) for m in modalities}
    torch.manual_seed(1)
    defaults = dict(
        embedding_dim=D,
        num_layers=2,
        rank=2,
        contrastive_weight=0.3,
        orthogonal_weight=0.7,
        self_attention_dropout=0.0,
        cross_attention_dropout=0.0,
    )
    defaults.update(kwargs)
    return REARM(
        item_features,
        user_features,
        bipartite(generator),
        random_graph(I, generator),
        random_graph(U, generator),
        **defaults,
    )


def mha_from(block: ScalarTokenAttention) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(embed_dim=1, num_heads=1, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.in_proj_weight)
        mha.in_proj_bias.copy_(block.in_proj_bias)
        mha.out_proj.weight.copy_(block.out_proj.weight)
        mha.out_proj.bias.copy_(block.out_proj.bias)
    return mha.eval()


def test_scalar_token_attention_matches_multihead_attention():
    torch.manual_seed(3)
    block = ScalarTokenAttention().eval()
    with torch.no_grad():
        block.out_proj.bias.fill_(0.3)
        block.in_proj_bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
    query, key = torch.randn(5, 16), torch.randn(5, 16)
    expected, _ = mha_from(block)(query.unsqueeze(2), key.unsqueeze(2), key.unsqueeze(2))
    assert torch.allclose(block(query, key), expected.squeeze(2), atol=1e-6)


def naive_forward(model: REARM):
    """Spec sections 4-7, literally: dense matrices and per-node loops."""
    act, norm = model.activation, model.norm
    graph_a = model.bipartite.to_dense()

    def homography(ids, tables, projections, graph, layers):
        z = torch.cat([ids] + [p(t) for p, t in zip(projections, tables)], dim=1)
        for _ in range(layers):
            z = graph.to_dense() @ z
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return z[:, :D], [z[:, D * (m + 1) : D * (m + 2)] for m in range(len(tables))]

    id_i, f = homography(
        model.item_id.weight,
        model.item_tables,
        model.item_projections,
        model.item_homograph,
        model.item_homograph_layers,
    )
    id_u, g = homography(
        model.user_id.weight,
        model.user_tables,
        model.user_projections,
        model.user_homograph,
        model.user_homograph_layers,
    )

    def attend(block, q, kv):
        out, _ = mha_from(block)(q.unsqueeze(2), kv.unsqueeze(2), kv.unsqueeze(2))
        return out.squeeze(2)

    a = [
        act(norm(fm + attend(model.attention.self_attention[m], fm, fm))) for m, fm in enumerate(f)
    ]
    if len(a) == 2:  # the paper's two-modality formulas
        c = [
            act(norm(a[0] + attend(model.attention.cross_attention[0], a[1], a[0]))),
            act(norm(a[1] + attend(model.attention.cross_attention[1], a[0], a[1]))),
        ]
    else:
        c = [
            act(
                norm(
                    a[m]
                    + torch.stack(
                        [
                            attend(model.attention.cross_attention[m], a[o], a[m])
                            for o in range(len(a))
                            if o != m
                        ]
                    ).mean(0)
                )
            )
            for m in range(len(a))
        ]
    b = [act(gm) for gm in g]
    f0 = torch.cat([torch.cat(b, 1), torch.cat(c, 1)], 0)
    e0 = torch.cat([id_u, id_i], 0)
    layers_f, layers_e = [f0], [e0]
    for _ in range(model.num_layers):
        layers_f.append(graph_a @ layers_f[-1])
        layers_e.append(graph_a @ layers_e[-1])
    big_f = torch.stack(layers_f).mean(0)
    big_e = torch.stack(layers_e).mean(0)

    def meta(net, fs, es):
        rows = []
        w1s = [net.first(net.knowledge(fs[n])).view(D, -1) for n in range(len(fs))]
        w2s = [net.second(net.knowledge(fs[n])).view(-1, D) for n in range(len(fs))]
        b1, b2 = torch.stack(w1s).mean(0), torch.stack(w2s).mean(0)
        for n in range(len(fs)):
            l1 = torch.softmax(w1s[n] + b1, dim=0)  # over the d axis
            l2 = torch.softmax(w2s[n] + b2, dim=0)  # over the r axis
            rows.append((es[n] @ l1) @ l2)
        return torch.stack(rows)

    s = torch.cat(
        [meta(model.user_meta, big_f[:U], big_e[:U]), meta(model.item_meta, big_f[U:], big_e[U:])],
        0,
    )
    views = [big_f[:, D * m : D * (m + 1)] for m in range(len(model.modalities))]
    h = torch.cat([act(v) + big_e for v in views] + [act(s) + big_e], 1)
    return h, views


def naive_losses(model: REARM, users, pos, neg):
    h, views = naive_forward(model)
    scores_pos = torch.stack([h[users[b]] @ h[U + pos[b]] for b in range(len(users))])
    scores_neg = torch.stack([h[users[b]] @ h[U + neg[b]] for b in range(len(users))])
    bpr = -torch.log(torch.sigmoid(scores_pos - scores_neg)).mean()
    pairs = list(itertools.combinations(range(len(views)), 2))
    tau = model.contrastive_temperature

    def info_nce_naive(x, y):
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
        total = 0.0
        for n in range(len(x)):
            total = total - torch.log(
                torch.exp(x[n] @ y[n] / tau)
                / sum(torch.exp(x[n] @ y[m] / tau) for m in range(len(x)))
            )
        return total / len(x)

    def diff(x, y):
        x, y = x - x.mean(0), y - y.mean(0)
        x = x / x.norm(dim=1, keepdim=True)
        y = y / y.norm(dim=1, keepdim=True)
        return ((x.T @ y) ** 2).mean()

    unique_users = sorted(set(users.tolist()))
    unique_items = [U + i for i in sorted(set(pos.tolist()) | set(neg.tolist()))]
    cl = sum(
        info_nce_naive(views[a][unique_users], views[b][unique_users])
        + info_nce_naive(views[a][unique_items], views[b][unique_items])
        for a, b in pairs
    ) / len(pairs)
    orth = sum(
        diff(views[a][users], views[b][users]) + diff(views[a][U + pos], views[b][U + pos])
        for a, b in pairs
    ) / len(pairs)
    return {
        "bpr": bpr,
        "contrastive": model.contrastive_weight * cl,
        "orthogonal": model.orthogonal_weight * orth,
    }


BATCH = (torch.tensor([0, 3, 3, 6]), torch.tensor([1, 2, 5, 8]), torch.tensor([0, 4, 7, 2]))


@pytest.mark.parametrize("modalities", [("image", "text"), ("image", "text", "audio")])
def test_forward_and_losses_match_naive_spec(modalities):
    model = make_model(modalities).eval()
    with torch.no_grad():
        h, _, _ = model.forward_all()
        expected_h, _ = naive_forward(model)
        assert torch.allclose(h, expected_h, atol=1e-5)
        terms = model.loss(*BATCH)
        expected = naive_losses(model, *BATCH)
    assert set(terms) == {"bpr", "contrastive", "orthogonal"}
    for name in terms:
        assert torch.allclose(terms[name], expected[name], rtol=1e-4, atol=1e-7), name


def test_single_modality_drops_contrastive_and_orthogonal_terms():
    model = make_model(("text",)).eval()
    terms = model.loss(*BATCH)
    assert set(terms) == {"bpr"}
    user, item = model.embed()
    assert user.shape == (U, 2 * D) and item.shape == (I, 2 * D)


def test_gradient_reaches_trainable_parameters_and_not_the_detached_knowledge():
    model = make_model().train()
    sum(model.loss(*BATCH).values()).backward()
    for name, parameter in model.named_parameters():
        if ".knowledge." in name:
            # [quirk] the knowledge vector is detached: this Linear never receives a gradient
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_knowledge_trains_when_not_detached():
    model = make_model(detach_knowledge=False).train()
    sum(model.loss(*BATCH).values()).backward()
    assert model.user_meta.knowledge.weight.grad.abs().sum() > 0


def test_frozen_feature_tables_get_no_gradient():
    model = make_model(train_feature_tables=False).train()
    sum(model.loss(*BATCH).values()).backward()
    assert all(p.grad is None for p in model.item_tables)
    assert all(p.grad is None for p in model.user_tables)
    assert model.item_projections[0].weight.grad is not None


def _same_init(**kwargs):
    return make_model(**kwargs).eval()


def test_ablation_no_meta_drops_only_the_meta_block():
    full, ablated = _same_init(), _same_init(use_meta=False)
    h_full, _, _ = full.forward_all()
    h_ablated, _, _ = ablated.forward_all()
    assert h_ablated.shape[1] == 2 * D
    assert torch.allclose(h_full[:, : 2 * D], h_ablated, atol=1e-6)


@pytest.mark.parametrize("modalities", [("image",), ("image", "text"), ("image", "text", "audio")])
@pytest.mark.parametrize("use_meta", [True, False])
def test_embedding_blocks_name_each_modality_then_meta(modalities, use_meta):
    model = make_model(modalities, use_meta=use_meta).eval()
    expected = [(m, D) for m in modalities] + ([("meta", D)] if use_meta else [])
    assert model.embedding_blocks() == expected
    h, _, _ = model.forward_all()
    assert h.shape[1] == sum(width for _, width in expected)


def test_ablation_loss_switches_change_only_their_term():
    full = _same_init().loss(*BATCH)
    no_orth = _same_init(use_orthogonal=False).loss(*BATCH)
    no_cl = _same_init(use_contrastive=False).loss(*BATCH)
    assert "orthogonal" not in no_orth and torch.allclose(
        no_orth["contrastive"], full["contrastive"]
    )
    assert "contrastive" not in no_cl and torch.allclose(no_cl["orthogonal"], full["orthogonal"])
    assert torch.allclose(no_orth["bpr"], full["bpr"]) and torch.allclose(no_cl["bpr"], full["bpr"])


def test_ablation_no_attention_feeds_views_through_activation_only():
    model = _same_init(use_attention=False)
    views = [torch.randn(I, D), torch.randn(I, D)]
    out = model.attention(views)
    assert all(torch.allclose(o, model.activation(v)) for o, v in zip(out, views))


def test_notes_name_the_quirks_in_effect():
    assert make_model().notes() == []
    notes = make_model(self_attention_dropout=1.0, train_feature_tables=False).notes()
    assert len(notes) == 2 and "Sports" in notes[0] and "frozen" in notes[1]


def test_dropout_one_makes_self_attention_constant_in_training():
    block = ScalarTokenAttention(dropout=1.0).train()
    with torch.no_grad():
        block.out_proj.bias.fill_(0.25)
    out = block(torch.randn(4, 8), torch.randn(4, 8))
    assert torch.allclose(out, torch.full_like(out, 0.25))
    block.eval()
    assert not torch.allclose(block(torch.randn(4, 8), torch.randn(4, 8)), torch.full((4, 8), 0.25))


def _pair(dropout: float):
    torch.manual_seed(5)
    fused = ScalarTokenAttention(dropout=dropout, fused=True)
    plain = ScalarTokenAttention(dropout=dropout, fused=False)
    plain.load_state_dict(fused.state_dict())
    with torch.no_grad():
        for block in (fused, plain):
            block.in_proj_bias.copy_(torch.tensor([0.2, -0.1, 0.3]))
            block.out_proj.bias.fill_(-0.05)
    return fused, plain


def test_fused_attention_matches_tensor_version_values_and_gradients():
    fused, plain = _pair(0.0)
    query = torch.randn(50, 16, requires_grad=True)
    key = torch.randn(50, 16, requires_grad=True)
    grads = []
    for block in (fused, plain):
        out = block(query, key)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append(
            [out.detach(), query.grad.clone(), key.grad.clone()]
            + [p.grad.clone() for p in block.parameters()]
        )
        query.grad = key.grad = None
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_fused_attention_self_attention_gradient_sums_both_inputs():
    fused, plain = _pair(0.0)
    x = torch.randn(20, 8, requires_grad=True)
    fused(x, x).pow(2).sum().backward()
    fused_grad = x.grad.clone()
    x.grad = None
    plain(x, x).pow(2).sum().backward()
    assert torch.allclose(fused_grad, x.grad, atol=1e-5)


def test_fused_attention_dropout_matches_tensor_formula_with_the_same_mask():
    from rearm.models.kernels import FusedScalarTokenAttention, dropout_keep_mask

    fused, _ = _pair(0.4)
    n, d, p, seed = 30, 16, 0.4, 987654321
    query = torch.randn(n, d, requires_grad=True)
    key = torch.randn(n, d, requires_grad=True)
    weights = [fused.in_proj_weight, fused.in_proj_bias, fused.out_proj.weight, fused.out_proj.bias]
    out = FusedScalarTokenAttention.apply(query, key, *weights, p, seed)
    probe = torch.randn(n, d)
    grads = torch.autograd.grad((out * probe).sum(), [query, key, *weights])

    mask = torch.from_numpy(dropout_keep_mask(n, d, p, seed))
    assert 0.55 < mask.mean().item() < 0.65
    w, b = fused.in_proj_weight[:, 0], fused.in_proj_bias
    q, k, v = query * w[0] + b[0], key * w[1] + b[1], key * w[2] + b[2]
    attention = torch.softmax(q.unsqueeze(2) * k.unsqueeze(1), dim=-1) * mask / (1 - p)
    expected = fused.out_proj.weight[0, 0] * torch.bmm(attention, v.unsqueeze(2)).squeeze(2)
    expected = expected + fused.out_proj.bias[0]
    expected_grads = torch.autograd.grad((expected * probe).sum(), [query, key, *weights])
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-3)


def test_fused_attention_dropout_keeps_the_expected_fraction_unbiased():
    fused, _ = _pair(0.4)
    fused.train()
    with torch.no_grad():
        fused.in_proj_weight[2, 0] = 0.0  # v = bias: output mean is exactly the bias w/o dropout
        fused.in_proj_bias[2] = 1.0
        fused.out_proj.weight.fill_(1.0)
        fused.out_proj.bias.fill_(0.0)
        out = fused(torch.randn(4000, 32), torch.randn(4000, 32))
    assert abs(out.mean().item() - 1.0) < 0.01
    assert not torch.allclose(out, torch.ones_like(out))


def test_table_projection_matches_linear_including_accumulation():
    from rearm.models.layers import TableProjection

    torch.manual_seed(2)
    projection = TableProjection(12, 4)
    linear = nn.Linear(12, 4)
    linear.load_state_dict(projection.state_dict())
    table_a = nn.Parameter(torch.randn(30, 12))
    table_b = nn.Parameter(table_a.detach().clone())
    probe = torch.randn(30, 4)
    for _ in range(2):  # the second pass accumulates into .grad
        (projection(table_a) * probe).sum().backward()
        (linear(table_b) * probe).sum().backward()
    assert torch.allclose(projection(table_a), linear(table_b))
    assert torch.allclose(table_a.grad, table_b.grad, atol=1e-6)
    assert torch.allclose(projection.weight.grad, linear.weight.grad, atol=1e-5)
    assert torch.allclose(projection.bias.grad, linear.bias.grad, atol=1e-5)
    table_a.grad = None  # as zero_grad(set_to_none=True): the buffer is reused, values fresh
    (projection(table_a) * probe).sum().backward()
    assert torch.allclose(table_a.grad, table_b.grad / 2, atol=1e-6)


@pytest.fixture(scope="module")
def small_dataset():
    from rearm.data.synth import make_synthetic

    return make_synthetic(
        num_users=50,
        num_items=30,
        modalities={"image": 8, "text": 4},
        seed=4,
        interactions_per_user=6,
    )


def _dense(graph):
    return None if graph is None else graph.to_dense()


def _graph_options():
    return dict(
        user_knn_k=5, item_knn_k=4, user_cooccurrence_weight=0.4, item_cooccurrence_weight=0.2
    )


def test_graph_ablations_change_only_the_graphs_they_name(small_dataset):
    from rearm.graphs import build_graphs, modality_weights

    full = REARM.from_dataset(small_dataset, **_graph_options())
    graphs = build_graphs(
        small_dataset,
        user_knn_k=5,
        item_knn_k=4,
        user_modality_weights=modality_weights(small_dataset.modalities, 0.2),
        item_modality_weights=modality_weights(small_dataset.modalities, 0.0),
        user_cooccurrence_weight=0.4,
        item_cooccurrence_weight=0.2,
    )
    assert torch.allclose(_dense(full.user_homograph), _dense(graphs.user_homograph))
    cases = {
        "no_user_graph": (None, _dense(full.item_homograph)),
        "no_item_graph": (_dense(full.user_homograph), None),
        "no_homographs": (None, None),
        "cooccurrence_only": (_dense(graphs.user_cooccurrence), _dense(graphs.item_cooccurrence)),
        "semantic_only": (_dense(graphs.user_interest_graph), _dense(graphs.item_semantic)),
    }
    for flag, (user_graph, item_graph) in cases.items():
        model = REARM.from_dataset(small_dataset, **_graph_options(), **{flag: True})
        for got, want in ((model.user_homograph, user_graph), (model.item_homograph, item_graph)):
            if want is None:
                assert got is None, flag
            else:
                assert torch.allclose(_dense(got), want, atol=1e-6), flag
        assert torch.equal(_dense(model.bipartite), _dense(full.bipartite)), flag
        assert model.num_layers == full.num_layers and model.use_meta, flag


def test_constructor_and_from_dataset_defaults_agree():
    # both signatures carry REARM's defaults (the constructor for direct use, from_dataset for
    # configs); a change to one must reach the other
    import inspect

    init = inspect.signature(REARM.__init__).parameters
    hyper = REARM.hyperparameters()
    shared = set(init) & set(hyper)
    assert len(shared) >= 12
    for name in shared:
        assert init[name].default == hyper[name][1], name
    switches = [name for name in init if name.startswith("use_")]
    assert len(switches) == 4
    for name in switches:  # use_X=True in the constructor is no_X=False in the config
        assert init[name].default is True and hyper[f"no_{name[4:]}"][1] is False, name


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_divergence_guard_skips_tables_because_their_projection_catches_them(bad):
    """The guard checks every gradient but the feature tables'; a non-finite gradient reaching a
    table through its projection's output makes that projection's (checked) gradient non-finite."""
    model = make_model().train()
    checked = {id(p) for p in model.gradient_checked_parameters()}
    tables = list(model.item_tables) + list(model.user_tables)
    assert not any(id(p) in checked for p in tables)
    assert all(
        id(p) in checked
        for p in model.parameters()
        if p.requires_grad and all(p is not t for t in tables)
    )

    projection = model.item_projections[0]

    def poison(module, inputs, output):
        def hook(grad):
            grad = grad.clone()
            grad[3, 5] = bad
            return grad

        output.register_hook(hook)

    handle = projection.register_forward_hook(poison)
    sum(model.loss(*BATCH).values()).backward()
    handle.remove()
    assert not torch.isfinite(model.item_tables[0].grad).all()
    assert not torch.isfinite(projection.weight.grad).all()


def test_rearm_training_is_deterministic_on_two_threads():
    """The same seed gives the same gradients bit for bit with two threads: the item side's
    meta-network rows are gathered with index_select, whose backward accumulates repeated items
    in a fixed order (indexing's accumulate did not)."""
    from rearm.models import get_model
    from rearm.training.threads import set_threads

    before = torch.get_num_threads()
    set_threads(2)
    try:
        dataset = make_synthetic(num_users=300, num_items=200, seed=3)
        torch.manual_seed(0)
        model = get_model("rearm").from_dataset(dataset).train()
        users = torch.randint(0, 300, (512,))
        items = torch.randint(0, 200, (1024,))  # many repeated items

        def gradients():
            torch.manual_seed(1)
            model.zero_grad()
            sum(model.loss(users, items[:512], items[512:]).values()).backward()
            return [p.grad.clone() for p in model.parameters() if p.grad is not None]

        first = gradients()
        for _ in range(3):
            assert all(torch.equal(a, b) for a, b in zip(first, gradients()))
    finally:
        set_threads(before)
