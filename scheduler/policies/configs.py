"""The job file's ``sweep.early_termination`` settings (SPEC §3.5, §8.4): one pydantic model per policy.

One policy, three classes, one name each: the rule itself (what it decides) is a class of this package
(``BanditRule`` ...); these are its settings as a job file gives them (``BanditSettings`` ...), validated with the
job; and the Python API writes those settings with the service SDK's class (``visionsweep.sweep.BanditPolicy`` ...).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

_FORBID = ConfigDict(extra="forbid", populate_by_name=True)


class _PolicySettings(BaseModel):
    model_config = _FORBID
    evaluation_interval: int = Field(1, ge=1)
    delay_evaluation: int = Field(0, ge=0)


class BanditSettings(_PolicySettings):
    type: Literal["bandit"]
    slack_factor: Optional[float] = Field(None, gt=0)
    slack_amount: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_slack(self):
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise ValueError("bandit needs exactly one of slack_factor or slack_amount")
        return self


class MedianStoppingSettings(_PolicySettings):
    type: Literal["median_stopping"]


class TruncationSelectionSettings(_PolicySettings):
    type: Literal["truncation_selection"]
    truncation_percentage: int = Field(ge=1, le=99)
    exclude_finished_jobs: bool = False


class AshaSettings(BaseModel):
    """``type: asha``: asynchronous successive halving (our addition; the policy AutoMode uses).

    The budget is counted in epochs: trials are compared at rungs grace_period * reduction_factor^i
    and only the top 1/reduction_factor go on, up to ``max_epochs`` (default: the trials' epochs).
    """

    model_config = _FORBID
    type: Literal["asha"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_epochs: Optional[int] = Field(None, ge=1)


EarlyTermination = Annotated[
    Union[BanditSettings, MedianStoppingSettings, TruncationSelectionSettings, AshaSettings],
    Field(discriminator="type"),
]


POLICY_TYPES = ("bandit", "median_stopping", "truncation_selection", "asha")
