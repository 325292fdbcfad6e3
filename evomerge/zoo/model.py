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


PROFILES: dict[str, Profile] = {
    "small": Profile(
        name="small",
        tasks=("rev_digits", "sort_digits", "rev_letters", "brackets", "majority", "greek_shift"),
        hidden=64, layers=2, heads=4, intermediate=128,
        n_train=2000, n_eval=200, base_steps=300, base_lr=4e-3,
        expert_steps=60, expert_lr=5e-3, batch_size=64,
    ),
    # test-only: seconds to build, for checks of caching, locking and reproducibility
    "tiny": Profile(
        name="tiny",
        tasks=("brackets", "majority"),
        hidden=32, layers=1, heads=2, intermediate=64,
        n_train=200, n_eval=40, base_steps=10, base_lr=3e-3,
        expert_steps=5, expert_lr=3e-3, batch_size=16,
    ),
    "default": Profile(
        name="default",
        tasks=("rev_digits", "sort_digits", "add", "sub", "caesar", "rev_letters", "subst", "dedup",
               "brackets", "majority", "greek_shift", "greek_ends"),
        hidden=128, layers=4, heads=4, intermediate=256,
        n_train=3000, n_eval=300, base_steps=500, base_lr=2e-3,
        expert_steps=80, expert_lr=3e-3, batch_size=64,
        # a stronger pull to the base's predictions off-task: with 1.0 the best merge of 4
        # unrelated experts kept 44-56% of their gain depending on the machine that built the
        # zoo; with 3.0 it keeps ~69% (2 and 3 experts: ~91% and ~79%)
        keep_weight=3.0,
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


def recipe_hash(profile: Profile) -> str:
    """Fingerprint of everything that defines a profile's zoo (sizes, steps, task generators)."""
    import hashlib
    import inspect

    from evomerge.zoo import tasks as task_lib

    parts = [repr(profile)] + [inspect.getsource(task_lib.TASKS[t].generate) for t in profile.tasks]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
