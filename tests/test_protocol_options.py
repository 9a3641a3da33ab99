"""Issue #14's protocol pieces as options of one run: Adam as an update rule, the loss as a
batch mean or sum, lr/wd milestones, Xavier initialisation, augmentation in the loop, resize,
a validation split of a given size. Each against an independent computation; tiny data.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from asymbp.cli import main
from asymbp.config import TrainConfig, check_config
from asymbp.errors import AsymbpError
from asymbp.methods import parse_method
from asymbp.optim import Adam, make_optimizer
from asymbp.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

D, C = 12, 3


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """Gaussian blobs in 12 dimensions, 3 classes, 120 train / 45 test."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(C, D)) * 1.5

    def make(n):
        y = rng.integers(0, C, size=n)
        return (centers[y] + rng.normal(size=(n, D))).astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = make(120), make(45)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def cfg(npz, **kw):
    return {**dict(dataset=npz, model="mlp", method="SGD", epochs=2, batch_size=40,
                   alignment=False), **kw}


# ---- 1. Adam as an update rule ----------------------------------------------------------------


@pytest.mark.parametrize("text,scheme,name", [("Adam", "BP", "Adam"),
                                              ("uSF+Adam", "uSF", "uSF+Adam"),
                                              ("brSF-25+BN+adam", "brSF", "brSF-25+BN+Adam")])
def test_method_grammar_takes_adam(text, scheme, name):
    spec = parse_method(text)
    assert (spec.scheme, spec.update, spec.name) == (scheme, "Adam", name)
    assert parse_method(spec.name) == spec


def test_two_update_rules_are_refused():
    with pytest.raises(AsymbpError, match="two update rules"):
        parse_method("uSF+BM+Adam")


def test_make_optimizer_adam_equals_torch_adam():
    """Steps through make_optimizer (betas, eps, decay from the run's fields) equal
    torch.optim.Adam fed the same gradients; momentum is not Adam's and is not passed."""
    torch.manual_seed(0)
    w0 = [torch.randn(4, 3), torch.randn(5)]
    ours = [w.clone().requires_grad_() for w in w0]
    ref = [w.clone().requires_grad_() for w in w0]
    opt = make_optimizer("adam", ours, lr=1e-2, momentum=0.5, weight_decay=1e-3,
                         betas=(0.8, 0.99), eps=1e-6)
    ref_opt = torch.optim.Adam(ref, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3)
    assert isinstance(opt, Adam)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sgd_still_gets_momentum():
    p = [torch.zeros(2, requires_grad=True)]
    opt = make_optimizer("SGD", p, lr=0.1, momentum=0.5, weight_decay=0.0)
    assert opt.param_groups[0]["momentum"] == 0.5 and "betas" not in opt.param_groups[0]


def test_betas_as_text_or_tuple():
    assert check_config(TrainConfig(method="Adam", betas="0.5,0.9")).update == "Adam"
    check_config(TrainConfig(method="Adam", betas=(0.5, 0.9)))
    check_config(TrainConfig(method="Adam", betas=[0.5, 0.9]))  # a stored config's JSON list


@pytest.mark.parametrize("betas", ["0.9", "a,b", "0.9,1.0", (0.9,), 0.9])
def test_bad_betas_are_one_line(betas):
    with pytest.raises(AsymbpError) as err:
        check_config(TrainConfig(method="Adam", betas=betas))
    assert "\n" not in str(err.value)


def test_adam_run_from_the_command_line(npz, capsys):
    code = main(["run", "--dataset", npz, "--model", "mlp", "--method", "uSF+Adam",
                 "--epochs", "1", "--batch-size", "40", "--betas", "0.8,0.99", "--eps", "1e-7",
                 "--base-lr", "1e-3", "--no-progress", "--json"])
    assert code == 0, capsys.readouterr().err
    assert '"betas": "0.8,0.99"' in capsys.readouterr().out


def test_adam_train_equals_a_torch_adam_loop(npz):
    """A one-epoch BP+Adam run equals the same loop written with torch.optim.Adam."""
    from asymbp import data as datasets
    from asymbp.models import build

    out = train(cfg(npz, method="Adam", epochs=1, base_lr=1e-3, weight_decay=1e-4))
    torch.manual_seed(1)
    ds = datasets.load(npz, None)
    x = torch.from_numpy(ds.x_train)
    mean = x.double().mean(0, keepdim=True).float()
    std = x.double().std(0, unbiased=False, keepdim=True).float()
    x, y = (x - mean) / std, torch.from_numpy(ds.y_train.astype(np.int64))
    model = build("mlp", C, in_channels=D, bn=False, bn_affine=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    loss_sum = 0.0
    for i in range(0, len(x), 40):
        idx = perm[i:i + 40]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx], reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum += loss.item()
    assert math.isclose(out["epochs"][0]["train_loss"], loss_sum / len(x), rel_tol=1e-5)


