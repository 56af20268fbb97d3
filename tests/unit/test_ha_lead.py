"""How far a renewal's fire bound leads the clock (:mod:`podcron.ha.lead`)."""

from __future__ import annotations

from podcron.ha.lead import CYCLES_REMEMBERED, FireLead
from podcron.ha.protocol import Params

PARAMS = Params()  # R = 1 s, Λ = 2 s, L = 6 s: a lead from 2 s to 4 s


def test_renewals_every_period_lead_by_lambda() -> None:
    lead = FireLead(PARAMS)
    assert lead.seconds == 2.0
    for sent in range(10):
        lead.acknowledged(float(sent), sent + 0.05)
    assert lead.seconds == 2.0


def test_a_cycle_within_half_a_period_of_lambda_widens_the_lead_to_twice_lambda() -> None:
    lead = FireLead(PARAMS)
    lead.acknowledged(0.0, 0.2)
    # Sent at 1.0, acknowledged at 1.45: the bound the first set had to last 1.45 s.
    lead.acknowledged(1.0, 1.45)
    assert lead.seconds == 2.0
    # Sent at 2.4 (its round trip, the list and the wait took that long), acknowledged at
    # 2.55: 1.55 s since the one before was sent, within R/2 of Λ.
    lead.acknowledged(2.4, 2.55)
    assert lead.seconds == PARAMS.fire_ahead_at_most == 4.0
    lead.acknowledged(3.0, 9.0)
    assert lead.seconds == 4.0


def test_the_lead_comes_back_once_the_slow_cycles_are_forgotten() -> None:
    lead = FireLead(PARAMS)
    lead.acknowledged(0.0, 0.1)
    lead.acknowledged(3.0, 3.1)
    sent = 3.0
    for _ in range(CYCLES_REMEMBERED - 1):
        sent += 1.0
        lead.acknowledged(sent, sent + 0.1)
    assert lead.seconds > 2.0
    lead.acknowledged(sent + 1.0, sent + 1.1)
    assert lead.seconds == 2.0


def test_an_outage_is_not_a_cycle_to_cover() -> None:
    lead = FireLead(PARAMS)
    lead.acknowledged(0.0, 0.1)
    lead.failed()  # the store did not answer for half a minute
    lead.acknowledged(30.0, 30.1)
    lead.acknowledged(31.0, 31.1)
    assert lead.seconds == 2.0
