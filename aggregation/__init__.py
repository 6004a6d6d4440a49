"""Federated aggregation: numba kernels over flat float32 arrays and the strategies that use them.

``aggregate`` combines a round's client updates in one call; ``StreamingAggregator`` folds them in as
they arrive; the server optimizers turn the aggregated delta into the next shared model.
"""

from .errors import AggregationError, LayoutError, NonFiniteUpdateError, OptionError
from .layout import ModelLayout
from .optimizers import OPTIMIZERS, ServerAdam, ServerMomentum, ServerOptimizer, ServerSGD, make_optimizer
from .result import AggregatedModel, AggregationMetadata, Participant
from .strategies import METHODS, aggregate
from .streaming import STREAMING_METHODS, StreamingAggregator

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "STREAMING_METHODS",
    "AggregatedModel",
    "AggregationError",
    "AggregationMetadata",
    "LayoutError",
    "ModelLayout",
    "NonFiniteUpdateError",
    "OptionError",
    "Participant",
    "ServerAdam",
    "ServerMomentum",
    "ServerOptimizer",
    "ServerSGD",
    "StreamingAggregator",
    "aggregate",
    "make_optimizer",
]
