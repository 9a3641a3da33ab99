"""What `asymbp run` and `asymbp sweep` check before any work: the device (auto, cuda, mps,
nonsense), whether the network takes the dataset's inputs, the data itself; the exit status of a
sweep with failed runs; the bf16 note; and the public names reachable from a plain
`import asymbp`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from asymbp import hardware, models, store
from asymbp.cli import main
from asymbp.errors import AsymbpError
from asymbp.sweep import plan, run_key, worker_device
from asymbp.train import TrainConfig, train


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _npz(path, x_train, x_test, classes=2):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=x_train.astype(np.float32),
             y_train=rng.integers(0, classes, len(x_train)), x_test=x_test.astype(np.float32),
             y_test=rng.integers(0, classes, len(x_test)))
    return f"npz:{path}"


@pytest.fixture
def vectors(tmp_path):
    rng = np.random.default_rng(0)
    return _npz(tmp_path / "vectors.npz", rng.normal(size=(40, 6)), rng.normal(size=(10, 6)))


@pytest.fixture
def small_images(tmp_path):
    rng = np.random.default_rng(0)
    return _npz(tmp_path / "images.npz", rng.normal(size=(40, 1, 8, 8)),
                rng.normal(size=(10, 1, 8, 8)))


def _one_line(capsys, status, code=2):
    captured = capsys.readouterr()
    assert status == code, captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("asymbp: error: "), \
        captured.err
    assert "Traceback" not in captured.err
    return captured.err


# ---- the device --------------------------------------------------------------------------------

HERE = hardware.resolve_device("auto")  # cuda on a machine with a GPU, else cpu


def test_auto_is_the_default_and_means_cuda_when_there_is_a_gpu():
    assert TrainConfig().device == "auto"
    assert hardware.resolve_device("auto", n_gpus=0) == "cpu"
    assert hardware.resolve_device("auto", n_gpus=2) == "cuda"
    assert hardware.resolve_device("cuda:1", n_gpus=0) == "cuda:1"  # explicit: kept
    assert HERE == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_device_is_not_in_the_run_key():
    base = {"dataset": "mnist5k", "method": "uSF+BN+BM", "lr_mult": 1.0, "seed": 1}
    keys = {run_key("A", {**base, "device": d}) for d in ("cpu", "auto", "cuda", "cuda:3")}
    assert keys == {run_key("A", base)}


def test_device_problems_name_what_this_machine_has():
    problem = hardware.device_problem
    assert problem("cpu", 0, False) is None and problem("auto", 0, False) is None
    msg = problem("cuda", 0, False)
    assert "torch.cuda.is_available() is False" in msg and "valid here: auto, cpu;" in msg
    assert "only 1 GPU;" in problem("cuda:7", 1, False)
    assert "only 2 GPUs" in problem("cuda:2", 2, False) and "cuda:0..cuda:1" in problem(
        "cuda:2", 2, False)
    assert problem("cuda:1", 2, False) is None and problem("cuda", 1, False) is None
    assert "mps.is_available() is False" in problem("mps", 0, False)
    assert problem("mps", 0, True) is None and "one MPS device" in problem("mps:1", 0, True)
    for bad in ("nonsense", "CPU", "cuda:x", "xpu", "meta", ""):
        with pytest.raises(AsymbpError, match="unknown device"):
            hardware.check_device_name(bad)
    hardware.check_device_name("cuda:7")  # a spelling check only: fine on any machine


def test_auto_spreads_sweep_workers_over_the_gpus_like_bare_cuda():
    assert [worker_device("auto", w, 4) for w in range(5)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]
    assert worker_device("auto", 3, 1) == "cuda"  # one visible GPU (a Ray actor's own)
    assert worker_device("auto", 3, 0) == "cpu"
    assert worker_device("cuda:1", 0, 4) == "cuda:1"


MISSING = ["mps"]
if not torch.cuda.is_available():
    MISSING += ["cuda", "cuda:0"]
MISSING.append(f"cuda:{torch.cuda.device_count() + 7}")


@pytest.mark.parametrize("device", ["nonsense", *MISSING])
def test_run_with_a_device_this_machine_lacks_is_one_line_before_the_data(device, tmp_path,
                                                                           capsys):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    ck = tmp_path / "ck" / "run.pt"
    # the dataset does not exist: the device is checked first, so the error is the device's
    err = _one_line(capsys, main(["run", "--device", device, "--dataset", "npz:/no/such.npz",
                                  "--epochs", "1", "--checkpoint", str(ck)]))
    assert device in err and "valid" in err
    assert not ck.parent.exists()


def test_run_says_which_device_it_used(vectors, capsys):
    assert main(["run", "--dataset", vectors, "--epochs", "1", "--threads", "1",
                 "--no-progress"]) == 0
    assert f"device: {HERE} (auto)\n" in capsys.readouterr().err
    assert main(["run", "--dataset", vectors, "--epochs", "1", "--threads", "1", "--json",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["device"] == "cpu" and result["config"]["device"] == "cpu"
    assert "device:" not in captured.err  # the JSON says it


# ---- the network against the dataset -------------------------------------------------------


@pytest.mark.parametrize("key", list(models.MODELS))
def test_every_network_takes_its_own_input_and_conv_networks_refuse_vectors(key):
    info = models.MODELS[key]
    if info.in_channels is None:
        models.check_fit(key, (40,))
        return
    models.check_fit(key, (info.in_channels, info.image_size, info.image_size))
    with pytest.raises(AsymbpError, match="vectors; valid models for it: mlp; give --model mlp"):
        models.check_fit(key, (40,), "mnist1d")


def test_too_small_images_name_the_smallest_size_and_the_networks_that_fit():
    with pytest.raises(AsymbpError) as info:
        models.check_fit("large", (1, 28, 28), "mnist5k")
    msg = str(info.value)
    assert "model 'large' needs images of at least" in msg and "mnist5k has 1×28×28" in msg
    assert "valid models for it: mnist, cifar, svhn, mlp, resnet20, resnet18" in msg
    least = int(msg.split("at least ")[1].split("×")[0])
    assert models.fits("large", (1, least, least)) and not models.fits("large",
                                                                       (1, least - 1, least - 1))


@pytest.mark.parametrize("model,data,match", [
    ("cifar", "vectors", "needs 3×32×32 images (C×H×W), dataset npz:"),
    ("mnist", "small_images", "needs images of at least 16×16 pixels"),
])
def test_run_with_a_network_that_cannot_take_the_data(model, data, match, request, tmp_path,
                                                      capsys):
    ck = tmp_path / "ck" / "run.pt"
    err = _one_line(capsys, main(["run", "--model", model, "--dataset",
                                  request.getfixturevalue(data), "--epochs", "1",
                                  "--checkpoint", str(ck)]))
    assert match in err and "valid models for it:" in err
    assert not ck.parent.exists()


# ---- sweep: checked before any run, non-zero when runs failed -------------------------------


def _sweep(db, *args):
    return main(["sweep", "--methods", "SGD", "--epochs", "1", "--no-progress", "--db", str(db),
                 *args])


def test_sweep_dry_run_rejects_a_nonsense_device(vectors, tmp_path, capsys):
    err = _one_line(capsys, _sweep(tmp_path / "r.db", "--datasets", vectors, "--device",
                                   "nonsense", "--dry-run"))
    assert "unknown device 'nonsense'" in err


def _bad_npz(tmp_path):
    x = np.zeros((10, 4), np.float32)
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.arange(9) % 2, x_test=x,
             y_test=np.arange(10) % 2)
    return f"npz:{tmp_path / 'bad.npz'}"


@pytest.mark.parametrize("case", ["device", "fit", "data"])
def test_sweep_checks_device_fit_and_data_before_any_run(case, vectors, small_images, tmp_path,
                                                         capsys):
    args = {"device": ["--datasets", vectors, "--device", MISSING[-1]],
            "fit": ["--datasets", f"{vectors},{small_images}", "--model", "mnist"],
            "data": ["--datasets", f"{vectors},{_bad_npz(tmp_path)}"]}[case]
    db = tmp_path / "r.db"
    err = _one_line(capsys, _sweep(db, *args))
    assert {"device": "valid here", "fit": "model 'mnist' needs", "data": "must match"}[case] in err
    assert not db.exists() and not (tmp_path / "r.db.runs").exists()  # nothing written


def test_a_sweep_stores_the_device_its_worker_resolved(vectors, tmp_path, capsys):
    db = tmp_path / "r.db"
    assert _sweep(db, "--datasets", vectors, "--lr-mults", "1", "--workers", "1") == 0
    assert f"device: {HERE} (auto)" in capsys.readouterr().err
    runs = store.load(db)
    assert list(runs["status"]) == ["done"]
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert list(runs["device"]) == [worker_device("auto", 0, n_gpus)]  # not "auto"


def test_train_itself_refuses_a_network_that_cannot_take_the_data(small_images):
    # what a sweep's worker stores as the failed run's error: one line
    with pytest.raises(AsymbpError, match="^model 'mnist' needs images of at least 16×16"):
        train({"dataset": small_images, "model": "mnist", "epochs": 1})


def test_a_sweep_with_failed_runs_exits_1_and_says_where_to_look(vectors, tmp_path, capsys):
    db = tmp_path / "r.db"
    runs = plan(methods=["SGD"], datasets=[vectors], lr_mults=[1], base={"epochs": 1})
    with store.Store(db) as s:  # a run that failed in an earlier sweep of this command
        s.add_runs(runs)
        s.start(runs[0].key, "host", "cpu", "0", None)
        s.fail(runs[0].key, "RuntimeError: out of memory")
    # the failed run is skipped (not retried), and the sweep still ends in failure
    status = _sweep(db, "--datasets", vectors, "--lr-mults", "1")
    captured = capsys.readouterr()
    assert status == 1
    assert "1 failed" in captured.out
    assert f"1 of 1 runs failed; see why with 'asymbp status --db {db}'" in captured.err


# ---- bf16 on a CPU without it -----------------------------------------------------------------

AVX2 = ("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2\n")


def test_native_bf16_is_read_from_the_cpu_flags():
    assert hardware.cpu_has_native_bf16(AVX2) is False
    assert hardware.cpu_has_native_bf16(AVX2.replace("avx2 fma", "avx512f avx512_bf16")) is True
    assert hardware.cpu_has_native_bf16(AVX2.replace("fma", "amx_bf16 amx_tile")) is True
    assert hardware.cpu_has_native_bf16("processor\t: 0\nFeatures\t: fp asimd bf16\n") is True
    assert hardware.cpu_has_native_bf16("model name : something\n") is None  # cannot tell
    assert hardware.bf16_note("bf16", "cpu", AVX2) == hardware.BF16_NOTE
    assert hardware.bf16_note("fp32", "cpu", AVX2) is None
    assert hardware.bf16_note("bf16", "cuda:0", AVX2) is None


def test_run_in_bf16_notes_a_cpu_without_native_bf16(vectors, capsys):
    assert main(["run", "--dataset", vectors, "--epochs", "1", "--threads", "1", "--amp",
                 "bf16", "--device", "cpu", "--json"]) == 0
    err = capsys.readouterr().err
    native = hardware.cpu_has_native_bf16()
    assert (hardware.BF16_NOTE in err) == (native is False), (native, err)


# ---- the public contract from a plain `import asymbp` ----------------------------------------


def test_import_asymbp_is_light_and_every_submodule_is_an_attribute():
    code = (
        "import sys, asymbp\n"
        "heavy = [m for m in ('pandas', 'matplotlib', 'ray', 'scipy') if m in sys.modules]\n"
        "print(heavy)\n"
        "for name in asymbp.SUBMODULES:\n"
        "    assert getattr(asymbp, name).__name__ == 'asymbp.' + name, name\n"
        "    assert name in dir(asymbp), name\n"
        "assert callable(asymbp.store.load) and callable(asymbp.train.train)\n"
        "assert callable(asymbp.report.table) and callable(asymbp.convert)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "ok"]
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        import asymbp

        asymbp.nonesuch  # noqa: B018
