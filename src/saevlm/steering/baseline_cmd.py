"""``saevlm similarity-baseline``: the steering score's bounds (true and shuffled class names)."""
from saevlm.steering.score import add_baseline_arguments as add_arguments  # noqa: F401
from saevlm.steering.score import run_baseline as run  # noqa: F401
