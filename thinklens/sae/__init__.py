"""Sparse autoencoders: architectures, training, metrics and file formats."""
