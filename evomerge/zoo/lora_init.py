"""One LoRA A initialisation shared by every expert of a zoo, informed by the training data.

``Profile.lora_a_init`` picks it:

* ``"random"``: peft's own (Kaiming-uniform) A from one seed (the shipped small zoo);
* ``"eva"``: peft's EVA (explained-variance adaptation): each layer's A is the top ``rank``
  principal directions (right-singular vectors of the centred inputs, unit rows) of that
  layer's inputs on a mixture of every task's training rows; computed once, on the base;
* ``"warmup"``: one LoRA trained ``lora_a_warmup_steps`` steps on that mixture (every task);
  its A is kept;
* ``"contrast"``: per task, ``rank // n_tasks`` rows (the remainder to the first tasks): the
  input directions most active on that task relative to the others (top generalised
  eigenvectors of ``M_task v = l (M_others + d I) v``, ``M`` the uncentred second moment of the
  layer's inputs), unit rows. Each expert can then read through rows that its own task's
  inputs excite and the other tasks' barely do.

Every expert then starts from that A with B = 0 (the base unchanged), so it starts as the base.
Why: with a slow A (``lora_a_lr_ratio``) the experts keep A near the shared one, which keeps
"ab"-space averaging close to delta averaging; a random A gives every expert the same random
input directions, a data-informed A gives them the directions the tasks' inputs occupy.
"""

from __future__ import annotations

import copy

import torch

from evomerge.evaluation.encoding import Encoded

A_INITS = ("random", "eva", "warmup", "contrast")


def lora_config(prof, init: bool | str = True):
    from peft import EvaConfig, LoraConfig

    return LoraConfig(r=prof.rank, lora_alpha=prof.alpha, target_modules=list(prof.target_modules),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", init_lora_weights=init,
                      # rho 1: every layer keeps `rank` (no redistribution across layers); all
                      # token positions (prompt and answer) are the LoRA's inputs
                      eva_config=EvaConfig(rho=1.0, use_label_mask=False) if init == "eva" else None)


def new_peft_model(model, config):
    """``peft.get_peft_model(model, config)`` without the ``FutureWarning`` it makes transformers
    (>= 5) print: peft reads the deprecated ``model.is_gradient_checkpointing`` (transformers'
    new name: ``is_activation_checkpointing``). Only that warning is silenced, only for the call."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def _batches(mix: Encoded, batch_size: int, generator: torch.Generator) -> list[dict]:
    """The mixture's rows in one seeded order, as model-input dicts trimmed to their longest row."""
    order = torch.randperm(len(mix), generator=generator)
    out = []
    for s in range(0, len(mix) - batch_size + 1, batch_size):
        idx = order[s : s + batch_size]
        mask = mix.attention_mask[idx]
        width = int(mask.sum(1).max())
        out.append({"input_ids": mix.input_ids[idx, :width], "attention_mask": mask[:, :width]})
    return out


