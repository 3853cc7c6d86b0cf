"""A transfer plan survives the trip to the process hosting the call (bus control requests)."""

from __future__ import annotations

import pytest

from app.tools.control import TransferPlan


def test_a_plan_round_trips_through_its_dict() -> None:
    plan = TransferPlan.to(["+1 415 555 0100", "sip:desk@pbx.example"], mode="warm",
                           brief="  Ada wants Friday.  ", dial_mode="parallel",
                           ring_timeout_s=20, failure_message="Nobody is free.")
    assert plan.targets == ("+14155550100", "sip:desk@pbx.example")
    assert plan.brief == "Ada wants Friday."
    assert TransferPlan.from_dict(plan.as_dict()) == plan


def test_a_bad_plan_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="premium"):
        TransferPlan.to(["premium please"])
    with pytest.raises(ValueError, match="ring_timeout_s"):
        TransferPlan.to("+14155550100", ring_timeout_s=2)
    with pytest.raises(ValueError, match="targets"):
        TransferPlan.to([])
