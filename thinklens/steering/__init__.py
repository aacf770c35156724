"""Steer a model with SAE features or directions, from a chosen position, and sweep strengths."""
