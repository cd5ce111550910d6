"""Aggregation of per-example attack results into tables (see docs/results-schema.md).

``aggregate`` reads exactly the listed files and returns the tables named in ``TABLE_KEYS``;
``write_aggregates`` writes them as Parquet and CSV; ``metrics_json`` gives the DVC metrics.
"""

from tmifpe.aggregate.build import TABLE_KEYS, aggregate
from tmifpe.aggregate.metrics import metrics_json
from tmifpe.aggregate.write import write_aggregates

__all__ = ["TABLE_KEYS", "aggregate", "metrics_json", "write_aggregates"]
