"""Stages beyond one process: harvest and index on Ray (`harvest`, `index`), sharing `ray`'s session.

The stage libraries (activations, features) plan the work and merge the results; the functions here
hand them a runner that does the middle on Ray actors. `thinklens harvest/index --workers N` call these.
"""
