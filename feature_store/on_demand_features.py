"""On-demand features: ratios of the request to the customer's finances, computed at request time."""

from data_sources import loan_request
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64
from feature_views import credit_history, customer_profile


# Python mode, not pandas: an online read skips the Arrow -> pandas -> Arrow round trip (docs/benchmarks.md,
# "Online scoring"). Feast calls the UDF with a dict of column lists online and offline alike (offline via
# `Table.to_pydict`, nulls as None), so batch mode, not `singleton=True`, which offline retrieval ignores.
# Feast re-creates the UDF from its source with only `pd`/`np` in scope: everything it uses is defined inside.
@on_demand_feature_view(
    sources=[customer_profile, credit_history, loan_request],
    schema=[
        Field(name="loan_to_income", dtype=Float64),
        Field(name="payment_to_income", dtype=Float64),
    ],
    mode="python",
    description="loan_amount / annual_income, and (loan_amount / term + existing debt service) / monthly income.",
    owner="risk-data@mlstack.example",
    tags={"domain": "credit-risk"},
)
def loan_ratios(inputs: dict[str, list]) -> dict[str, list[float]]:
    # Float64 arithmetic as pandas does it: a missing input gives NaN (never None), a missing or
    # non-positive income gives NaN (never inf), and x / 0 is IEEE's inf or NaN, not ZeroDivisionError.
    nan = float("nan")

    def divide(numerator: float, denominator: float) -> float:
        if denominator != 0:
            return numerator / denominator
        return nan if numerator == 0 or numerator != numerator else float("inf") * (1 if numerator > 0 else -1)

    loan_to_income: list[float] = []
    payment_to_income: list[float] = []
    for amount, term, income, debt in zip(
        inputs["loan_amount"],
        inputs["loan_term_months"],
        inputs["annual_income"],
        inputs["monthly_debt_payments"],
        strict=True,
    ):
        if income is None or not income > 0:
            loan_to_income.append(nan)
            payment_to_income.append(nan)
            continue
        loan_to_income.append(nan if amount is None else divide(amount, income))
        if amount is None or term is None or debt is None:
            payment_to_income.append(nan)
        else:
            payment_to_income.append(divide(divide(amount, term) + debt, income / 12.0))
    return {"loan_to_income": loan_to_income, "payment_to_income": payment_to_income}
