"""Offline data sources: parquet files written by `mlstack data generate`.

The data directory comes from FEAST_MLSTACK_DATA_DIR, which mlstack sets from its settings before
it calls Feast; `feast apply` run by hand needs the variable exported.
"""

import os

from feast import Field, FileSource, RequestSource
from feast.types import Float64, Int64, String

_DATA_DIR = os.environ.get("FEAST_MLSTACK_DATA_DIR", "../.mlstack/data")


def _parquet(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=os.path.join(_DATA_DIR, f"{name}.parquet"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created_timestamp",
        description=f"Monthly snapshots: {name} (synthetic).",
        owner="risk-data@mlstack.example",
        tags={"domain": "credit-risk", "synthetic": "true"},
    )


customer_profile_source = _parquet("customer_profile")
credit_history_source = _parquet("credit_history")
zipcode_stats_source = _parquet("zipcode_stats")

loan_request = RequestSource(
    name="loan_request",
    schema=[
        Field(name="loan_amount", dtype=Float64),
        Field(name="loan_term_months", dtype=Int64),
        Field(name="loan_purpose", dtype=String),
    ],
    description="Fields of the loan application, known only at request time.",
    owner="risk-data@mlstack.example",
)
