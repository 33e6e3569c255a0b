"""Semantic versions of registered models, derived from lineage: what changed since the previous version.

MLflow numbers versions 1, 2, 3… in registration order, which says nothing about what changed. Each
version also gets ``v{major}.{minor}.{patch}`` from its recipe compared with the previous version's:

- major: the feature-service version or the model family changed (inputs or model kind: not comparable);
- minor: the hyperparameters or the calibration method changed (same inputs, another recipe);
- patch: the same recipe on new (or the same) data.

The recipe is kept on each version as tags (`Recipe.to_tags`), so the next version compares with it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

SEMANTIC_VERSION_TAG = "semantic_version"
MODEL_FAMILY_TAG = "model_family"
HYPERPARAMETERS_TAG = "hyperparameters_fingerprint"
CALIBRATION_TAG = "calibration_method"
FEATURE_SERVICE_VERSION_TAG = "feature_service_version"
DATA_TAG = "training_set_fingerprint"
# `Calibrator.method` of the identity calibrator, and what versions registered before calibration had.
NO_CALIBRATION = "identity"

Change = Literal["major", "minor", "patch"]
_PATTERN = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True, order=True)
class SemanticVersion:
    """``v{major}.{minor}.{patch}``; ordered as numbers (v1.10.0 > v1.9.0)."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"

    @classmethod
    def parse(cls, text: str) -> SemanticVersion:
        """Parse ``v1.2.3``; ValueError naming the text otherwise."""
        match = _PATTERN.match(text.strip())
        if match is None:
            raise ValueError(f"not a semantic version (expected v<major>.<minor>.<patch>): {text!r}")
        major, minor, patch = (int(part) for part in match.groups())
        return cls(major, minor, patch)

    def bump(self, change: Change) -> SemanticVersion:
        """The next version after a change of this kind (lower parts reset to 0)."""
        if change == "major":
            return SemanticVersion(self.major + 1, 0, 0)
        if change == "minor":
            return SemanticVersion(self.major, self.minor + 1, 0)
        return SemanticVersion(self.major, self.minor, self.patch + 1)


FIRST = SemanticVersion(1, 0, 0)


@dataclass(frozen=True)
class Recipe:
    """What a model version was made from, as far as its semantic version is concerned."""

    feature_service_version: str
    model_family: str
    hyperparameters: str  # fingerprint of the training parameters (`hyperparameters_fingerprint`)
    calibration: str  # the calibration method, `none` when the scores are not recalibrated
    data: str  # fingerprint of the training set

    def to_tags(self) -> dict[str, str]:
        """The recipe as model-version tags (the data fingerprint is a lineage tag already)."""
        return {
            FEATURE_SERVICE_VERSION_TAG: self.feature_service_version,
            MODEL_FAMILY_TAG: self.model_family,
            HYPERPARAMETERS_TAG: self.hyperparameters,
            CALIBRATION_TAG: self.calibration,
            DATA_TAG: self.data,
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Recipe | None:
        """The recipe recorded on a version; None when a part is missing (registered before semantic versions)."""
        try:
            return cls(
                feature_service_version=tags[FEATURE_SERVICE_VERSION_TAG],
                model_family=tags[MODEL_FAMILY_TAG],
                hyperparameters=tags[HYPERPARAMETERS_TAG],
                calibration=tags.get(CALIBRATION_TAG, NO_CALIBRATION),
                data=tags[DATA_TAG],
            )
        except KeyError:
            return None


def hyperparameters_fingerprint(params: Mapping[str, object]) -> str:
    """A stable 12-hex fingerprint of training parameters (key order and int/float spelling do not matter)."""
    canonical = json.dumps({key: _canonical(value) for key, value in sorted(params.items())}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _canonical(value: object) -> object:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return str(value)


def change_between(previous: Recipe, new: Recipe) -> Change:
    """The kind of change from `previous` to `new` (the largest that applies)."""
    if (previous.feature_service_version, previous.model_family) != (new.feature_service_version, new.model_family):
        return "major"
    if (previous.hyperparameters, previous.calibration) != (new.hyperparameters, new.calibration):
        return "minor"
    return "patch"


def next_semantic_version(new: Recipe, previous: tuple[Recipe, SemanticVersion] | None) -> SemanticVersion:
    """The semantic version of a version made from `new`, after `previous` (its recipe and version); v1.0.0 first."""
    if previous is None:
        return FIRST
    recipe, version = previous
    return version.bump(change_between(recipe, new))


def latest_versioned(versions: Mapping[int, Mapping[str, str]]) -> tuple[Recipe, SemanticVersion] | None:
    """Of registered versions (number -> tags), the newest with a semantic version and a recipe; None if none.

    Versions registered before semantic versions (or with an unreadable tag) are skipped.
    """
    for number in sorted(versions, reverse=True):
        tags = versions[number]
        recipe = Recipe.from_tags(tags)
        if recipe is None or SEMANTIC_VERSION_TAG not in tags:
            continue
        try:
            return recipe, SemanticVersion.parse(tags[SEMANTIC_VERSION_TAG])
        except ValueError:
            continue
    return None
