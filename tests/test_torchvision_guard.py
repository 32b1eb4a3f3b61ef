"""The guard makes timm importable here and stays out of the way where torchvision's ops load."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_timm_imports_after_prunebench():
    out = _run(
        """
        import prunebench, timm, torch
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, class_token=False, global_pool="avg", num_classes=0)
        print(m(torch.randn(1, 3, 224, 224)).shape[-1])
        """
    )
    assert out == "192"


def test_guard_acts_only_when_the_compiled_ops_cannot_load():
    # Simulate a machine whose torchvision extension loads: the guard must define nothing.
    out = _run(
        """
        import torch
        torch.ops.load_library = lambda path: None
        from prunebench import _torchvision_guard as guard
        print(guard.ACTIVE, guard._LIBRARY is None)
        """
    )
    assert out == "False True"


def test_guard_provides_a_working_nms_when_it_acts():
    out = _run(
        """
        from prunebench import _torchvision_guard as guard
        import torch, torchvision
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
        keep = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        print(guard.ACTIVE, keep.tolist())
        """
    )
    active, keep = out.split(" ", 1)
    if active == "True":
        assert keep == "[0, 2]"
