"""The error family: everything a user can fix is a `CptError`; the CLI prints it on one line, exit 2."""


class CptError(Exception):
    """A problem with the user's input (recipe, files, flags), stated with what to do about it."""


class RecipeError(CptError):
    """A recipe that failed validation; `problems` lists every issue found, not just the first."""

    def __init__(self, path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))