# ---- 2. the loss: batch sum or mean -----------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_mean_loss_with_lr_times_batch_equals_sum_loss(npz, momentum):
    """SGD without weight decay is linear in the gradient: the mean loss at lr × B takes the
    sum loss's steps (full batches: 120 = 3 × 40). The reported loss is per example in both."""
    common = dict(momentum=momentum, weight_decay=0.0, epochs=2)
    s = train(cfg(npz, loss="sum", base_lr=1e-3, **common))
    m = train(cfg(npz, loss="mean", base_lr=1e-3 * 40, **common))
    for a, b in zip(s["epochs"], m["epochs"]):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-5)
        assert a["test_error"] == b["test_error"]
    assert s["epochs"][0]["train_loss"] < 2 * math.log(C)  # per example, not per batch


def test_mean_loss_gradient_is_the_batch_mean(npz):
    """One step of plain SGD (m = 0, d = 0) from the same weights: the mean loss moves them by
    lr × mean gradient, computed here by autograd on the batch."""
    from asymbp import data as datasets
    from asymbp.models import build

    out = train(cfg(npz, loss="mean", method="SGD", momentum=0.0, weight_decay=0.0, epochs=1,
                    batch_size=120, base_lr=0.5))
    torch.manual_seed(1)
    ds = datasets.load(npz, None)
    x = torch.from_numpy(ds.x_train)
    mean = x.double().mean(0, keepdim=True).float()
    std = x.double().std(0, unbiased=False, keepdim=True).float()
    x, y = (x - mean) / std, torch.from_numpy(ds.y_train.astype(np.int64))
    model = build("mlp", C, in_channels=D, bn=False, bn_affine=False)
    nn.functional.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
        loss = nn.functional.cross_entropy(model(x), y).item()
    # the epoch's loss is measured before the step; so compare the next epoch's: run 2 epochs
    two = train(cfg(npz, loss="mean", method="SGD", momentum=0.0, weight_decay=0.0, epochs=2,
                    batch_size=120, base_lr=0.5))
    assert math.isclose(two["epochs"][1]["train_loss"], loss, rel_tol=1e-5)
    assert out["epochs"][0]["train_loss"] == two["epochs"][0]["train_loss"]


def test_unknown_loss_is_one_line():
    with pytest.raises(AsymbpError, match="unknown loss reduction 'avg'; valid: sum, mean"):
        check_config(TrainConfig(loss="avg"))


# ---- 3. schedules as milestones ---------------------------------------------------------------


def old_lr_at(epoch, epochs, base):
    """The paper's schedule as it was written before milestones (an independent statement)."""
    if epoch <= round(epochs * 50 / 65):
        return base
    if epoch <= round(epochs * 60 / 65):
        return base / 10
    return base / 100


@pytest.mark.parametrize("epochs", [65, 3, 10, 1, 2, 13, 130])
@pytest.mark.parametrize("base", [5e-4 * k for k in (100, 10, 1, 0.1, 0.01)] + [0.3])
def test_paper_schedule_is_an_instance_of_milestones(epochs, base):
    from asymbp.train import lr_at

    assert [lr_at(e, epochs, base) for e in range(1, epochs + 1)] == \
        [old_lr_at(e, epochs, base) for e in range(1, epochs + 1)]  # identical, not close


@pytest.mark.parametrize("spec,gamma", [("100:0.1,150:0.1,200:0.1", 0.1), ("3:0.5,5:0.5", 0.5),
                                        ("1:0.02", 0.02), ("2:0.3,2:0.3,7:0.3", 0.3)])
def test_milestones_equal_multistep_lr(spec, gamma):
    from asymbp.config import parse_milestones
    from asymbp.train import lr_at

    steps = parse_milestones(spec)
    epochs = 250 if "200" in spec else 10
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [m for m, _ in steps], gamma=gamma)
    for e in range(1, epochs + 1):
        assert lr_at(e, epochs, 0.1, steps) == pytest.approx(opt.param_groups[0]["lr"],
                                                             rel=1e-12), e
        opt.step()
        sched.step()


