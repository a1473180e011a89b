"""README's quick start stays true: two command lines, and CI runs exactly the test line."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def quick_start_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines()[1:] if line.strip()]


def test_quick_start_is_two_lines_and_ci_runs_the_test_line():
    install_and_run, install_and_test = quick_start_lines()
    assert install_and_run.startswith("pip install torch==2.13.0 -e .")
    assert "pytest" in install_and_test
    ci_commands = [line for line in (ROOT / ".ci/run").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
    assert install_and_test in ci_commands
