"""The vLLM engine tests: they run where vLLM is installed (``tox -e vllm``), nowhere else.

Where the ``vllm`` package is not installed (the main environment: CI's ``python -m pytest``),
these files are NOT collected (``collect_ignore_glob`` below) and the run's summary says so in one
line; nothing is skipped silently. Where it is installed, every test runs: a broken vLLM install
fails loudly instead of skipping.

vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with both cores
(``VLLM_CPU_OMP_THREADS_BIND``), see :mod:`rlft.engines.vllm`. Engines are shared per module
(each start costs 5-15 s); tests that change an engine's weights restore them.
"""

import importlib.util

import pytest

# (this folder itself is importable as a namespace package "vllm" when tests/ is on sys.path:
# only a real package, with an __init__.py, counts)
_spec = importlib.util.find_spec("vllm")
VLLM_INSTALLED = _spec is not None and _spec.origin is not None

if not VLLM_INSTALLED:
    collect_ignore_glob = ["test_*.py"]


def pytest_terminal_summary(terminalreporter):
    if not VLLM_INSTALLED:
        terminalreporter.write_line(
            "tests/vllm: not collected (vLLM is not installed here); run them with `tox -e vllm`, see DEVELOPERS.md")


@pytest.fixture(scope="session")
def tiny_vllm(tiny):
    """A :class:`~rlft.engines.vllm.VLLMEngine` on the tiny preset (fp32). Restore weights you change."""
    from rlft.engines.vllm import VLLMEngine

    model, tok = tiny
    engine = VLLMEngine(model, tok)
    yield engine
    engine.close()
