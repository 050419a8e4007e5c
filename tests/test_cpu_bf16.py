"""bf16 products through fp32 on CPUs without bf16 kernels: the same values as fp32 products of the bf16 inputs rounded
once, gradients included, other dtypes untouched, and (where the CPU lacks bf16 kernels) many times faster."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from qlora_utils.speed.cpu_bf16 import SWITCH_ENV, has_bf16_kernels

CHECK = textwrap.dedent("""
    import torch
    from qlora_utils.speed.cpu_bf16 import install, products
    torch.manual_seed(0)
    bf = torch.bfloat16
    a, b = torch.randn(7, 33), torch.randn(33, 5)
    bias, a3, b3 = torch.randn(5), torch.randn(3, 7, 33), torch.randn(3, 33, 5)
    fp32_before = a @ b  # PyTorch's own fp32 kernel, before the kernels are replaced
    said = products()  # a run's record says the same before and after the call
    assert install() and install(), "installed once, then remembered"
    assert products() == said
    assert products().startswith("fp32 products"), products()
    def rounded(x):
        return x.to(bf)
    assert torch.equal(a.to(bf) @ b.to(bf), rounded(a.to(bf).float() @ b.to(bf).float()))
    assert torch.equal(torch.addmm(bias.to(bf), a.to(bf), b.to(bf), beta=0.5, alpha=2.0),
                       rounded(torch.addmm(bias.to(bf).float(), a.to(bf).float(), b.to(bf).float(), beta=0.5, alpha=2.0)))
    assert torch.equal(torch.bmm(a3.to(bf), b3.to(bf)), rounded(torch.bmm(a3.to(bf).float(), b3.to(bf).float())))
    assert torch.equal(torch.baddbmm(bias.to(bf), a3.to(bf), b3.to(bf)),
                       rounded(torch.baddbmm(bias.to(bf).float(), a3.to(bf).float(), b3.to(bf).float())))
    assert torch.equal(a @ b, fp32_before), "fp32 products are PyTorch's own"
    x = torch.randn(2, 6, 33, dtype=bf, requires_grad=True)
    w = torch.randn(5, 33, dtype=bf, requires_grad=True)
    torch.nn.functional.linear(x, w).sum().backward()  # 3-D input: matmul -> mm, backward -> mm twice
    ones = torch.ones(12, 5, dtype=bf)
    assert torch.equal(w.grad, rounded(ones.float().t() @ x.detach().reshape(12, 33).float()))
    assert torch.equal(x.grad, rounded(ones.float() @ w.detach().float()).reshape(2, 6, 33))
    with torch.autocast("cpu", dtype=bf):  # autocast casts to bf16 and calls the same kernels, without recursion
        y = torch.nn.functional.linear(a, b.t())
    assert y.dtype == bf and torch.equal(y, rounded(a.to(bf).float() @ b.to(bf).float()))
    print("ok")
""")


def test_bf16_products_are_fp32_products_of_the_same_inputs_rounded_once() -> None:
    env = {**os.environ, SWITCH_ENV: "1"}  # "1": installed on any CPU, so that this runs everywhere
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_a_bad_switch_is_one_clear_error() -> None:
    code = "from qlora_utils.speed.cpu_bf16 import install; install()"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, SWITCH_ENV: "yes"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "QLORA_BF16_VIA_FP32='yes': use 1 (always), 0 (never)" in out.stderr


@pytest.mark.skipif(has_bf16_kernels(), reason="this CPU has bf16 kernels: PyTorch's own are used, nothing to speed up")
def test_without_bf16_kernels_the_products_are_many_times_faster() -> None:
    code = textwrap.dedent("""
        import sys, time, torch
        from qlora_utils.speed.cpu_bf16 import install
        torch.set_num_threads(1)
        a, b = torch.randn(256, 512, dtype=torch.bfloat16), torch.randn(512, 512, dtype=torch.bfloat16)
        def seconds():
            a @ b
            start = time.perf_counter()
            for _ in range(3):
                a @ b
            return time.perf_counter() - start
        before = seconds()
        assert install()
        print(before / seconds())
    """)
    out = subprocess.run([sys.executable, "-c", code], env={k: v for k, v in os.environ.items() if k != SWITCH_ENV},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout) > 5, f"only {float(out.stdout):.1f}x faster"  # measured 40-70x on an AVX2 EPYC


def test_a_rerun_of_an_older_commit_gets_the_route_in_every_python_process(tmp_path, monkeypatch) -> None:
    from qlora_utils.grid.reproduce import platform_fix

    old, new = tmp_path / "old", tmp_path / "new"
    (new / "qlora_utils" / "speed").mkdir(parents=True)
    (new / "qlora_utils" / "speed" / "cpu_bf16.py").write_text("")
    old.mkdir()
    monkeypatch.setenv(SWITCH_ENV, "0")
    assert platform_fix(old) is None  # not wanted here
    monkeypatch.setenv(SWITCH_ENV, "1")
    assert platform_fix(new) is None  # the commit has it itself
    folder = platform_fix(old)
    assert folder is not None and folder.parent == old
    code = "import sys; print(bool(sys.modules['_qlora_cpu_bf16']._library))"  # installed at start-up
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, SWITCH_ENV: "1", "PYTHONPATH": str(folder)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-3000:]


def test_installed_reports_without_installing() -> None:
    code = ("from qlora_utils.speed import cpu_bf16\n"
            "print(cpu_bf16.installed(), len(cpu_bf16._library), cpu_bf16.install(), cpu_bf16.installed())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, SWITCH_ENV: "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["False", "0", "True", "True"], out.stderr[-3000:]
