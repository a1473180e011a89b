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


def test_no_path_outside_the_repository():
    """A user who clones the repository has only the repository: no ``../`` path in the README, and
    no file the project tracks names a path outside it (another machine's home or work folder)."""
    import re
    import subprocess

    assert "../" not in (ROOT / "README.md").read_text(), "README.md names a path outside the repository"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = [name for name in tracked if name.endswith((".py", ".md", ".toml", ".ini", ".cfg", ".yaml", ".yml", ".json"))
             and not name.startswith("results/")]  # result files record the machine's own run folders
    outside = re.compile(r"\.\./shared|(?<![\w.])/(work|home|root|Users)/\w")
    found = [f"{name}:{i}" for name in texts for i, line in enumerate((ROOT / name).read_text().splitlines(), 1)
             if outside.search(line)]
    assert not found, f"paths outside the repository: {found}"


def readme_sweep_commands() -> list[str]:
    """Every ``python -m benchmarks.run ... --out results/X`` command of the README's code blocks
    (continuation lines joined)."""
    blocks = (ROOT / "README.md").read_text().split("```")[1::2]
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#", 1)[0].strip()
            if command.startswith("python -m benchmarks.run ") and "--out results/" in command:
                commands.append(command)
    return commands


def test_readme_sweep_commands_rerun_their_committed_folders():
    """A README command that made a committed sweep folder still names that folder's settings: rerun
    against it (say after a default changed), it would add to it or skip its finished cells, not be
    refused for other settings (benchmarks.run.check_manifest)."""
    import shlex

    from benchmarks import run
    from benchmarks.store import ResultStore
    from rlft import cli

    commands = readme_sweep_commands()
    assert len(commands) >= 8, commands
    for command in commands:
        args = run.parse_args(shlex.split(command)[3:])
        root = ROOT / args.out
        assert (root / "sweep.json").is_file(), f"{args.out} (from the README) is not committed"
        grid = run.parse_grid(args.grid, cli.comma_list(args.algos))
        run.check_manifest(ResultStore(root), run.sweep_settings(args), grid)  # raises UsageError on a mismatch
