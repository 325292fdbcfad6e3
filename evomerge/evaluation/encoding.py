"""Turn (prompt, answer) pairs into padded token tensors for teacher-forced scoring and training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from evomerge.errors import DataError
from evomerge.evaluation.task_data import LINE_COLUMN

IGNORE = -100


@dataclass
class Encoded:
    """Right-padded sequences ``prompt + answer + eos``.

    ``labels`` holds the next-token targets already shifted (``labels[:, t]`` is the token to
    predict from position ``t``), ``IGNORE`` outside the answer; ``prompt_len`` per example.
    """

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    labels: torch.Tensor  # [N, T]
    prompt_len: torch.Tensor  # [N]
    answers: list[str]
    prompts: list[str]
    group: torch.Tensor | None = None  # [N] task index per row when several tasks are pooled
    row: torch.Tensor | None = None  # [N] each row's index in its split, in the order it was encoded

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def slice(self, start: int, stop: int) -> "Encoded":
        """Rows ``start:stop``, trimmed to their longest sequence."""
        mask = self.attention_mask[start:stop]
        width = int(mask.sum(1).max())
        return Encoded(
            self.input_ids[start:stop, :width], mask[:, :width], self.labels[start:stop, :width],
            self.prompt_len[start:stop], self.answers[start:stop], self.prompts[start:stop],
            None if self.group is None else self.group[start:stop],
            None if self.row is None else self.row[start:stop],
        )

    def sorted_by_length(self) -> "Encoded":
        """Rows ordered by length, so batches carry little padding (metrics are order-free)."""
        order = torch.argsort(self.attention_mask.sum(1), stable=True)
        idx = order.tolist()
        return Encoded(
            self.input_ids[order], self.attention_mask[order], self.labels[order], self.prompt_len[order],
            [self.answers[i] for i in idx], [self.prompts[i] for i in idx],
            None if self.group is None else self.group[order],
            None if self.row is None else self.row[order.to(self.row.device)],
        )

    def to(self, device: torch.device | str) -> "Encoded":
        return Encoded(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
            self.prompt_len.to(device), self.answers, self.prompts,
            None if self.group is None else self.group.to(device),
            None if self.row is None else self.row.to(device),
        )

    def answer_start(self) -> int:
        """First position whose label is an answer token in any row (0 if there is none)."""
        cols = (self.labels != IGNORE).any(0).nonzero()
        return int(cols[0]) if len(cols) else 0


def pool(parts: Sequence[Encoded], pad_id: int) -> Encoded:
    """Rows of several encoded tasks in one ``Encoded``; ``group[i]`` is row i's part index
    (``row[i]`` its index within that part).

    Pooling lets one forward pass carry rows of several tasks, so that batches of similar
    length (after ``sorted_by_length``) need almost no padding.
    """
    width = max(int(p.input_ids.shape[1]) for p in parts)

    def widen(t: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill)

    return Encoded(
        torch.cat([widen(p.input_ids, pad_id) for p in parts]),
        torch.cat([widen(p.attention_mask, 0) for p in parts]),
        torch.cat([widen(p.labels, IGNORE) for p in parts]),
        torch.cat([p.prompt_len for p in parts]),
        [a for p in parts for a in p.answers],
        [q for p in parts for q in p.prompts],
        torch.cat([torch.full((len(p),), i, dtype=torch.long, device=p.input_ids.device) for i, p in enumerate(parts)]),
        torch.cat([p.row if p.row is not None else torch.arange(len(p), device=p.input_ids.device) for p in parts]),
    )


def pad_id(tokenizer) -> int:
    """The tokenizer's pad token, or EOS when it has none (as for the padding in every batch)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _unknown_chars(tokenizer, text: str) -> list[str]:
    """Characters of ``text`` the tokenizer maps to its unknown token (at most 5)."""
    unk = tokenizer.unk_token_id
    out: list[str] = []
    for c in dict.fromkeys(text):
        if unk in tokenizer(c, add_special_tokens=False)["input_ids"]:
            out.append(c)
            if len(out) == 5:
                break
    return out


def _check_tokens(tokenizer, ids: list[int], text: str, source: str, where: str, what: str) -> None:
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids and (tokenizer.unk_token is None or tokenizer.unk_token not in text):
        chars = _unknown_chars(tokenizer, text)
        raise DataError(f"{source}: {where}: the {what} holds characters outside the tokenizer's vocabulary "
                        f"({', '.join(repr(c) for c in chars) or 'unknown'}); they would be scored as <unk>")


def check_eos(tokenizer) -> None:
    """Refuse a tokenizer without an EOS token, naming the folder it was loaded from (the base)."""
    if tokenizer.eos_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or "the base model"
        raise DataError(f"{name}: the tokenizer has no eos_token; evomerge needs one to end answers "
                        f"(set `eos_token` in its tokenizer_config.json)")


