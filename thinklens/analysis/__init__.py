"""Analyses of a run: prefix statistics, attention sinks, segment shift, the feature map."""
