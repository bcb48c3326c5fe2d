"""The `hepc` command line: a thin Typer app. Results go to stdout, narration and progress to stderr.

Every user-facing failure prints one located line per problem and exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

from hepc.execute import early_signals

early_signals.install()  # before the heavy imports below: a SIGTERM now exits 130, not 143

import os
import sys
from functools import wraps
from typing import Annotated

import typer

from hepc.errors import HepcError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hepc: compile and run hyper-epoch pretraining (q0) populations.",
    pretty_exceptions_enable=False,
)

SpecArg = Annotated[str, typer.Argument(help="Population spec (YAML).", show_default=False)]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides, e.g. population.cycles=12 prior.budgets=[1,4,all]"
                                        " (run: more specs may follow, each with its own overrides)")
]
StoreOpt = Annotated[
    str | None, typer.Option("--store", help="Store folder (default: $HEPC_STORE, runtime.store, or runs/).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ElsewhereOpt = Annotated[
    bool,
    typer.Option(
        "--data-elsewhere",
        help="The data lives on another machine: a source not found here is a warning, not an error (exit 2).",
    ),
]
MembersOpt = Annotated[
    bool, typer.Option("--members", help="Also print every member (snapshot) in a table; --json always has them.")
]
RefDataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--reference-data",
        help="Spec of single models trained on more data (data efficiency); repeat it to join several specs "
        "(SPEC::key=value overrides one of them).",
    ),
]
SPECS_HELP = "each followed by its own key=value overrides (or SPEC::key=value), e.g. q0.yaml population.cycles=8"
FamilyOpt = Annotated[
    list[str] | None,
    typer.Option("--family", help="NAME=SPEC: SPEC belongs to family NAME (repeat to join several specs into one, "
                 "tuned on val together); these families come first, the first is the baseline."),
]
def _check_split(value: str) -> str:
    if value not in ("val", "test"):
        raise typer.BadParameter(f"must be val or test (got {value!r})")
    return value


SplitOpt = Annotated[
    str, typer.Option("--split", help="Where figures are read: val (where everything is chosen) or test.",
                      callback=_check_split)
]


def split_result(compute):
    """A comparison whose families lack the split asked for is one located error, not a traceback."""
    from hepc.errors import SpecError
    from hepc.report.families import MissingSplit

    try:
        return compute()
    except MissingSplit as e:
        raise SpecError(f"--split: {e}") from None


def _plain_flags() -> None:
    """Rich help shows the value type beside every option, so a flag (`--json`, `--help`) reads
    `<bool>` as if it took a value: show nothing there for flags."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "plain_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich.plain_flags = True
    TyperOption.display_type_rich = display_type_rich


_plain_flags()


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def user_errors(fn):
    """Turn HepcError into located messages + exit 2, and Ctrl-C into exit 130, never a traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HepcError as e:
            for p in e.problems:
                err(f"error: {p}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            ignore_signals()  # a second Ctrl-C or SIGTERM must not cut the exit short (or make it 143)
            err("interrupted: finished steps are committed; `hepc run` resumes")
            exit_now(130)
        except BrokenPipeError:  # stdout closed early (`hepc diff A B | head`): the reader has what it wanted
            quiet_stdout()
            exit_now(0)
        except OSError as e:  # a disk or file problem outside a located check: one line, never a traceback
            from hepc.errors import printable
            from hepc.store.safe_io import os_error_message

            err(f"error: {printable(os_error_message(e))}")
            raise typer.Exit(2) from None

    return wrapper


def quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail on a closed pipe."""

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def ignore_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def exit_now(code: int) -> None:
    """Exit at once once an interrupt has been handled (leases released, record written): the
    interpreter's own shutdown could be cut by yet another signal and end as -SIGINT."""

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def stdout():
    """Rich console for results: tables keep their width when stdout is a file or a pipe."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    return console if console.is_terminal else Console(soft_wrap=True, width=160)


def load(spec: str, overrides, *, strict_data: bool = False, data_elsewhere: bool | None = None):
    """The loaded spec and its graph. strict_data: data that is not here is an error (located, exit 2).
    validate and plan pass their --data-elsewhere flag as `data_elsewhere`: then data that lives
    elsewhere (the flag, or the spec's runtime.data_elsewhere) is only a warning. `run` never passes it."""
    from hepc.compile.compiler import compile_spec
    from hepc.spec.load import load_spec

    loaded = load_spec(spec, overrides or [])
    if data_elsewhere is not None and (data_elsewhere or loaded.spec.runtime.data_elsewhere):
        strict_data = False
    return loaded, compile_spec(loaded, strict_data=strict_data)


def open_store(cli_value: str | None, loaded):
    from hepc.store.layout import resolve_store_path
    from hepc.store.objects import Store

    return Store(resolve_store_path(cli_value, loaded.spec.runtime.store))


def warn(compiled) -> None:
    for w in compiled.warnings:
        err(f"warning: {w}")


def check_extras(loaded) -> None:
    """Optional packages the spec's runtime asks for (runtime.tensorboard): exit 2 naming the extra."""
    from hepc.execute.tensorboard import check

    check(loaded)


def check_inputs(loaded, compiled) -> None:
    """Input problems known before any training (hepc/data/checks.py): errors exit 2, located. Data
    that lives on another machine (not here at all) stays a warning; data that is here and bad is an error."""
    from hepc.compile.compiler import UNAVAILABLE
    from hepc.data.checks import loaded_input_problems
    from hepc.errors import SpecError

    errors, warnings = loaded_input_problems(loaded)
    for w in warnings:
        err(f"warning: {w}")
    if errors and not any(w.startswith(UNAVAILABLE) for w in compiled.warnings):
        raise SpecError(errors)


def check_memory(loaded, compiled, *, refuse: bool) -> dict:
    """The estimated peak memory per device of each step kind (hepc/train/memory.py, no torch). refuse: a cycle
    that cannot fit the device is an error (exit 2, located at the field to change); else a warning."""
    from hepc.errors import Problem, SpecError
    from hepc.train.memory import memory_report

    report = memory_report(compiled)
    if report["problems"]:
        problems = [Problem(loaded.where(field), field, message) for field, message in report["problems"]]
        if refuse:
            raise SpecError(problems)
        for p in problems:
            err(f"warning: {p}")
    return report