def eva_a(base, mix: Encoded, prof, seed: int, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """``{module name: A}`` from peft's EVA on ``mix`` (the base is not modified)."""
    from peft.tuners.lora.eva import get_eva_state_dict

    batches = _batches(mix, batch_size, torch.Generator().manual_seed(seed))
    model = copy.deepcopy(base)
    sd = get_eva_state_dict(model, batches, peft_config=lora_config(prof, "eva"), show_progress_bar=False)
    return {k: v.detach().to(torch.float32).clone() for k, v in sd.items()}


def warmup_a(base, mix: Encoded, prof, seed: int) -> dict[str, torch.Tensor]:
    """``{module name: A}`` of one LoRA trained on ``mix`` (all tasks) for ``lora_a_warmup_steps``."""
    from evomerge.zoo.train import train

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = new_peft_model(copy.deepcopy(base), lora_config(prof))
    train(model, model.parameters(), mix, steps=prof.lora_a_warmup_steps, lr=prof.expert_lr,
          batch_size=prof.batch_size, generator=torch.Generator().manual_seed(seed))
    return lora_a_of(model)


def lora_a_of(peft_model) -> dict[str, torch.Tensor]:
    """``{module name (as in the base): A}`` of a peft model's default adapter."""
    out = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            out[name.removeprefix("base_model.model.")] = mod.lora_A["default"].weight.detach().clone()
    return out


@torch.no_grad()
def set_shared_a(peft_model, a: dict[str, torch.Tensor]) -> None:
    """Start a fresh peft model from ``a``: A copied in, B zero (the model is the base again)."""
    seen = set()
    for name, mod in peft_model.named_modules():
        key = name.removeprefix("base_model.model.")
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            if key not in a:
                raise KeyError(f"shared LoRA A has no entry for `{key}`")
            mod.lora_A["default"].weight.copy_(a[key])
            mod.lora_B["default"].weight.zero_()
            seen.add(key)
    if seen != set(a):
        raise KeyError(f"shared LoRA A has entries the model lacks: {sorted(set(a) - seen)[:3]}")


def _moments(base, parts: list[Encoded], names: list[str], rows: int, batch_size: int = 256) -> dict:
    """``{module: [second moment of its inputs per task]}`` over every non-pad position of the
    first ``rows`` rows of each task (float64)."""
    acc: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    cur: dict[str, torch.Tensor] = {}
    mask_now: list[torch.Tensor] = []

    def hook(mod, inp, out, n):
        x = inp[0][mask_now[0]].to(torch.float64)
        cur[n] = cur.get(n, 0) + x.T @ x

    handles = [base.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n in names]
    try:
        with torch.no_grad():
            for part in parts:
                cur.clear()
                count = 0
                for s in range(0, min(rows, len(part)), batch_size):
                    b = part.slice(s, min(s + batch_size, rows, len(part)))
                    mask_now[:] = [b.attention_mask.bool()]
                    count += int(b.attention_mask.sum())
                    base(input_ids=b.input_ids, attention_mask=b.attention_mask)
                for n in names:
                    acc[n].append(cur[n] / count)
    finally:
        for h in handles:
            h.remove()
    return acc


def contrast_directions(mine: torch.Tensor, others: torch.Tensor, m: int, ridge: float = 1e-3) -> torch.Tensor:
    """``m`` unit rows: the top generalised eigenvectors of ``mine v = l (others + d I) v``, with
    ``d = ridge * trace(others) / dim``."""
    dim = others.shape[0]
    reg = others + ridge * torch.trace(others) / dim * torch.eye(dim, dtype=others.dtype)
    chol = torch.linalg.cholesky(reg)
    inv = torch.linalg.solve_triangular(chol, torch.eye(dim, dtype=others.dtype), upper=False)
    _, w = torch.linalg.eigh(inv @ mine @ inv.T)
    v = inv.T @ w[:, -m:].flip(1)  # largest first
    return (v / v.norm(dim=0, keepdim=True)).T


def contrast_a(base, parts: list[Encoded], prof, rows: int = 1024) -> dict[str, torch.Tensor]:
    """``{module name: A}``: per task, the directions its inputs excite more than the others' do."""
    names = [n for n, _ in base.named_modules() if n.split(".")[-1] in prof.target_modules]
    moments = _moments(base, parts, names, rows)
    n_tasks = len(parts)
    per = [prof.rank // n_tasks + (1 if t < prof.rank % n_tasks else 0) for t in range(n_tasks)]
    out = {}
    for n in names:
        ms = moments[n]
        blocks = [contrast_directions(ms[t], sum(ms[s] for s in range(n_tasks) if s != t) / (n_tasks - 1), per[t])
                  for t in range(n_tasks) if per[t] > 0]
        out[n] = torch.cat(blocks).to(torch.float32)
    return out


def shared_a(kind: str, base, mix: Encoded, prof, seed: int,
             parts: list[Encoded] | None = None) -> dict[str, torch.Tensor] | None:
    """The shared A for ``kind`` (None for ``"random"``: peft's seeded init is used as before);
    ``parts``: the training rows per task (``"contrast"``)."""
    if kind == "random":
        return None
    if kind == "contrast":
        return contrast_a(base, parts, prof)
    if kind == "eva":
        return eva_a(base, mix, prof, seed)
    if kind == "warmup":
        return warmup_a(base, mix, prof, seed)
    raise ValueError(f"lora_a_init must be one of {A_INITS}. Got {kind!r} instead.")
