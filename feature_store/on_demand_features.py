"""On-demand features: ratios of the request to the customer's finances, computed at request time."""

import pandas as pd
from data_sources import loan_request
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64
from feature_views import credit_history, customer_profile


@on_demand_feature_view(
    sources=[customer_profile, credit_history, loan_request],
    schema=[
        Field(name="loan_to_income", dtype=Float64),
        Field(name="payment_to_income", dtype=Float64),
    ],
    mode="pandas",
    description="loan_amount / annual_income, and (loan_amount / term + existing debt service) / monthly income.",
    owner="risk-data@mlstack.example",
    tags={"domain": "credit-risk"},
)
def loan_ratios(inputs: pd.DataFrame) -> pd.DataFrame:
    income = inputs["annual_income"].astype("float64")
    income = income.where(income > 0)  # a missing or zero income gives NaN, never inf
    monthly_payment = inputs["loan_amount"] / inputs["loan_term_months"] + inputs["monthly_debt_payments"]
    return pd.DataFrame(
        {
            "loan_to_income": inputs["loan_amount"] / income,
            "payment_to_income": monthly_payment / (income / 12.0),
        }
    )
