"""evomerge: merge many fine-tuned experts into one multi-task model.

The maths (``evomerge.merging``, ``evomerge.merging.rht``, ``evomerge.theory``) is pure tensor code;
Ray, I/O and the CLI are thin layers around it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
