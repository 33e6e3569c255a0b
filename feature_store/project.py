"""The Feast project object; its name must match feature_store.yaml."""

from feast import Project

mlstack_project = Project(
    name="mlstack",
    description="Credit-risk features for the mlstack reference stack (synthetic data).",
    tags={"domain": "credit-risk"},
)
