"""`--device` is checked in one place: every stage that runs models says the same about a bad one."""

from __future__ import annotations

import pytest
from tiny_models import residual_conv_net

from trtq import api
from trtq.calibrate.backend import make_backend
from trtq.devices import check_device
from trtq.errors import TrtqError
from trtq.runtime import runner_factory

MESSAGE = r"--device 'tpu' is not a device name trtq understands: neither cpu nor cuda\[:N\]\."


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_accepted_spellings(device):
    assert check_device(device) == device


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda0", " cpu", "mps"])
def test_refused_spellings(device):
    with pytest.raises(TrtqError, match="is not a device name trtq understands"):
        check_device(device)


def test_calibration_evaluation_and_options_refuse_a_bad_device_alike():
    model = residual_conv_net()
    raisers = [lambda: make_backend("tpu", model, ["r1"], histogram=True),  # calibration
               lambda: runner_factory("tpu"),  # compare, sensitivity, the --target search
               lambda: api.QuantizeOptions(device="tpu")]  # before any work
    for make in raisers:
        with pytest.raises(TrtqError, match=MESSAGE) as info:
            make()
        assert info.value.hint == "use --device cpu or --device cuda (or cuda:N)."


def test_calibration_threads_follow_the_affinity_mask_not_the_host(monkeypatch):
    # A process restricted to 2 of 16 cores (taskset, a container's cpuset) sizes its onnxruntime
    # pool by the 2 it may use: 16 spinning threads on 2 cores ran 36x slower than plain inference.
    import os

    from trtq.calibrate.backend_ort import OrtBackend
    from trtq.devices import usable_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert usable_cpus() == 2
    backend = OrtBackend(residual_conv_net(), ["r1"], histogram=True)
    assert backend._threads == 2
    assert backend._observing is None or backend._observing.session.get_session_options().intra_op_num_threads == 2
