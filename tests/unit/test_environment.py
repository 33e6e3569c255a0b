"""`mlstack env`'s export lines: a shell that evals them gets every value back byte for byte."""

from __future__ import annotations

import subprocess

from mlstack.stack.environment import export_lines


def test_export_lines_survive_eval_with_quotes_spaces_and_dollars():
    values = {"A": "plain", "B": "two words", "C": 'it\'s $HOME `x` "q"', "D": "a=b,c=null"}
    script = export_lines(values) + 'printf "%s\\n" "$A" "$B" "$C" "$D"'
    shown = subprocess.run(["bash", "-c", script], env={}, capture_output=True, text=True, check=True).stdout
    assert shown.splitlines() == list(values.values())