def test_lr_and_wd_milestones_in_a_run(npz):
    """The run's lrs are the milestones'; the weight decay steps too (PFA's '1:0.02'), seen in
    the optimizer's groups after the run through the checkpointed state."""
    from asymbp.train import weight_decay_at

    out = train(cfg(npz, epochs=4, base_lr=1e-3, lr_milestones="1:0.5,3:0.1",
                    wd_milestones="1:0.02", weight_decay=1e-2))
    assert [r["lr"] for r in out["epochs"]] == pytest.approx([1e-3, 5e-4, 5e-4, 5e-5], rel=1e-12)
    c = TrainConfig(weight_decay=1e-2, wd_milestones="1:0.02")
    assert [weight_decay_at(e, c) for e in (1, 2, 5)] == pytest.approx([1e-2, 2e-4, 2e-4])
    assert weight_decay_at(3, TrainConfig(weight_decay=5e-4)) == 5e-4


def test_wd_milestones_change_the_run(npz, tmp_path):
    """Weight decay stepped at epoch 1 to 0 equals a run without decay from epoch 2 on: the
    same first epoch, different later ones than the constant-decay run."""
    import torch as t

    ck = tmp_path / "ck.pt"
    train(cfg(npz, epochs=2, weight_decay=0.5, wd_milestones="1:1e-30"), checkpoint=ck)
    groups = t.load(ck, weights_only=False)["optimizer"]["param_groups"]
    assert all(g["weight_decay"] == pytest.approx(0.5e-30) for g in groups)


@pytest.mark.parametrize("spec", ["100", "a:0.1", "0:0.1", "10:0", "10:-1", "10:inf"])
def test_bad_milestones_are_one_line(spec):
    with pytest.raises(AsymbpError) as err:
        check_config(TrainConfig(lr_milestones=spec))
    assert "\n" not in str(err.value) and "milestones" in str(err.value)


# ---- 4. Xavier initialisation -----------------------------------------------------------------


def built(model, shape, method="uSF", **kw):
    """The run's network for inputs of `shape`, as train() builds it."""
    import asymbp.train as T

    config = TrainConfig(model=model, method=method, **kw)
    spec = check_config(config)
    x = torch.zeros(2, *shape)
    tensors = T.Tensors(x, torch.zeros(2, dtype=torch.long), x, torch.zeros(2, dtype=torch.long),
                        None, None, 10, model)
    torch.manual_seed(config.seed)
    return T.build_model(config, spec, tensors)


@pytest.mark.parametrize("model,shape", [("lenet_mnist", (1, 32, 32)), ("mlp", (20,))])
def test_xavier_init_bounds_and_zero_biases(model, shape):
    from asymbp.layers import asym_layers

    net = built(model, shape, init="xavier")
    layers = asym_layers(net)
    assert layers
    for _, layer in layers:
        W = layer.weight
        fan_in = W.shape[1] * W[0, 0].numel()
        fan_out = W.shape[0] * W[0, 0].numel()
        a = math.sqrt(6 / (fan_in + fan_out))
        assert W.abs().max() <= a
        if W.numel() >= 500:  # uniform on (-a, a): it nearly reaches both ends, variance a²/3
            assert W.max() > 0.95 * a and W.min() < -0.95 * a
            assert W.var().item() == pytest.approx(a * a / 3, rel=0.15)
        assert layer.bias is None or torch.count_nonzero(layer.bias) == 0
        # uSF's feedback is made from W after the initialisation
        torch.testing.assert_close(layer.feedback_weight(), torch.sign(W))


def test_default_init_is_the_networks_own():
    a, b = built("mlp", (20,)), built("mlp", (20,), init="default")
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = built("mlp", (20,), init="xavier")
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


