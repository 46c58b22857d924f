"""advtui: a terminal experiment manager for adversarial training with learned inner optimizers."""

__version__ = "0.1.0"
