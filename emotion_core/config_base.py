"""The base class of every config class (``config``, ``model_configs``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Unknown keys refused, frozen, attribute docstrings as field descriptions, NaN and inf refused."""

    # allow_inf_nan=False: NaN and inf in any float field are refused as "not a finite number"
    # (a NaN passes no gt/lt check, so it would be reported as out of range, or not at all).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)
