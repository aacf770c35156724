"""Capture a layer's residual stream, keep it in a resumable on-disk store, stream it back shuffled."""
