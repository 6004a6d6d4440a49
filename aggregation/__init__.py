"""Federated aggregation: numba kernels over flat float32 arrays and the strategies that use them."""
