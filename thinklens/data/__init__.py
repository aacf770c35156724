"""Prompt sets, trace collection and segmentation."""
