"""Batch feature views over the monthly snapshots."""

from datetime import timedelta

from data_sources import credit_history_source, customer_profile_source, zipcode_stats_source
from entities import customer, zipcode
from feast import FeatureView, Field
from feast.types import Float64, Int64, String

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=90),
    schema=[
        Field(name="age", dtype=Int64, description="Age in years."),
        Field(name="annual_income", dtype=Float64, description="Declared annual income."),
        Field(name="employment_length_years", dtype=Float64, description="Years with current employer."),
        Field(name="home_ownership", dtype=String, description="RENT, OWN or MORTGAGE."),
    ],
    source=customer_profile_source,
    online=True,
    description="Slowly changing facts about the customer.",
    owner="risk-data@mlstack.example",
    tags={"domain": "credit-risk", "team": "risk"},
)

credit_history = FeatureView(
    name="credit_history",
    entities=[customer],
    ttl=timedelta(days=45),
    schema=[
        Field(name="credit_utilisation", dtype=Float64, description="Revolving balance / limit."),
        Field(name="open_accounts", dtype=Int64, description="Open credit lines."),
        Field(name="delinquencies_2y", dtype=Int64, description="Delinquencies in the last 2 years."),
        Field(name="bureau_score", dtype=Int64, description="Bureau score, 300-850."),
        Field(name="monthly_debt_payments", dtype=Float64, description="Existing monthly debt service."),
        Field(
            name="accounts_in_collections",
            dtype=Int64,
            description="Accounts in collections; rises after a default, so a future-peeking join leaks the label.",
        ),
    ],
    source=credit_history_source,
    online=True,
    description="Monthly bureau snapshot; a missed month leaves a gap past the 45-day TTL.",
    owner="risk-data@mlstack.example",
    tags={"domain": "credit-risk", "team": "risk", "pii": "false"},
)

zipcode_stats = FeatureView(
    name="zipcode_stats",
    entities=[zipcode],
    ttl=timedelta(days=62),
    schema=[
        Field(name="median_income", dtype=Float64, description="Regional median income."),
        Field(name="unemployment_rate", dtype=Float64, description="Regional unemployment, fraction."),
        Field(name="population", dtype=Int64, description="Residents."),
        Field(name="regional_default_rate", dtype=Float64, description="Lagged regional default rate."),
    ],
    source=zipcode_stats_source,
    online=True,
    description="Monthly regional economics.",
    owner="risk-data@mlstack.example",
    tags={"domain": "credit-risk", "team": "economics"},
)
