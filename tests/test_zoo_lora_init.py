"""A data-informed LoRA A shared by every expert (``Profile.lora_a_init``): peft's EVA against an
independent PCA of the recorded layer inputs, and tiny builds with "eva" and "warmup"."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from evomerge.errors import ConfigError
from evomerge.evaluation.encoding import encode_pairs
from evomerge.evaluation.task_data import load_examples
from evomerge.experts.peft_io import load_peft_adapter
from evomerge.zoo import build_zoo
from evomerge.zoo.build import _concat, resolve_profile
from evomerge.zoo.lora_init import contrast_a, eva_a
from evomerge.zoo.model import PROFILES, recipe_hash
from _zoo_helpers import ab_error

torch.set_num_threads(1)

TINY = PROFILES["tiny"]


@pytest.fixture(scope="module")
def eva_zoo(tmp_path_factory):
    # A frozen (lr ratio 0): every saved expert's A is the shared one
    prof = dataclasses.replace(TINY, lora_a_init="eva", lora_a_lr_ratio=0.0)
    return build_zoo(tmp_path_factory.mktemp("zoo") / "eva", profile=prof, progress=False)


def _mix(zoo):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.base_dir)
    parts = []
    for t in zoo.tasks:
        ds = load_examples(zoo.task_files(t)["train"])
        parts.append(encode_pairs(tok, list(ds["prompt"]), list(ds["answer"]), t))
    return _concat(parts)


def _recorded_pca(model, mix, names, rank):
    """Top ``rank`` principal directions (rows) of each module's inputs at every non-pad position:
    forward hooks on the plain model, centred inputs, ``torch.linalg.svd``."""
    seen: dict[str, torch.Tensor] = {}
    mask = mix.attention_mask.bool()
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0][mask].detach().double())) for n in names]
    with torch.no_grad():
        model(input_ids=mix.input_ids, attention_mask=mix.attention_mask)
    for h in hooks:
        h.remove()
    out = {}
    for n, x in seen.items():
        _, s, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
        out[n] = (vh[:rank], s)
    return out


def test_eva_a_is_the_top_principal_directions_of_the_layer_inputs(eva_zoo):
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(eva_zoo.base_dir).eval()
    mix = _mix(eva_zoo)
    mix = mix.slice(0, 300)  # one batch holding every row: peft's incremental PCA sees all of them
    a = eva_a(base, mix, TINY, seed=3, batch_size=len(mix))
    names = [n for n, _ in base.named_modules() if n.split(".")[-1] in TINY.target_modules]
    assert sorted(a) == sorted(names)
    ref = _recorded_pca(base, mix, names, TINY.rank)
    for n in names:
        v, s = ref[n]
        got = a[n].double()
        assert got.shape == v.shape == (TINY.rank, base.get_submodule(n).in_features)
        assert torch.allclose(got.norm(dim=1), torch.ones(TINY.rank, dtype=torch.float64), atol=1e-5)  # unit rows
        # same directions up to sign, one by one where the singular values are apart
        cos = (got * v).sum(1).abs()
        gap = torch.minimum(s[: TINY.rank] - s[1 : TINY.rank + 1],
                            torch.cat([s[:1] * 0 + float("inf"), s[: TINY.rank - 1] - s[1 : TINY.rank]]))
        apart = gap > 0.05 * s[0]
        assert bool(apart[0]) and float(cos[apart].min()) > 0.999, (n, cos, gap / s[0])
        # and the same subspace as a whole
        assert float(torch.linalg.matrix_norm(got.T @ got - v.T @ v)) < 1e-3, n


def _parts(zoo):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo.base_dir)
    return [encode_pairs(tok, list(ds["prompt"]), list(ds["answer"]), t)
            for t in zoo.tasks for ds in [load_examples(zoo.task_files(t)["train"])]]


def test_contrast_a_is_each_tasks_generalised_eigenvectors(eva_zoo):
    import scipy.linalg
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(eva_zoo.base_dir).eval()
    parts = [p.slice(0, 120) for p in _parts(eva_zoo)]
    prof = dataclasses.replace(TINY, rank=5)  # two tasks: 3 rows for the first, 2 for the second
    a = contrast_a(base, parts, prof, rows=120)
    names = sorted(a)
    # independent: each task's uncentred input second moment from forward hooks, then scipy's
    # generalised symmetric eigensolver
    moments = []
    for p in parts:
        seen: dict[str, torch.Tensor] = {}
        mask = p.attention_mask.bool()
        hooks = [base.get_submodule(n).register_forward_hook(
            lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0][mask].double())) for n in names]
        with torch.no_grad():
            base(input_ids=p.input_ids, attention_mask=p.attention_mask)
        for h in hooks:
            h.remove()
        moments.append({n: (x.T @ x / len(x)).numpy() for n, x in seen.items()})
    for n in names:
        got = a[n].double()
        assert got.shape == (5, base.get_submodule(n).in_features)
        for t, (lo, hi) in enumerate([(0, 3), (3, 5)]):
            mine, other = moments[t][n], moments[1 - t][n]
            reg = other + 1e-3 * other.trace() / len(other) * torch.eye(len(other)).numpy()
            w, v = scipy.linalg.eigh(mine, reg)
            ref = torch.from_numpy(v[:, ::-1][:, : hi - lo].T.copy())
            ref = ref / ref.norm(dim=1, keepdim=True)
            cos = (got[lo:hi] * ref).sum(1).abs()
            assert float(cos.min()) > 0.999, (n, t, cos, w[::-1][:4])
            # the rows excite this task's inputs far more than the other task's (the point of it)
            e_mine = torch.einsum("rd,de,re->r", got[lo:hi], torch.from_numpy(mine), got[lo:hi])
            e_other = torch.einsum("rd,de,re->r", got[lo:hi], torch.from_numpy(other), got[lo:hi])
            assert bool((e_mine > e_other).all()), (n, t)


def test_eva_build_shares_one_a_and_ab_equals_delta(eva_zoo):
    from transformers import LlamaForCausalLM

    assert eva_zoo.manifest["training"]["lora_a_init"] == "eva"
    assert eva_zoo.manifest["recipe"] != recipe_hash(TINY)  # a different world, a different fingerprint
    experts = [load_peft_adapter(eva_zoo.expert_dirs[t]).modules for t in eva_zoo.tasks]
    base = LlamaForCausalLM.from_pretrained(eva_zoo.base_dir).eval()
    a = eva_a(base, _mix(eva_zoo), TINY, seed=1)  # what the build computed (seed 0 * 1000 + 1)
    for key, mod in experts[0].items():
        assert torch.equal(mod.A, experts[1][key].A)  # one shared A, kept (lr ratio 0)
        assert torch.allclose(mod.A, a[key.removesuffix(".weight")], atol=1e-6), key
        assert not torch.equal(mod.B, experts[1][key].B)  # the experts differ through B
    assert ab_error(experts) < 1e-6
    assert eva_zoo.manifest["ab_fidelity"] == pytest.approx(0.0, abs=1e-5)


def test_warmup_build_starts_every_expert_from_one_trained_a(tmp_path):
    prof = dataclasses.replace(TINY, lora_a_init="warmup", lora_a_warmup_steps=4, lora_a_lr_ratio=0.0)
    warm = build_zoo(tmp_path / "warm", profile=prof, progress=False)
    rand = build_zoo(tmp_path / "rand", profile=dataclasses.replace(TINY, lora_a_lr_ratio=0.0), progress=False)
    ew = [load_peft_adapter(warm.expert_dirs[t]).modules for t in warm.tasks]
    er = [load_peft_adapter(rand.expert_dirs[t]).modules for t in rand.tasks]
    key = next(iter(ew[0]))
    assert torch.equal(ew[0][key].A, ew[1][key].A) and torch.equal(er[0][key].A, er[1][key].A)
    # the warm-up trained A away from peft's seeded init (the random build keeps that init)
    assert float((ew[0][key].A - er[0][key].A).abs().max()) > 1e-4
    assert ab_error(ew) < 1e-6 and warm.manifest["training"]["lora_a_warmup_steps"] == 4
    assert "lora_a_init" not in rand.manifest["training"]  # a "random" zoo's manifest is as before


def test_bad_lora_a_init_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="lora_a_init must be one of"):
        resolve_profile(dataclasses.replace(TINY, lora_a_init="pca"))
    with pytest.raises(ConfigError, match="needs shared_init"):
        build_zoo(tmp_path / "z", profile=dataclasses.replace(TINY, lora_a_init="eva", shared_init=False),
                  progress=False)
    assert not (tmp_path / "z").exists()


def test_new_profile_fields_leave_the_shipped_recipes_unchanged():
    # zoos built before `lora_a_init` existed stay current: the field enters the hash only when set
    assert recipe_hash(PROFILES["small"]) == "afacb86d5591eab1"
    assert recipe_hash(dataclasses.replace(PROFILES["default"], lora_a_init="random", lora_a_warmup_steps=100,
                                           rank=8, alpha=16, lora_a_lr_ratio=1.0)) == "bfbc78f5446c443b"
    # the shipped default is the warm-up recipe of issue 11
    assert recipe_hash(PROFILES["default"]) == "e29da81df1d99656"
    assert recipe_hash(dataclasses.replace(PROFILES["default"], lora_a_warmup_steps=50, lora_a_init="warmup")) \
        != recipe_hash(dataclasses.replace(PROFILES["default"], lora_a_init="warmup"))