# ---- 5. augmentation in the loop, resize ------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """3-class 3×8×8 images in [0, 1] (a bright quadrant per class), 60 train / 30 test."""
    rng = np.random.default_rng(1)

    def make(n):
        y = rng.integers(0, C, size=n)
        x = rng.random((n, 3, 8, 8)).astype(np.float32) * 0.3
        for i, c in enumerate(y):
            x[i, :, (c % 2) * 4:(c % 2) * 4 + 4, (c // 2) * 4:(c // 2) * 4 + 4] += 0.7
        return x, y

    (x_train, y_train), (x_test, y_test) = make(60), make(30)
    path = tmp_path_factory.mktemp("img") / "img.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


class Stop(Exception):
    pass


def rows(result):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in result["epochs"]]


@pytest.mark.parametrize("augment", ["crop-flip", "resized-crop-flip"])
def test_augmented_resume_equals_uninterrupted(images, tmp_path, augment):
    c = cfg(images, augment=augment, epochs=3, batch_size=20)
    full = train(c)
    plain = train({**c, "augment": "none"})
    assert rows(full) != rows(plain)  # the augmentation changes the training batches
    path = tmp_path / "run.pt"

    def stop_after_1(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train(c, checkpoint=path, on_epoch=stop_after_1)
    assert "aug_gen" in torch.load(path, weights_only=False)  # the generator's state is saved
    assert rows(train(c, checkpoint=path)) == rows(full)


def test_checkpoint_without_augmentation_has_no_aug_generator(images, tmp_path):
    path = tmp_path / "run.pt"
    train(cfg(images, epochs=1, batch_size=20), checkpoint=path)
    assert "aug_gen" not in torch.load(path, weights_only=False)


def test_crop_flip_pads_with_black(images):
    """The border is a raw 0 pixel after normalisation, (0 − mean) / std per channel."""
    import asymbp.train as T
    from asymbp import data as datasets

    config = TrainConfig.from_dict(cfg(images, augment="crop-flip"))
    tensors = T.prepare_data(config, torch.device("cpu"))
    x = datasets.load(images, None).x_train.astype(np.float64)
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    np.testing.assert_allclose(tensors.black.reshape(-1).numpy(), -mean / std, rtol=1e-5)
    fn = T.augmenter(config, tensors)
    out = fn(tensors.x_train[:50], torch.Generator().manual_seed(0))
    assert out.shape == (50, 3, 8, 8)
    # with 50 draws of offsets in 0..8, some window shows border pixels: they are black
    border = out == tensors.black
    assert border.any()
    assert torch.equal(border.all(1), border.any(1))  # a border pixel is black in every channel


def test_resize_applies_to_train_and_test_and_the_fit_check(images, capsys):
    import asymbp.train as T
    from asymbp import augment
    from asymbp import data as datasets

    config = TrainConfig.from_dict(cfg(images, resize=16))
    tensors = T.prepare_data(config, torch.device("cpu"))
    assert tensors.x_train.shape[1:] == tensors.x_test.shape[1:] == (3, 16, 16)
    ds = datasets.load(images, None)
    raw = augment.resize(torch.from_numpy(ds.x_test), 16).double()
    mean = augment.resize(torch.from_numpy(ds.x_train), 16).double().mean((0, 2, 3), keepdim=True)
    std = augment.resize(torch.from_numpy(ds.x_train), 16).double().std((0, 2, 3), keepdim=True,
                                                                        unbiased=False)
    torch.testing.assert_close(tensors.x_test.double(), (raw - mean) / std, rtol=1e-4, atol=1e-4)
    # the 28×28 'mnist' network does not take 8×8 images; resized to 28 it does
    base = ["run", "--dataset", images, "--model", "mnist", "--epochs", "1", "--no-progress",
            "--json", "--no-alignment"]
    assert main(base) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    assert main(base + ["--resize", "28"]) == 0, capsys.readouterr().err


def test_resize_and_augment_of_vectors_are_one_line(npz):
    for bad in ({"resize": 32}, {"augment": "crop-flip"}):
        with pytest.raises(AsymbpError) as err:
            train(cfg(npz, epochs=1, **bad))
        assert "\n" not in str(err.value) and "vectors" in str(err.value)


# ---- 6. a validation split of a given size ----------------------------------------------------


def test_val_size_holds_out_that_many(npz):
    import asymbp.train as T
    from asymbp import data as datasets

    ds = datasets.load(npz, None)
    val, tr = T.honest_split(TrainConfig(protocol="honest", val_size=25), ds)
    assert len(val) == 25 and len(tr) == 95
    assert sorted(np.concatenate([val, tr]).tolist()) == list(range(120))  # a partition
    # the same permutation as val_fraction's: val_size 12 = val_fraction 0.1 of 120
    frac, _ = T.honest_split(TrainConfig(protocol="honest", val_fraction=0.1), ds)
    assert np.array_equal(T.honest_split(TrainConfig(protocol="honest", val_size=12), ds)[0], frac)
    out = train(cfg(npz, protocol="honest", val_size=25, epochs=1))
    assert "val_error" in out and out["val_error"] * 25 / 100 == pytest.approx(
        round(out["val_error"] * 25 / 100))  # an error rate of 25 examples


@pytest.mark.parametrize("kw", [dict(protocol="paper", val_size=10),
                                dict(protocol="honest", val_size=0)])
def test_bad_val_size_is_one_line(kw):
    with pytest.raises(AsymbpError, match="val_size"):
        check_config(TrainConfig(**kw))


def test_val_size_leaving_nothing_to_train_is_one_line(npz, capsys):
    assert main(["run", "--dataset", npz, "--model", "mlp", "--protocol", "honest",
                 "--val-size", "120", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "val_size 120" in err and err.count("\n") == 1
