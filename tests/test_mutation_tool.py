"""tools/mutation.py: the mutation-testing driver (mutmut itself is a dev-only dependency, not needed here)."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import mutation  # noqa: E402


def fake_mutmut(script):
    """A Popen that runs ``script`` in place of ``python -m mutmut run ...``, with the tool's other arguments."""
    real_popen = subprocess.Popen

    def popen(command, **kwargs):
        assert command[1:4] == ["-m", "mutmut", "run"]
        return real_popen([sys.executable, "-c", script], **kwargs)
    return popen


def test_a_failing_mutmut_run_stops_the_tool_with_its_last_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    monkeypatch.setattr(mutation.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(mutation, "selected_files", lambda modules: [Path("utils/inference.py")])
    monkeypatch.setattr(mutation.subprocess, "Popen", fake_mutmut(
        "print('\\n'.join(f'line {i}' for i in range(100)))\n"
        "print('ModuleNotFoundError: No module named train_x')\n"
        "print('failed to collect stats. runner returned 1'); raise SystemExit(1)"))
    with pytest.raises(SystemExit) as stopped:
        mutation.main(["utils/inference.py"])
    message = str(stopped.value.code)
    assert "No module named train_x" in message and "failed to collect stats" in message
    assert message.startswith("line 72\n")  # the last MUTMUT_LOG_LINES (30) lines only
    assert message.endswith(f"error: mutmut failed on utils/inference.py (exit 1); whole log: "
                            f"{tmp_path / 'mutants' / 'mutmut-run.log'}")


def test_a_finished_mutmut_run_goes_on_to_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    monkeypatch.setattr(mutation.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(mutation, "selected_files", lambda modules: [Path("utils/inference.py")])
    monkeypatch.setattr(mutation.subprocess, "Popen", fake_mutmut("print('done')"))
    mutation.main(["utils/inference.py"])
    out = capsys.readouterr().out
    assert "--- utils/inference.py" in out and "utils/inference.py" in out.splitlines()[-1]
    assert (tmp_path / "mutants" / "mutmut-run.log").read_text() == "done\n"


def test_only_mutants_that_change_argparse_display_text_count_as_help_text(tmp_path, monkeypatch):
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    (tmp_path / "mutants" / "utils").mkdir(parents=True)
    original = ('    group = parser.add_argument_group("model")\n'
                '    group.add_argument("--tile", type=int, default=512, metavar="PX", help="tile side")\n')
    variants = {
        "orig": original,
        "1": original.replace('help="tile side"', 'help="XXtile sideXX"'),
        "2": original.replace(', help="tile side"', ""),
        "3": original.replace('metavar="PX"', 'metavar=None'),
        "4": original.replace('"model"', '"XXmodelXX"'),
        "5": original.replace("type=int, ", ""),
        "6": original.replace("default=512", "default=513"),
        "7": original.replace('"--tile"', '"XX--tileXX"'),
    }
    (tmp_path / "mutants" / "utils" / "cli.py").write_text("".join(
        f"def x_add_args__mutmut_{number}(parser):\n{body}\n" for number, body in variants.items()))
    assert mutation.help_text_only(Path("utils/cli.py")) == {f"utils.cli.x_add_args__mutmut_{n}" for n in "1234"}
    assert mutation.help_text_only(Path("utils/other.py")) == set()  # never run: nothing to classify
