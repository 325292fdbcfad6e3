"""The zoo's tiny base model: a character-level tokenizer and a small Llama config."""

from __future__ import annotations

from dataclasses import dataclass

from evomerge.zoo.tasks import alphabet

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


@dataclass(frozen=True)
class Profile:
    """Sizes and step counts of one zoo profile."""

    name: str
    tasks: tuple[str, ...]
    hidden: int
    layers: int
    heads: int
    intermediate: int
    n_train: int
    n_eval: int
    base_steps: int
    base_lr: float
    expert_steps: int
    expert_lr: float
    batch_size: int
    keep_weight: float = 1.0  # KL-to-base on other tasks while training an expert (0: off)
    keep_pool: int = 1024  # mixed examples whose base predictions the experts must keep
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # every LoRA expert starts from one LoRA initialisation (as experts trained with one recipe
    # and one seed do), so averaging A and B separately ("ab" space) stays close to averaging deltas
    shared_init: bool = True
    # learning rate of LoRA A relative to B (LoRA+ trains A slower than B): with one shared
    # initialisation, a slow A keeps the experts' A factors close, hence "ab" close to delta
    lora_a_lr_ratio: float = 1.0
    # the shared A: "random" (peft's seeded init), "eva" (peft's EVA: each layer's top principal
    # input directions on the mixture of all tasks), "warmup" (A of one LoRA trained
    # `lora_a_warmup_steps` on that mixture) or "contrast" (per task, the input directions its
    # inputs excite more than the others'); see evomerge/zoo/lora_init.py and docs/zoo.md
    lora_a_init: str = "random"
    lora_a_warmup_steps: int = 100
    full_steps: int = 0  # >0: also one full fine-tune per task (whole-model safetensors checkpoint)
    full_lr: float = 1e-3
    store_dtype: str = "float32"  # "float16": base and full fine-tunes rounded to and stored in fp16


PROFILES: dict[str, Profile] = {
    "small": Profile(
        name="small",
        tasks=("rev_digits", "sort_digits", "rev_letters", "brackets", "majority", "greek_shift"),
        hidden=64, layers=2, heads=4, intermediate=128,
        n_train=2000, n_eval=200, base_steps=300, base_lr=4e-3,
        expert_steps=60, expert_lr=5e-3, batch_size=64,
        # per-expert LoRA seeds, as in format 1: other tests' figures rest on these experts
        shared_init=False, full_steps=60, full_lr=2e-3,
    ),
    # test-only: seconds to build, for checks of caching, locking and reproducibility
    "tiny": Profile(
        name="tiny",
        tasks=("brackets", "majority"),
        hidden=32, layers=1, heads=2, intermediate=64,
        n_train=200, n_eval=40, base_steps=10, base_lr=3e-3,
        expert_steps=5, expert_lr=3e-3, batch_size=16,
    ),
    # format 2 (issue 11): a base that knows the format and symbols but is weak at every task,
    # experts strong on theirs; domains of 2-3 related tasks and unrelated ones; one LoRA
    # initialisation for all experts; a full fine-tune per task; weights stored in fp16
    "default": Profile(
        name="default",
        tasks=("rev_digits", "dshift", "rot_digits", "caesar", "rev_letters", "subst", "dedup", "greek_rev",
               "long_brackets", "mark_swap"),
        hidden=256, layers=2, heads=4, intermediate=512,
        n_train=3000, n_eval=200, base_steps=180, base_lr=2e-3,
        expert_steps=150, expert_lr=3e-3, batch_size=64,
        # KL to the base's predictions on other tasks while an expert trains: specialists,
        # so that merges of unrelated experts keep much of their gains
        keep_weight=6.0,
        # one shared A: a rank-32 LoRA warmed up 200 steps on the mixture of all tasks (B reset
        # to 0), then trained 16x slower than B, so the experts' A stay close and "ab"-space
        # merges track delta merges (relative error 0.04; the previous zoo, one random A at rank 8
        # trained at full speed: 0.64)
        rank=32, alpha=64, lora_a_lr_ratio=1 / 16, lora_a_init="warmup", lora_a_warmup_steps=200,
        shared_init=True, full_steps=100, full_lr=5e-4, store_dtype="float16",
    ),
}


def build_tokenizer(task_names: list[str]):
    """Character-level ``PreTrainedTokenizerFast``; each task marker is one added token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + alphabet())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="right", clean_up_tokenization_spaces=False,
    )
    fast.add_tokens([f"<{name}>" for name in task_names])
    return fast


def build_config(profile: Profile, vocab_size: int, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=profile.hidden,
        intermediate_size=profile.intermediate,
        num_hidden_layers=profile.layers,
        num_attention_heads=profile.heads,
        num_key_value_heads=profile.heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# fields added after the shipped zoos were built enter the fingerprint only when set away from
# their default, so zoos built before them stay current
_LATER_FIELDS = ("lora_a_init", "lora_a_warmup_steps")


def _profile_repr(profile: Profile) -> str:
    """The dataclass repr of ``profile`` without the later fields left at their default."""
    import dataclasses

    shown = [f for f in dataclasses.fields(profile)
             if not (f.name in _LATER_FIELDS and getattr(profile, f.name) == f.default)]
    return f"{type(profile).__qualname__}(" + ", ".join(f"{f.name}={getattr(profile, f.name)!r}" for f in shown) + ")"


def recipe_hash(profile: Profile) -> str:
    """Fingerprint of everything that defines a profile's zoo (sizes, steps, task generators)."""
    import hashlib
    import inspect

    from evomerge.zoo import tasks as task_lib

    parts = [_profile_repr(profile)] + [inspect.getsource(task_lib.TASKS[t].generate) for t in profile.tasks]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
