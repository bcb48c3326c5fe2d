"""Progress lines off a terminal (logs, CI, `nohup`): each busy worker's step, its rate and an ETA."""

from __future__ import annotations

import time

from hepc.execute.progress import StepProgress, _eta


def test_eta_from_the_rate_since_the_step_started():
    assert _eta(10.0, 5, 20) == "0:00:30"
    assert _eta(3700.0, 1, 2) == "1:01:40"
    assert _eta(1.0, 0, 5) == "" and _eta(1.0, None, None) == ""  # no rate yet: no ETA


def test_plain_lines_name_the_worker_and_carry_an_eta(capsys):
    progress = StepProgress(3)
    assert not progress.live  # pytest captures stderr: not a terminal
    progress.start("cycle", "t1-c001", slot="w1")
    progress.start("score", "t1-c001-val", slot="w2")
    progress.running["w1"]["t0"] = time.time() - 10.0  # 10 s into the cycle
    progress.update({"step": 5, "steps": 20, "loss": 2.5, "tokens_per_s": 1000.0}, slot="w1")
    progress.finish({"loss": 2.4}, slot="w2")
    progress.finish({"final_loss": 2.3}, slot="w1")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "w1: [1/3] cycle t1-c001 ..." and err[1] == "w2: [2/3] score t1-c001-val ..."
    assert err[2].startswith("  w1: [1/3] cycle t1-c001: step 5/20 loss 2.5000, 1,000 tok/s, ETA 0:00:")
    assert err[3].startswith("w2: [2/3] score t1-c001-val done in") and err[3].endswith("(loss 2.4000)")
    assert err[4].startswith("w1: [1/3] cycle t1-c001 done in") and err[4].endswith("(final loss 2.3000)")
