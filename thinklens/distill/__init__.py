"""Distillation: fine-tune a base model on teacher traces into a reasoning model organism (`smollm2-r1`)."""
