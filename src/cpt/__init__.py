"""cpt: continual pre-training of language models, stage by stage, from one recipe."""

__version__ = "0.1.0"
