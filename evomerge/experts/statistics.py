"""Data-aware statistics for Fisher merging and RegMean on a transformers causal LM.

Each expert's task vector is applied to the base model in memory (``torch.func.functional_call``,
the base weights are never modified) and run on a few examples of that expert's task:

* ``fisher_diagonals``: mean over examples of the squared gradient of the answer tokens'
  log-likelihood (empirical Fisher, one example per backward pass) w.r.t. each adapted weight.
* ``gram_matrices``: ``X^T X / T`` of the inputs of each adapted ``nn.Linear`` (T = number of
  non-padding tokens), collected with forward hooks.

Examples are (prompt, answer) rows; a sequence is ``prompt + answer + eos`` and only the answer
(and eos) tokens are scored, the same convention as the evaluator.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch

from evomerge.errors import DataError
from evomerge.experts.types import TensorDict


def encode_examples(tokenizer, examples, n: int | None = None, source: str = "data") -> list[tuple[torch.Tensor, int]]:
    """``[(ids[T], prompt_len)]`` for up to ``n`` rows with ``prompt``/``answer`` fields; rows are
    named in errors as the evaluator names them (``line N`` of a JSONL file, else ``row N``)."""
    from evomerge.evaluation.encoding import check_eos, row_names

    check_eos(tokenizer)  # (blames the base folder's tokenizer, not the data)
    rows = list(examples)[: n if n is not None else None]
    if not rows:
        raise DataError(f"{source}: no examples")
    where = row_names(rows)
    out = []
    for i, row in enumerate(rows):
        p = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        a = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        if not p:
            raise DataError(f"{source}: {where[i]} has an empty prompt")
        out.append((torch.tensor(list(p) + list(a) + [tokenizer.eos_token_id], dtype=torch.long), len(p)))
    return out


def _params_with(model, delta: Mapping[str, torch.Tensor], grad_keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Base parameters plus ``delta``; ``grad_keys`` become leaves that require grad."""
    grad_keys = set(grad_keys)
    params: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if name in delta:
            t = t + delta[name].to(t.device, t.dtype)
        if name in grad_keys:
            t = t.clone().requires_grad_(True)
        params[name] = t
    missing = sorted(set(delta) - set(params))
    if missing:
        raise DataError(f"the base model has no parameter(s) {missing[:3]} that the expert changes")
    return params


