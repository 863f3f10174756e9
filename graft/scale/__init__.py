"""Scaling out: running extraction and prediction on Ray (``--engine ray``). Needs ``graft[ray]``."""
