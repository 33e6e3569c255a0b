"""Semantic versions from lineage: which recipe change bumps which part."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from mlstack.training.versioning import (
    FIRST,
    SEMANTIC_VERSION_TAG,
    Recipe,
    SemanticVersion,
    change_between,
    hyperparameters_fingerprint,
    latest_versioned,
    next_semantic_version,
)

BASE = Recipe(
    feature_service_version="1", model_family="lightgbm", hyperparameters="aaa", calibration="none", data="d1"
)
V = SemanticVersion(2, 3, 4)


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (replace(BASE, data="d2"), SemanticVersion(2, 3, 5)),
        (BASE, SemanticVersion(2, 3, 5)),  # the same recipe on the same data: still a new version
        (replace(BASE, hyperparameters="bbb", data="d2"), SemanticVersion(2, 4, 0)),
        (replace(BASE, calibration="isotonic"), SemanticVersion(2, 4, 0)),
        (replace(BASE, feature_service_version="2"), SemanticVersion(3, 0, 0)),
        (replace(BASE, model_family="xgboost", hyperparameters="ccc"), SemanticVersion(3, 0, 0)),
        (replace(BASE, feature_service_version="2", calibration="platt", data="d9"), SemanticVersion(3, 0, 0)),
    ],
)
def test_next_semantic_version_bumps_the_part_the_lineage_change_names(changed, expected):
    assert next_semantic_version(changed, (BASE, V)) == expected


def test_next_semantic_version_starts_at_one_without_a_previous_version():
    assert next_semantic_version(BASE, None) == FIRST == SemanticVersion(1, 0, 0)


def test_change_between_takes_the_largest_change():
    assert change_between(BASE, replace(BASE, hyperparameters="x", feature_service_version="9")) == "major"
    assert change_between(BASE, replace(BASE, hyperparameters="x", data="d3")) == "minor"


def test_semantic_version_parses_prints_and_orders_numerically():
    assert str(SemanticVersion.parse("v1.10.0")) == "v1.10.0"
    assert SemanticVersion.parse("v1.10.0") > SemanticVersion.parse("v1.9.7")
    with pytest.raises(ValueError, match=re.escape("v<major>.<minor>.<patch>")):
        SemanticVersion.parse("1.2")


def test_hyperparameters_fingerprint_ignores_order_and_number_spelling_but_not_values():
    assert hyperparameters_fingerprint({"a": 1, "b": 0.5}) == hyperparameters_fingerprint({"b": 0.5, "a": 1.0})
    assert hyperparameters_fingerprint({"a": 1}) != hyperparameters_fingerprint({"a": 2})
    assert hyperparameters_fingerprint({"a": True}) != hyperparameters_fingerprint({"a": 1})


def test_recipe_round_trips_through_tags_and_is_none_when_incomplete():
    assert Recipe.from_tags(BASE.to_tags()) == BASE
    assert Recipe.from_tags({"feature_service_version": "1"}) is None


def test_latest_versioned_skips_versions_without_a_semantic_version():
    tagged = BASE.to_tags() | {SEMANTIC_VERSION_TAG: "v1.2.0"}
    versions = {1: tagged, 2: tagged | {SEMANTIC_VERSION_TAG: "v1.3.0"}, 3: {"training_rows": "10"}, 4: {}}
    assert latest_versioned(versions) == (BASE, SemanticVersion(1, 3, 0))
    assert latest_versioned({3: {"training_rows": "10"}}) is None
