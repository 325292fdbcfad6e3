"""``evomerge evaluate`` refusals that say what to do, on the shipped small zoo's real files:

* ``--split`` other than validation or test is refused before the zoo's model loads;
* two ``--expert`` folders of one name are refused pointing at the config's ``{path, name}``
  entries (not at renaming a folder of the installed package), and that config scores both;
"""

from __future__ import annotations

import yaml

from _cli_helpers import one_error, run_cli


def test_an_unknown_split_is_refused_before_the_model_loads(capsys) -> None:
    # before: the model loaded (a progress bar), then "task `rev_digits` has no split `tests`"
    line = one_error(["evaluate", "--small", "--max-samples", "5", "--split", "tests"], capsys)
    assert line == "error: --split tests: not a split evaluate scores; use validation or test"


def test_two_experts_of_one_name_are_named_through_the_config(small_zoo, tmp_path, capsys) -> None:
    full, lora = small_zoo.full_dirs["brackets"], small_zoo.expert_dirs["brackets"]
    line = one_error(["evaluate", "--small", "-e", full, "-e", lora, "--max-samples", "4"], capsys)
    assert line.startswith(f"error: --expert {lora}: a candidate named `brackets` is already given; "), line
    assert "rename the folder" not in line  # the folder lies inside the installed package
    assert "`experts: {experts: [{path: DIR, name: NAME}, ...]}`" in line and "-c and no --expert" in line
    # the way the line gives works
    cfg = tmp_path / "names.yaml"
    cfg.write_text(yaml.safe_dump({"experts": {"experts": [{"path": str(full), "name": "full_brackets"},
                                                           {"path": str(lora), "name": "lora_brackets"}]}}))
    code, out, err = run_cli(["evaluate", "--small", "-c", cfg, "--tasks", "brackets", "--max-samples", "4"], capsys)
    assert code == 0, err
    assert [row.split()[0] for row in out.splitlines()[2:]] == ["base", "full_brackets", "lora_brackets"], out
