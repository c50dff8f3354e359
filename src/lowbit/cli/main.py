"""``lowbit``: the typer application. Importing this module imports neither torch nor
transformers; each command imports what it needs when it runs."""

from __future__ import annotations

import signal
import sys
import threading

import typer

from lowbit.cli import compare as compare_cmd
from lowbit.cli import eval as eval_cmd
from lowbit.cli import export as export_cmd
from lowbit.cli import inspect as inspect_cmd
from lowbit.cli import ls as ls_cmd
from lowbit.cli import pareto as pareto_cmd
from lowbit.cli import perf as perf_cmd
from lowbit.cli import plan as plan_cmd
from lowbit.cli import quantize as quantize_cmd
from lowbit.cli import report as report_cmd
from lowbit.cli import run as run_cmd
from lowbit.cli import sensitivity as sensitivity_cmd
from lowbit.cli import sweep as sweep_cmd

app = typer.Typer(
    name="lowbit",
    help="A lab for low-bit and mixed-precision quantization of large language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_cmd.run)
app.command("quantize")(quantize_cmd.quantize)
app.command("eval")(eval_cmd.evaluate)
app.command("compare")(compare_cmd.compare)
app.command("export")(export_cmd.export)
app.command("sensitivity")(sensitivity_cmd.sensitivity)
app.command("plan")(plan_cmd.plan)
app.command("pareto")(pareto_cmd.pareto)
app.command("perf")(perf_cmd.perf)
app.command("profile")(perf_cmd.profile)
app.command("inspect")(inspect_cmd.inspect)
app.command("ls")(ls_cmd.ls)
app.command("report")(report_cmd.report)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwinds like an error (every atomic output removes its partial
    files), but no ``except Exception`` on the way can swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


app.command("sweep")(sweep_cmd.sweep)
app.command("results")(sweep_cmd.results)


def main() -> None:
    """Entry point that turns lowbit's own errors into one clear line and exit code 2, and
    SIGINT / SIGTERM into one line saying what was kept and exit code 130 / 143."""
    previous = _catch_signals()
    try:
        _main()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _catch_signals() -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}


def _main() -> None:
    from lowbit import _io
    from lowbit.errors import LowbitError

    start = len(_io.PUBLISHED)
    try:
        app(standalone_mode=False)
    except LowbitError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except OSError as exc:  # unwritable output, full disk, ...: the message names the file
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt, typer.Abort) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _say_interrupted(signum, _io.PUBLISHED[start:])
        sys.exit(128 + signum)
    except Exception as exc:  # usage errors (click's, or typer's own copy of click's classes)
        if callable(getattr(exc, "show", None)) and isinstance(
            getattr(exc, "exit_code", None), int
        ):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _say_interrupted(signum: int, published: list) -> None:
    command = " ".join(a for a in sys.argv[1:2])
    # files inside an OUT.partial directory (a checkpoint) are not outputs: `quantize` says
    # itself what it kept for --resume
    kept = [p for p in published if not any(x.endswith(".partial") for x in p.parts)]
    done = (
        f"kept (complete): {', '.join(map(str, kept))}; nothing else complete was written"
        if kept
        else "nothing complete was written (partial outputs were removed or kept as .partial)"
    )
    name = signal.Signals(signum).name
    typer.secho(f"interrupted by {name} during `lowbit {command}`: {done}", err=True, fg="red")


if __name__ == "__main__":
    main()
