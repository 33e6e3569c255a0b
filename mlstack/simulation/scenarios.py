"""The traffic scenarios: how each moves features, request fields and the risk model away from training.

Pure data, no numpy or pandas: the CLI lists the scenario names in `mlstack traffic --help` without
importing the simulation (mlstack.simulation.traffic runs them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScenarioName = Literal["normal", "recession"]  # SCENARIOS has one of each (tested)


@dataclass(frozen=True)
class Scenario:
    """How a scenario moves features, request fields and the risk model away from training."""

    name: ScenarioName
    description: str
    hit_zipcode_share: float = 0.0  # share of zipcodes hit hardest
    unemployment_shift_hit: float = 0.0  # absolute unemployment rise in hit zipcodes
    unemployment_shift_other: float = 0.0
    zip_income_factor_hit: float = 1.0  # median income of hit zipcodes
    income_factor_hit: float = 1.0  # customers living in hit zipcodes
    income_factor_other: float = 1.0
    utilisation_shift: float = 0.0
    amount_factor: float = 1.0  # requested loan amounts
    logit_shift: float = 0.0  # extra default log-odds for everyone
    unemployment_coef_factor: float = 1.0  # the same unemployment weighs more
    loan_to_income_coef_factor: float = 1.0  # the same loan-to-income weighs more

    @property
    def moves_features(self) -> bool:
        """Whether the scenario writes new feature snapshots."""
        return (
            self.hit_zipcode_share > 0
            or self.unemployment_shift_other != 0
            or self.income_factor_other != 1
            or self.utilisation_shift != 0
        )


SCENARIOS: dict[str, Scenario] = {
    "normal": Scenario("normal", "same distributions and risk model as training"),
    "recession": Scenario(
        "recession",
        "40% of zipcodes lose jobs (+7 pts unemployment, +2 elsewhere), incomes fall (-20% there, -7% "
        "elsewhere), utilisation rises, loans are 50% larger, and unemployment and loan-to-income weigh "
        "more on default",
        hit_zipcode_share=0.4,
        unemployment_shift_hit=0.07,
        unemployment_shift_other=0.02,
        zip_income_factor_hit=0.88,
        income_factor_hit=0.8,
        income_factor_other=0.93,
        utilisation_shift=0.08,
        amount_factor=1.5,
        logit_shift=0.3,
        unemployment_coef_factor=2.0,
        loan_to_income_coef_factor=1.8,
    ),
}
