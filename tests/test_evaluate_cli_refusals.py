"""``evomerge evaluate`` refusals that say what to do, on the shipped small zoo's real files:

* ``--split`` other than validation or test is refused before the zoo's model loads;
"""

from __future__ import annotations

from _cli_helpers import one_error, run_cli


def test_an_unknown_split_is_refused_before_the_model_loads(capsys) -> None:
    # before: the model loaded (a progress bar), then "task `rev_digits` has no split `tests`"
    line = one_error(["evaluate", "--small", "--max-samples", "5", "--split", "tests"], capsys)
    assert line == "error: --split tests: not a split evaluate scores; use validation or test"
