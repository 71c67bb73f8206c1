"""experiments.accelerator_check on CPU: no accelerator, the lowering checks, exit 0.

The full lowering grid runs in tests/lm/test_kernels_on_mesh.py; here one family on the
one-device mesh keeps it cheap, and the 8-device subprocess is replaced by a stub.
"""

from experiments import accelerator_check


def test_cpu_reports_no_accelerator_and_exits_zero(monkeypatch, capsys):
    monkeypatch.setattr(accelerator_check, "has_accelerator", lambda: False)  # the CPU path on any host
    calls = []
    monkeypatch.setattr(accelerator_check, "run_lowering_subprocess", lambda: calls.append(1) or 0)
    assert accelerator_check.main([]) == 0
    assert calls == [1]
    assert "no accelerator" in capsys.readouterr().out
    monkeypatch.setattr(accelerator_check, "run_lowering_subprocess", lambda: 1)
    assert accelerator_check.main([]) == 1


def test_lowering_checks_count_the_kernels(monkeypatch):
    monkeypatch.setattr(accelerator_check, "FAMILIES", ("griffin",))
    monkeypatch.setattr(accelerator_check, "LOWERING_MESHES", ((1, 1, 1, 1),))
    results = accelerator_check.lowering_checks()
    # Griffin's recurrent block (scan forward + backward) and local attention (3 kernels).
    assert results == {"griffin 1x1x1x1 tpu": 5, "griffin 1x1x1x1 gpu": 5}


def test_peak_flops_by_device_kind():
    class Device:
        device_kind = "NVIDIA H200"

    assert accelerator_check.peak_flops(Device()) == 989e12
    Device.device_kind = "cpu"
    assert accelerator_check.peak_flops(Device()) is None
