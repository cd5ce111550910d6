"""The runtime contract (tmifpe.runtime.numerics) and the environment record."""

from __future__ import annotations

import json

import pytest
import torch

from tmifpe.runtime import environment, fp32_precision_state, numerics, resolve_device


@pytest.fixture
def tf32_caller():
    """A caller that runs with TF32 everywhere, non-deterministic algorithms and 1 thread."""
    before = fp32_precision_state(), torch.get_num_threads()
    for backend in (torch.backends.cuda.matmul, torch.backends.cudnn.conv,
                    torch.backends.cudnn.rnn):
        backend.fp32_precision = "tf32"
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(False)
    yield
    state, threads = before
    torch.backends.cuda.matmul.fp32_precision = state["matmul"]
    torch.backends.cudnn.conv.fp32_precision = state["cudnn.conv"]
    torch.backends.cudnn.rnn.fp32_precision = state["cudnn.rnn"]
    torch.set_num_threads(threads)


def test_contract_inside_and_caller_state_restored(tf32_caller) -> None:
    with numerics(threads=2):
        assert fp32_precision_state() == {"matmul": "ieee", "cudnn.conv": "ieee",
                                          "cudnn.rnn": "ieee"}
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.get_num_threads() == 2
    assert set(fp32_precision_state().values()) == {"tf32"}
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1


def test_contract_restored_after_an_exception(tf32_caller) -> None:
    with pytest.raises(RuntimeError, match="boom"), numerics(threads=2):
        raise RuntimeError("boom")
    assert set(fp32_precision_state().values()) == {"tf32"}
    assert torch.get_num_threads() == 1


def test_bad_thread_count_is_one_line() -> None:
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"), numerics(threads=0):
        pass


def test_environment_is_stable_and_json() -> None:
    env = environment("cpu")
    assert env == environment("cpu")  # no time, host or path: equal runs, equal records
    json.dumps(env)
    assert env["device"] == "cpu" and env["torch"] == torch.__version__
    assert env["hardware_class"].startswith(f"cpu/{torch.backends.cpu.get_cpu_capability()}/")
    with numerics():
        assert environment("cpu")["fp32_precision"]["matmul"] == "ieee"


def test_resolve_device() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