def encode_pairs(tokenizer, prompts: Sequence[str], answers: Sequence[str], source: str = "task",
                 max_len: int | None = None, where: Sequence[str] | None = None) -> Encoded:
    """Tokenize prompts (with the tokenizer's special prefix) and answers (plus EOS).

    Refused with the row named (``where[i]``, default ``row i+1``): an empty prompt or answer,
    characters the tokenizer cannot represent (its unknown token), and a sequence longer than
    ``max_len`` (the model's ``max_position_embeddings``: positions beyond it are not scored
    meaningfully). A tokenizer without EOS is refused naming its folder (:func:`check_eos`).
    """
    check_eos(tokenizer)
    where = [f"row {i + 1}" for i in range(len(prompts))] if where is None else list(where)
    pad = pad_id(tokenizer)
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    a_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    n_special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    seqs, plens = [], []
    for i, (p, a) in enumerate(zip(p_ids, a_ids)):
        if len(p) <= n_special:
            raise DataError(f"{source}: {where[i]} has an empty prompt")
        if len(a) == 0:
            raise DataError(f"{source}: {where[i]} has an empty answer")
        _check_tokens(tokenizer, p, prompts[i], source, where[i], "prompt")
        _check_tokens(tokenizer, a, answers[i], source, where[i], "answer")
        seq = list(p) + list(a) + [tokenizer.eos_token_id]
        if max_len is not None and len(seq) > max_len:
            raise DataError(f"{source}: {where[i]} is {len(seq)} tokens (prompt {len(p)}, answer {len(a)}, eos), "
                            f"longer than the model's context of {max_len} positions (max_position_embeddings)")
        seqs.append(seq)
        plens.append(len(p))
    width = max(len(s) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    for i, (s, pl) in enumerate(zip(seqs, plens)):
        t = torch.tensor(s, dtype=torch.long)
        ids[i, : len(s)] = t
        mask[i, : len(s)] = 1
        # position pl-1 (last prompt token) predicts the first answer token, etc.
        labels[i, pl - 1 : len(s) - 1] = t[pl:]
    return Encoded(ids, mask, labels, torch.tensor(plens), list(answers), list(prompts), row=torch.arange(n))


def encode_dataset(tokenizer, ds, source: str = "task", max_len: int | None = None) -> Encoded:
    """Encode a ``datasets.Dataset`` with ``prompt``/``answer`` columns (checks: :func:`encode_pairs`).

    Rows are named ``line N`` when the dataset carries :data:`LINE_COLUMN` (a JSONL task file's
    own line numbers), else ``row N`` (from 1: a Parquet table's or JSON array's row)."""
    missing = [c for c in ("prompt", "answer") if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a task needs ['prompt', 'answer']")
    if len(ds) == 0:
        raise DataError(f"{source}: the split is empty")
    prompts, answers = ds["prompt"], ds["answer"]
    where = row_names(ds)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        for what, v in (("prompt", p), ("answer", a)):
            if v is None:
                raise DataError(f"{source}: {where[i]}: `{what}` is null")
    return encode_pairs(tokenizer, [str(x) for x in prompts], [str(x) for x in answers], source, max_len, where)


def row_names(rows) -> list[str]:
    """How errors name a task file's rows: ``line N`` where the rows carry :data:`LINE_COLUMN` (a
    JSONL file's own line numbers), else ``row N`` from 1. ``rows``: a ``datasets.Dataset`` or a
    list of row dicts."""
    if hasattr(rows, "column_names"):
        if LINE_COLUMN in rows.column_names:
            return [f"line {n}" for n in rows[LINE_COLUMN]]
        return [f"row {i + 1}" for i in range(len(rows))]
    return [f"line {r[LINE_COLUMN]}" if LINE_COLUMN in r else f"row {i + 1}" for i, r in enumerate(rows)]


def context_length(model) -> int | None:
    """The model's number of positions (``max_position_embeddings``), if its config names one."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def load_tokenizer(base_dir):
    """The tokenizer of a local base model folder, as the evaluator loads it (refused naming the folder)."""
    from transformers import AutoTokenizer

    from evomerge.errors import ExpertLoadError, cause_text

    try:
        return AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    except Exception as err:  # OSError, ValueError, ...
        raise ExpertLoadError(f"{base_dir}: cannot load the tokenizer ({cause_text(err)})") from None


def base_context_length(base_dir) -> int | None:
    """:func:`context_length` of a local base model folder, read from its config (no weights loaded)."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(base_dir), local_files_only=True)
    except Exception:  # an unreadable config is reported by whoever loads the model
        return None
    return context_length(SimpleNamespace(config=cfg))


def check_task_encoding(base_dir, task_data, max_samples: int | None, whole_splits: Sequence[str] = ()) -> None:
    """The rows an evaluator will score (``max_samples`` per split, every row of ``whole_splits``),
    encoded with the base's tokenizer before any model is loaded: a tokenizer without EOS names
    the base folder; characters outside its vocabulary and rows longer than its context name the
    task file and the line (as ``merge --data`` is checked). ``task_data``: ``{task: {split: Dataset}}``."""
    from pathlib import Path

    from evomerge.evaluation.evaluator import check_base_dir

    base_dir = Path(base_dir)
    check_base_dir(base_dir)
    tok = load_tokenizer(base_dir)  # (encode_pairs refuses one without EOS, naming the base folder)
    ctx = base_context_length(base_dir)
    for name, splits in task_data.items():
        for split, ds in splits.items():
            rows = scored_rows(ds, split, max_samples, whole_splits)
            encode_dataset(tok, rows, task_source(ds, name, split), ctx)


def scored_rows(ds, split: str, max_samples: int | None, whole_splits: Sequence[str] = ()):
    """The rows of a split an evaluator scores: the first ``max_samples``, or all of a split in
    ``whole_splits`` (scale scores the test split whole)."""
    if max_samples is None or split in whole_splits or len(ds) <= max_samples:
        return ds
    return ds.select(range(max_samples))


def task_source(ds, name: str, split: str) -> str:
    """How a task's errors name it: its file (the rows' lines follow), else the task and split."""
    from evomerge.evaluation.task_data import source_file

    file = source_file(ds)
    return f"{file} (task `{name}`)" if file else f"task `{name}` split `{split}`"
