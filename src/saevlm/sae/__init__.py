"""Sparse autoencoders: architectures (dictionary_learning's classes), training, loading, encoding."""