def _answer_loglik(logits: torch.Tensor, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Sum of log p(token) over the answer tokens (position t predicts token t+1)."""
    logp = torch.log_softmax(logits[0, prompt_len - 1 : -1].float(), dim=-1)
    target = ids[prompt_len:]
    return logp.gather(-1, target[:, None]).sum()


def fisher_diagonals(
    model,
    expert: Mapping[str, torch.Tensor],
    examples,
    tokenizer,
    n: int | None = None,
    keys: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> TensorDict:
    """Diagonal empirical Fisher of ``base + expert`` for the weights in ``keys`` (default: the expert's)."""
    from torch.func import functional_call

    keys = list(expert) if keys is None else list(keys)
    enc = encode_examples(tokenizer, examples, n)
    params = _params_with(model, expert, keys)
    acc = {k: torch.zeros_like(params[k], dtype=torch.float32) for k in keys}
    for ids, plen in enc:
        ids = ids.to(device)
        logits = functional_call(model, params, args=(), kwargs={"input_ids": ids[None]}).logits
        ll = _answer_loglik(logits, ids, plen)
        grads = torch.autograd.grad(ll, [params[k] for k in keys])
        for k, g in zip(keys, grads):
            acc[k] += g.detach().float() ** 2
    return {k: v / len(enc) for k, v in acc.items()}


def linear_modules(model, keys: Iterable[str]) -> dict[str, torch.nn.Linear]:
    """``{weight key: nn.Linear}`` for the keys that are weights of ``nn.Linear`` layers."""
    mods = dict(model.named_modules())
    out = {}
    for k in keys:
        if k.endswith(".weight"):
            m = mods.get(k[: -len(".weight")])
            if isinstance(m, torch.nn.Linear):
                out[k] = m
    return out


def gram_matrices(
    model,
    expert: Mapping[str, torch.Tensor],
    examples,
    tokenizer,
    n: int | None = None,
    keys: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> TensorDict:
    """``X^T X / T`` of the inputs of each ``nn.Linear`` in ``keys`` under ``base + expert``."""
    from torch.func import functional_call

    keys = list(expert) if keys is None else list(keys)
    layers = linear_modules(model, keys)
    enc = encode_examples(tokenizer, examples, n)
    params = _params_with(model, expert)
    acc = {k: torch.zeros((m.in_features, m.in_features), dtype=torch.float32, device=device) for k, m in layers.items()}
    tokens = 0
    handles = []

    def hook_for(key):
        def hook(_module, inputs):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            acc[key] += x.T @ x

        return hook

    try:
        for k, m in layers.items():
            handles.append(m.register_forward_pre_hook(hook_for(k)))
        with torch.no_grad():
            for ids, _ in enc:
                functional_call(model, params, args=(), kwargs={"input_ids": ids.to(device)[None]})
                tokens += int(ids.numel())
    finally:
        for h in handles:
            h.remove()
    return {k: v / tokens for k, v in acc.items()}


def load_model_and_tokenizer(base_dir, device: str | torch.device = "cpu"):
    """The base causal LM (fp32, eval mode) and its tokenizer from a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.errors import ExpertLoadError

    try:
        tok = AutoTokenizer.from_pretrained(str(base_dir))
    except Exception as err:
        raise ExpertLoadError(f"{base_dir}: cannot load a tokenizer for data statistics ({err})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    except Exception as err:
        raise ExpertLoadError(f"{base_dir}: cannot load the base model for data statistics ({err})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def check_data_files(needs: Iterable[str], names: Sequence[str], data_files: Sequence) -> None:
    """The task files statistics read: one per expert (``names``) or one shared by all."""
    from evomerge.errors import ConfigError

    if not data_files:
        raise ConfigError(
            f"merge.data: this merge method needs data statistics ({', '.join(sorted(needs))}) and no expert has task "
            f"data (experts {', '.join(f'`{n}`' for n in names)}); give task files with merge.data "
            "(--data FILE, one per expert or one shared)"
        )
    if len(data_files) not in (1, len(names)):
        missing = list(names)[len(data_files):]
        why = (f"no task file for expert {', '.join(f'`{n}`' for n in missing)}" if missing
               else f"{len(data_files) - len(names)} more than the experts")
        raise ConfigError(f"merge.data: give one task file per expert ({len(names)}) or one shared file; got "
                          f"{len(data_files)}: {why}")


def pool_statistics(
    pool,
    needs: Iterable[str],
    data_files: Sequence,
    n: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Stacked statistics per key: ``{key: {"fisher": [n, *shape], "gram": [n, in, in]}}``.

    ``data_files``: one task file per expert, or one file shared by all.
    """
    from tqdm.auto import tqdm

    from evomerge.evaluation.task_data import load_examples
    from evomerge.errors import ConfigError

    needs = sorted(set(needs))
    unknown = [s for s in needs if s not in ("fisher", "gram")]
    if unknown:
        raise ConfigError(f"cannot compute statistics {unknown}; known: fisher, gram")
    names = list(getattr(pool, "names", None) or [f"#{i}" for i in range(len(pool))])
    check_data_files(needs, names, data_files)
    files = list(data_files) * len(pool) if len(data_files) == 1 else list(data_files)
    pool.require_base("data statistics")
    model, tok = load_model_and_tokenizer(pool.base_path, device)
    keys = pool.keys()
    per_expert: list[dict[str, TensorDict]] = []
    for i in tqdm(range(len(pool)), desc="statistics", disable=not progress, leave=False):
        examples = load_examples(files[i], limit=n)
        tv = pool.task_vector(i, device=device)
        stats: dict[str, TensorDict] = {}
        if "fisher" in needs:
            stats["fisher"] = fisher_diagonals(model, tv, examples, tok, n, keys, device)
        if "gram" in needs:
            stats["gram"] = gram_matrices(model, tv, examples, tok, n, keys, device)
        per_expert.append(stats)
        del tv
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k in keys:
        entry = {s: torch.stack([pe[s][k] for pe in per_expert]) for s in needs if k in per_expert[0][s]}
        if entry:
            out[k] = entry
    return out
