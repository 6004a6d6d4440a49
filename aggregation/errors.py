"""Exceptions raised by aggregation, one type per kind of caller mistake.

All derive from ``AggregationError`` (a ``ValueError``) so a service can map them to a 4xx answer at once.
"""

from __future__ import annotations


class AggregationError(ValueError):
    """An aggregation request that cannot be carried out as asked."""


class LayoutError(AggregationError):
    """An update whose tensor names, shapes or dtypes differ from the model's layout."""


class NonFiniteUpdateError(AggregationError):
    """An update that holds NaN or infinite values."""


class OptionError(AggregationError):
    """A method name, option value or sample count outside what the method accepts."""
