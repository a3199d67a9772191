"""Image datasets and the on-disk activation store."""
