"""Load models, find their layers, and render reasoning chat formats."""
