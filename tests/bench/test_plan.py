"""What each mode measures, and how often: ``bench.plan.cases`` and ``bench.cli.mode_of``."""

from __future__ import annotations

from bench.cli import mode_of, parse
from bench.plan import MODES, cases


def _repeats(mode: str, *argv: str) -> dict[str, int]:
    return {c.key: c.repeats for c in cases(mode_of(parse(["--mode", mode, *argv])))}


def test_short_runs_are_repeated_more_than_the_rest() -> None:
    full = _repeats("full")
    assert full["chain 100"] == full["chord 100"] == MODES["full"].small_repeats == 15
    assert full["chain 1,000"] == full["chord 1,000"] == full["100 executions x 20"] == 5
    assert full["chain 10,000"] == full["chord 10,000"] == 2
    quick = _repeats("quick")
    assert quick["chord 100"] == 6 and quick["chord 1,000"] == quick["100 executions x 20"] == 4
    assert "chord 10,000" not in quick


def test_repeats_given_on_the_command_line_apply_to_every_shape() -> None:
    assert set(_repeats("full", "--repeats", "5").values()) == {5}
