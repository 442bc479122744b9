"""cptkit: continual pre-training of language models, stage by stage, from one recipe (the `cpt` command)."""

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it; see CHANGELOG.md)
