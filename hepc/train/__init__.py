"""The training core: the GPT, its optimizer and schedules, the data stream, one cycle's loop, scoring.

Nothing here is imported by the compiler or the planner; step bodies import these modules (and torch)
lazily so bookkeeping stays fast. `schedule.py` is pure math and never imports torch.
"""
