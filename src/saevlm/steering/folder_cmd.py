"""``saevlm make-eval-folder``: the first image of each class (the paper's 1000-image set)."""
from saevlm.steering.score import add_folder_arguments as add_arguments  # noqa: F401
from saevlm.steering.score import run_folder as run  # noqa: F401
