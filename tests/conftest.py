"""Test-session set-up shared by every test module."""

from __future__ import annotations

import signal

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across
# exec: the `hepc` processes the tests start and then interrupt with SIGINT (Ctrl-C) would never
# see it. A handled signal is reset to its default on exec, so handling it here gives every child
# Python its normal Ctrl-C behaviour whatever started the test run.
signal.signal(signal.SIGINT, signal.default_int_handler)
