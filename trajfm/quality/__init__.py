"""Data quality: Great Expectations suites per stage and the gate that stops a bad stage.

Importing this package does not import Great Expectations; building a suite or validating does.
"""

from trajfm.quality.gate import ValidationFailed, ValidationReport, gate, validate_points, validate_stage
from trajfm.quality.suites import (
    DEFAULT_PARAMS,
    derive_columns,
    processed_suite,
    raw_points_suite,
    resolve_params,
    suite_for,
)

__all__ = [
    "DEFAULT_PARAMS",
    "ValidationFailed",
    "ValidationReport",
    "derive_columns",
    "gate",
    "processed_suite",
    "raw_points_suite",
    "resolve_params",
    "suite_for",
    "validate_points",
    "validate_stage",
]
