"""Loading, validating and saving experts (peft LoRA adapters, full checkpoints)."""

from evomerge.experts.types import LoraModule, TensorDict, ab_to_lora, lora_deltas, lora_to_ab

__all__ = ["LoraModule", "TensorDict", "ab_to_lora", "lora_deltas", "lora_to_ab"]
