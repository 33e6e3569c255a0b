"""Entities: the keys features are joined and served on."""

from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A retail borrower.",
    owner="risk-data@mlstack.example",
    tags={"domain": "credit-risk"},
)

zipcode = Entity(
    name="zipcode",
    join_keys=["zipcode"],
    value_type=ValueType.STRING,
    description="A five-character postal region.",
    owner="risk-data@mlstack.example",
    tags={"domain": "credit-risk"},
)
