"""Loading, validating and saving experts (peft LoRA adapters, full checkpoints)."""

from evomerge.experts.checkpoint_io import CheckpointReader, save_full_checkpoint, write_full_checkpoint
from evomerge.experts.peft_io import load_peft_adapter, save_peft_adapter, write_peft_adapter
from evomerge.experts.pool import ExpertPool, load_pool
from evomerge.experts.types import LoraModule, TensorDict, ab_to_lora, lora_deltas, lora_to_ab

__all__ = [
    "CheckpointReader", "ExpertPool", "LoraModule", "TensorDict", "ab_to_lora", "load_peft_adapter", "load_pool",
    "lora_deltas", "lora_to_ab", "save_full_checkpoint", "save_peft_adapter", "write_full_checkpoint",
    "write_peft_adapter",
]
