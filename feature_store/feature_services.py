"""Versioned feature services: the contract between features, training and serving."""

from feast import FeatureService
from feature_views import credit_history, customer_profile, zipcode_stats
from on_demand_features import loan_ratios

credit_risk_v1 = FeatureService(
    name="credit_risk_v1",
    features=[customer_profile, credit_history, zipcode_stats, loan_ratios],
    description="Every feature of the first credit-risk model.",
    owner="risk-ml@mlstack.example",
    tags={"version": "1", "model": "credit-risk"},
)
