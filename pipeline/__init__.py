"""Pipeline factory, typed configs, runners and the MLMD helpers."""
