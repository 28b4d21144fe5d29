"""The spec models' building blocks: the camelCase, frozen `Base`, and the bounds the CRD states.

Kept apart from spec.py so the models of each part of a spec (spec.py, spec_placement.py) share
one configuration and one set of ranges.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Ranges (the CRD states each as minimum/maximum): every integer fits int64 and every product
# `speedrun plan` forms stays finite; shapes and counts are capped far above any real run.
# Floats are finite (Base: allow_inf_nan=False; JSON has no inf/NaN, so the CRD cannot carry them).
INT64_MAX = 2**63 - 1
# int64 fields stop at 2**53 - 1: the apiserver reads bounds as float64, where 2**63 - 1 is no integer.
JSON_INT_MAX = 2**53 - 1
INT32_MAX = 2**31 - 1
MAX_STEPS = 1_000_000_000  # also the cap on a horizon given as tokens, paramDataRatio or flopsBudget
MAX_TOKENS = 10**16  # Marin's largest runs train ~1e13 tokens
PositiveInt = Annotated[int, Field(ge=1, le=JSON_INT_MAX)]
StepCount = Annotated[int, Field(ge=0, le=MAX_STEPS)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Uri = Annotated[str, Field(min_length=1, description="file://, s3://, gs:// or https:// URI, or a local path")]


class Base(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, allow_inf_nan=False
    )
