"""The feature database: build it from an SAE and a store, query it, label its features."""
