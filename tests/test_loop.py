"""The epoch loop the trainer and the probes share: sums, early end, and where a Ctrl-C leaves the epoch."""

import pytest

from psl_keras.training import loop


def _step(interrupt_at=None):
    def step(batch):
        if batch == interrupt_at:
            raise KeyboardInterrupt
        return {"loss": float(batch), "count": 2.0}
    return step


def test_sums_every_step_from_the_first_step_given_and_ends_with_the_data():
    totals, seen = {"loss": 1.0}, []
    loop.run_epoch(_step(), iter([10, 20, 30]), 5, totals, first_step=1,
                   after_step=lambda i, sums, seconds: seen.append((i, sums["loss"])))
    assert totals == {"loss": 61.0, "count": 6.0} and seen == [(1, 10.0), (2, 20.0), (3, 30.0)]


def test_ctrl_c_reports_how_many_steps_of_the_epoch_are_complete():
    totals = {}
    with pytest.raises(loop.Interrupted) as stop:  # inside the step: that step did not happen
        loop.run_epoch(_step(interrupt_at=30), iter([10, 20, 30, 40]), 4, totals)
    assert stop.value.steps_done == 2 and totals == {"loss": 30.0, "count": 4.0}

    def after_step(i, sums, seconds):
        if i == 1:
            raise KeyboardInterrupt

    totals = {}
    with pytest.raises(KeyboardInterrupt) as stop:  # after the step: it is complete and counted
        loop.run_epoch(_step(), iter([10, 20, 30]), 3, totals, after_step=after_step)
    assert isinstance(stop.value, loop.Interrupted) and stop.value.steps_done == 2 and totals["loss"] == 30.0


def test_a_stop_request_ends_the_epoch_at_the_next_step_boundary(monkeypatch):
    monkeypatch.setattr(loop, "_stop_requested", [])

    def after_step(i, sums, seconds):
        if i == 1:  # the signal lands while step 1 is being finished: it completes and counts
            loop.request_stop(15)

    totals = {}
    with pytest.raises(loop.Interrupted) as stop:
        loop.run_epoch(_step(), iter([10, 20, 30, 40]), 4, totals, after_step=after_step)
    assert stop.value.steps_done == 2 and totals == {"loss": 30.0, "count": 4.0}
    with pytest.raises(KeyboardInterrupt):  # a second signal does not wait
        loop.request_stop(15)
    with pytest.raises(loop.Interrupted) as stop:  # a later epoch stops before its first step
        loop.run_epoch(_step(), iter([10, 20]), 2, totals, first_step=1)
    assert stop.value.steps_done == 1
