"""ImageNet (ILSVRC 2012), streamed: a tiny ILSVRC layout of real files (JPEGs written by Pillow,
tars by tarfile, a devkit with a real meta.mat by scipy.io.savemat) read through
`asymbp.data.imagenet`, decoded by DataLoader workers, trained on by `train()`."""

import io
import math
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from asymbp import augment as aug
from asymbp import data
from asymbp.cli import main
from asymbp.data import imagenet as inet
from asymbp.data.stream import StreamedImages, eval_transform, example_seed
from asymbp.distributed import DataParallel
from asymbp.errors import AsymbpError
from asymbp.train import TrainConfig, epoch_batches, train

pytestmark = pytest.mark.usefixtures("one_thread")

# Synset order in meta.mat is not WNID order (class index = sorted WNID, as torchvision's):
# ILSVRC2012_ID 1 -> n03, 2 -> n01, 3 -> n02; ID 4 is an inner synset (num_children 2).
SYNSETS = [(1, "n03000003", 0), (2, "n01000001", 0), (3, "n02000002", 0), (4, "n00000009", 2)]
WNIDS = sorted(w for _, w, kids in SYNSETS if kids == 0)
TRUTH = [3, 1, 2, 2, 1, 3]  # the six validation images' ILSVRC2012_IDs, in file order
ID_TO_LABEL = {i: WNIDS.index(w) for i, w, kids in SYNSETS if kids == 0}


def jpeg(seed: int, size: tuple[int, int], gray: bool = False) -> bytes:
    """A real JPEG of smooth random colours (JPEG's own kind of image) of `size` (w, h)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize(size, Image.BICUBIC)
    out = io.BytesIO()
    (im.convert("L") if gray else im).save(out, "JPEG", quality=90)
    return out.getvalue()


def add(t: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    t.addfile(info, io.BytesIO(payload))


def write_meta(synsets=SYNSETS) -> bytes:
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
             ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"),
             ("num_train_images", "O")]
    rows = np.array([(i, w, f"words {w}", "gloss", k, np.zeros((1, k)), 0, 4)
                     for i, w, k in synsets], dtype=dtype).reshape(-1, 1)
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": rows})
    return out.getvalue()


def write_ilsvrc(root, per_class=4, truth=TRUTH, classes=WNIDS, meta=None, n_val=None) -> dict:
    """The three archives as image-net.org distributes them, tiny: `per_class` training JPEGs
    of odd sizes per class (one grayscale), len(truth) (or n_val) validation JPEGs, the
    devkit."""
    root.mkdir(parents=True, exist_ok=True)
    images = {"train": {}, "val": {}}
    with tarfile.open(root / inet.TRAIN_TAR, "w") as outer:
        for c, w in enumerate(classes):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for j in range(per_class):
                    name = f"{w}_{j + 1}.JPEG"
                    images["train"][f"{w}/{name}"] = jpeg(10 * c + j, (61 + 13 * j, 47 + 9 * c),
                                                          gray=(j == 1))
                    add(t, name, images["train"][f"{w}/{name}"])
            add(outer, f"{w}.tar", inner.getvalue())
    with tarfile.open(root / inet.VAL_TAR, "w") as t:
        for k in range(len(truth) if n_val is None else n_val):
            name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
            images["val"][name] = jpeg(100 + k, (83 - 5 * k, 71 + 4 * k))
            add(t, name, images["val"][name])
    with tarfile.open(root / inet.DEVKIT, "w:gz") as t:
        add(t, "ILSVRC2012_devkit_t12/data/meta.mat", meta if meta is not None else write_meta())
        add(t, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
            "".join(f"{i}\n" for i in truth).encode())
    return images


def write_tree(root, images) -> None:
    """The same images in torchvision's extracted layout: train/<wnid>/, val/<wnid>/."""
    for name, payload in images["train"].items():
        (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / name).write_bytes(payload)
    for k, (name, payload) in enumerate(sorted(images["val"].items())):
        w = WNIDS[ID_TO_LABEL[TRUTH[k]]]
        (root / "val" / w).mkdir(parents=True, exist_ok=True)
        (root / "val" / w / name).write_bytes(payload)


@pytest.fixture
def ilsvrc(tmp_path):
    root = tmp_path / "imagenet"
    return root, write_ilsvrc(root)


def decoded(payload: bytes) -> Image.Image:
    return Image.open(io.BytesIO(payload)).convert("RGB")


def test_labels_follow_the_devkit_and_the_train_index_covers_every_file_once(ilsvrc):
    root, images = ilsvrc
    ds = inet.load_imagenet(root, classes=None)
    assert ds.num_classes == 3 and ds.input_shape == (3, 224, 224) and ds.model == "resnet18"
    # validation: the ground truth's IDs through meta.mat's leaf WNIDs, sorted
    assert ds.y_test.tolist() == [ID_TO_LABEL[i] for i in TRUTH] == [1, 2, 0, 0, 2, 1]
    assert [n.decode() for n in ds.test.names] == sorted(images["val"])
    # training: every JPEG exactly once, labelled by its class tar
    names = [n.decode() for n in ds.train.names]
    assert sorted(names) == sorted(images["train"]) and len(set(names)) == len(names)
    assert all(WNIDS[y] == n.split("/")[0] for n, y in zip(names, ds.y_train))
    # the index's byte ranges are the files themselves
    for i, n in enumerate(names):
        assert ds.train.read(i) == images["train"][n]
    assert ds.test.read(5) == images["val"]["ILSVRC2012_val_00000006.JPEG"]


def test_the_tree_layout_gives_the_same_dataset(ilsvrc, tmp_path):
    root, images = ilsvrc
    tree = tmp_path / "tree"
    write_tree(tree, images)
    a, b = inet.load_imagenet(root, classes=None), inet.load_imagenet(tree, classes=None)
    assert b.meta["layout"] == "tree" and a.meta["layout"] == "archives"
    assert sorted(b.y_train.tolist()) == sorted(a.y_train.tolist())
    by_name = {n.decode().split("/")[-1]: int(y) for n, y in zip(b.test.names, b.y_test)}
    assert [by_name[n.decode()] for n in a.test.names] == a.y_test.tolist()
    for i in range(len(b.train)):
        assert b.train.read(i) == images["train"][b.train.names[i].decode()[len("train/"):]]


def test_the_dataset_holds_paths_not_images(ilsvrc):
    root, _ = ilsvrc
    ds = inet.load_imagenet(root, classes=None)
    for files in (ds.train, ds.test):
        arrays = [files.names, files.labels, files.offsets, files.sizes]
        assert all(a.ndim == 1 for a in arrays)  # no (N, C, H, W) anywhere
        # an index entry: a name of ~20 bytes and three numbers, far below one 61x47 image
        assert sum(a.nbytes for a in arrays) / len(files) < 64
    assert len(pickle.dumps(ds)) < 4096  # what a loader worker is sent


def test_the_test_transform_is_torchvisions_resize_and_centre_crop(ilsvrc):
    root, images = ilsvrc
    ds = inet.load_imagenet(root, classes=None, crop=48, resize=56)
    x = ds.images("test", None, seed=1, device="cpu", workers=0)
    got = x[:]  # normalised float (6, 3, 48, 48)
    mean, std = torch.tensor(inet.MEAN).view(1, 3, 1, 1), torch.tensor(inet.STD).view(1, 3, 1, 1)
    pixels = got * std + mean  # back to [0, 1]
    for k, name in enumerate(sorted(images["val"])):
        im = decoded(images["val"][name])
        w, h = im.size
        # 1. the same Pillow calls written out by hand: exact
        size = (56, int(56 * h / w)) if w <= h else (int(56 * w / h), 56)
        by_hand = im.resize(size, Image.BILINEAR)
        top, left = round((by_hand.size[1] - 48) / 2), round((by_hand.size[0] - 48) / 2)
        by_hand = np.asarray(by_hand.crop((left, top, left + 48, top + 48)))
        assert np.array_equal(np.asarray(eval_transform(im, 56, 48)), by_hand)
        # normalising and its inverse round in float32: < 1e-5 of a pixel in [0, 1]
        assert torch.allclose(pixels[k], torch.from_numpy(by_hand.copy()).permute(2, 0, 1) / 255,
                              atol=1e-5)
        # 2. asymbp.augment's resize_center_crop on the decoded float image, the same filter
        # (antialiased triangle) in float: Pillow rounds to uint8 after each of its two passes
        # (a horizontal, then a vertical one) and uses 8-bit fixed-point weights, so the two
        # differ by at most ~1.5 levels per pass: 3 / 255 is the bound, the mean is far lower
        ref = aug.resize_center_crop(torch.from_numpy(np.asarray(im, np.float32) / 255)
                                     .permute(2, 0, 1)[None], 56, 48)[0]
        diff = (pixels[k] - ref).abs()
        assert diff.max() <= 3 / 255 + 1e-6 and diff.mean() < 1 / 255, (diff.max(), diff.mean())


def test_train_crops_are_seeded_by_seed_epoch_and_index(ilsvrc):
    root, images = ilsvrc
    ds = inet.load_imagenet(root, classes=None, crop=40, resize=48)
    ex = ds.images("train", None, seed=3, device="cpu", workers=0).examples
    a, b = ex[(True, 1, 5)], ex[(True, 1, 5)]
    assert a[0].shape == (3, 40, 40) and a[0].dtype == torch.uint8
    assert torch.equal(a[0], b[0]) and a[1] == int(ds.y_train[5])
    others = [ex[(True, e, 5)][0] for e in range(2, 8)]
    assert not all(torch.equal(a[0], o) for o in others)  # another epoch, another crop
    # oracle: the box of asymbp.augment's draws from the same seed, cut and resized by hand
    im = decoded(ds.train.read(5))
    gen = torch.Generator().manual_seed(example_seed(3, 1, 5))
    top, left, h, w, flip = (int(v[0]) for v in aug.resized_crop_params(
        1, im.size[1], im.size[0], gen=gen))
    hand = im.crop((left, top, left + w, top + h)).resize((40, 40), Image.BILINEAR)
    hand = hand.transpose(Image.FLIP_LEFT_RIGHT) if flip else hand
    assert np.array_equal(a[0].permute(1, 2, 0).numpy(), np.asarray(hand))
    # and random_resized_crop_flip on the float image with the same generator draws the same
    # box: the same pixels up to Pillow's uint8 rounding (3 / 255: see the test transform)
    gen = torch.Generator().manual_seed(example_seed(3, 1, 5))
    ref = aug.random_resized_crop_flip(torch.from_numpy(np.asarray(im, np.float32) / 255)
                                       .permute(2, 0, 1)[None], 40, gen=gen)[0]
    assert (a[0].float() / 255 - ref).abs().max() <= 3 / 255 + 1e-6


def test_loader_batches_do_not_depend_on_the_workers(ilsvrc):
    root, _ = ilsvrc
    ds = inet.load_imagenet(root, classes=None, crop=32, resize=36)
    shares = [torch.tensor([3, 0, 7, 1]), torch.tensor([11, 2]), torch.tensor([5])]
    runs = []
    for workers in (0, 2):
        x = ds.images("train", None, seed=1, device="cpu", workers=workers)
        runs.append(list(x.batches(shares, epoch=4, train=True)))
    for (x0, y0), (x2, y2) in zip(*runs):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert [len(y) for _, y in runs[0]] == [4, 2, 1]
    assert runs[0][0][1].tolist() == ds.y_train[[3, 0, 7, 1]].tolist()


def test_data_parallel_ranks_share_each_mini_batch(ilsvrc):
    """Each rank of a 2-process run loads its contiguous share of every mini-batch (the
    in-memory path's split, DataParallel.shard), together exactly the mini-batch."""
    root, _ = ilsvrc
    ds = inet.load_imagenet(root, classes=None, crop=32, resize=36)
    tensors = __import__("asymbp.train", fromlist=["streamed_data"]).streamed_data(
        TrainConfig(dataset="imagenet", loader_workers=0), torch.device("cpu"), ds)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))

    class Rank:  # the two calls epoch_batches makes of an Execution
        def __init__(self, r):
            self.shard, self.device = DataParallel(r, 2, torch.device("cpu"), False).shard, "cpu"

    one = list(epoch_batches(tensors, perm, 5, 1, Rank(0), None, None, True))
    two = list(epoch_batches(tensors, perm, 5, 1, Rank(1), None, None, True))
    assert [w for _, _, w in one] == [5, 5, 2] == [w for _, _, w in two]
    for (xa, ya, _), (xb, yb, _), i in zip(one, two, range(0, 12, 5)):
        want = ds.y_train[perm[i:i + 5].numpy()].tolist()
        assert ya.tolist() + yb.tolist() == want and len(xa) + len(xb) == len(want)


def test_train_one_epoch_and_resume(ilsvrc, tmp_path):
    root, _ = ilsvrc
    ds = inet.load_imagenet(root, classes=None, crop=64, resize=72)
    cfg = dict(dataset="imagenet", method="uSF+BN", model="resnet18", epochs=2, batch_size=4,
               base_lr=0.01, loss="mean", augment="resized-crop-flip", protocol="honest",
               val_size=2, loader_workers=0, bn_stat_batches=2, init="xavier")
    whole = train(cfg, data=ds)
    assert len(whole["epochs"]) == 2 and not whole["diverged"]
    for row in whole["epochs"]:
        assert all(math.isfinite(row[k]) for k in ("train_loss", "test_error", "val_error"))
    assert math.isfinite(whole["honest_test_error"])
    ck = tmp_path / "run.pt"

    class Killed(Exception):
        pass

    def kill_after_the_first(row):
        raise Killed  # the checkpoint of epoch 1 is written before its row is streamed

    with pytest.raises(Killed):
        train(cfg, data=ds, checkpoint=ck, on_epoch=kill_after_the_first)
    assert ck.exists()
    resumed = train(cfg, data=ds, checkpoint=ck)  # the second epoch only
    assert [r["epoch"] for r in resumed["epochs"]] == [1, 2]
    # the same process, the same kernels, the same batches (seeded by seed, epoch, index): the
    # resumed epoch is the uninterrupted one exactly
    for k in ("train_loss", "train_error", "test_error", "val_error"):
        assert resumed["epochs"][1][k] == whole["epochs"][1][k], k


def test_synthetic_imagenet_needs_no_files(tmp_path):
    ds = data.load("imagenet", tmp_path / "none", synthetic=6)
    assert ds.x_train.shape == (6, 3, 224, 224) and ds.num_classes == 1000
    with pytest.raises(AsymbpError, match=r"GiB\); give a smaller N"):
        data.load("imagenet", synthetic=0)


def test_the_index_is_built_once_and_a_killed_build_resumes(ilsvrc, monkeypatch):
    root, _ = ilsvrc
    read = []
    real_jpegs = inet._jpegs
    monkeypatch.setattr(inet, "_jpegs", lambda t, base=0: read.append(base) or real_jpegs(t, base))
    real_save = inet._save_part

    def killed_after_two(parts, part, *a):
        real_save(parts, part, *a)
        if len(list(parts.glob("*.npz"))) == 2:
            raise KeyboardInterrupt  # the process killed while indexing the third class

    monkeypatch.setattr(inet, "_save_part", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        inet.load_imagenet(root, classes=None)
    assert not list(root.glob(".asymbp-imagenet-index*"))  # nothing half-written
    monkeypatch.setattr(inet, "_save_part", real_save)
    read.clear()
    ds = inet.load_imagenet(root, classes=None)
    assert len(read) == 2  # the validation tar and the one class not indexed before
    assert len(ds.train) == 12 and not (root / ".asymbp-imagenet-parts").exists()
    read.clear()
    inet.load_imagenet(root, classes=None)
    assert read == []  # from the index file


def _one_line(match, fn, *a, **kw):
    with pytest.raises(AsymbpError) as err:
        fn(*a, **kw)
    assert "\n" not in str(err.value) and match in str(err.value), str(err.value)


def test_bad_layouts_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line("ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz "
              "not found", inet.load_imagenet, empty)
    _one_line("image-net.org, which needs a registration", inet.load_imagenet, empty)
    _one_line("does not exist", inet.load_imagenet, tmp_path / "nowhere")
    # the registered key wants ILSVRC's 1000 classes
    root = tmp_path / "small"
    images = write_ilsvrc(root)
    (tmp_path / "d").mkdir()
    shutil.copytree(root, tmp_path / "d" / "imagenet")
    _one_line("has 3 classes, ILSVRC 2012 has 1000", data.load, "imagenet", tmp_path / "d")
    # the ground truth of another number of images
    bad = tmp_path / "truth"
    write_ilsvrc(bad, n_val=5)
    _one_line("holds 5 images but", inet.load_imagenet, bad, classes=None)
    # an ID that is no leaf synset
    bad = tmp_path / "ids"
    write_ilsvrc(bad, truth=[1, 2, 4, 3, 1, 2])
    _one_line("not an ILSVRC2012_ID of a leaf synset", inet.load_imagenet, bad, classes=None)
    # a train tar without one of the devkit's classes
    bad = tmp_path / "classes"
    write_ilsvrc(bad, classes=WNIDS[:2])
    _one_line("holds 2 class tars, the devkit has 3 classes", inet.load_imagenet, bad,
              classes=None)
    # a truncated devkit, a meta.mat that is not one
    bad = tmp_path / "devkit"
    write_ilsvrc(bad)
    (bad / inet.DEVKIT).write_bytes((bad / inet.DEVKIT).read_bytes()[:100])
    _one_line("corrupt or truncated archive", inet.load_imagenet, bad, classes=None)
    bad = tmp_path / "meta"
    write_ilsvrc(bad, meta=b"not a mat file")
    _one_line("is not the devkit's synset table", inet.load_imagenet, bad, classes=None)
    # a gzipped train tar (not as distributed)
    bad = tmp_path / "gz"
    write_ilsvrc(bad)
    raw = (bad / inet.TRAIN_TAR).read_bytes()
    import gzip

    (bad / inet.TRAIN_TAR).write_bytes(gzip.compress(raw))
    _one_line("not an uncompressed tar", inet.load_imagenet, bad, classes=None)
    # a tree whose val classes are not its train classes
    tree = tmp_path / "tree"
    write_tree(tree, images)
    shutil.rmtree(tree / "val" / WNIDS[0])
    _one_line("both need the same <wnid> folders", inet.load_imagenet, tree, classes=None)
    # a JPEG that will not decode: when its batch is made
    tree2 = tmp_path / "tree2"
    write_tree(tree2, images)
    victim = sorted((tree2 / "val").rglob("*.JPEG"))[0]
    victim.write_bytes(b"garbage")
    ds = inet.load_imagenet(tree2, classes=None)
    x = ds.images("test", None, seed=1, device="cpu", workers=0)
    _one_line("image will not decode", x.__getitem__, slice(0, 6))


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    for argv, match in (
            (["--data-dir", str(tmp_path)], "needs a registration, so asymbp cannot download"),
            (["--synthetic"], "GiB); give a smaller N")):
        status = main(["run", "--dataset", "imagenet", "--epochs", "1", *argv])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and err.startswith("asymbp: error: "), err
        assert match in err, err


def test_streamed_options_that_do_not_apply_are_refused(ilsvrc):
    root, _ = ilsvrc
    ds = inet.load_imagenet(root, classes=None, crop=32, resize=36)
    for bad in ({"resize": 32}, {"augment": "crop-flip"}):
        _one_line("is streamed", train, dict(dataset="imagenet", epochs=1, batch_size=4,
                                             model="resnet18", loader_workers=0, **bad),
                  data=ds)
    assert isinstance(ds.images("train", None, seed=1, device="cpu", workers=0),
                      StreamedImages)


def test_biotorch_imagenet_is_its_protocol_and_its_table(capsys):
    import pandas as pd

    from asymbp import paper, report
    from asymbp.methods import parse_method
    from asymbp.sweep.plan import EXPERIMENTS, plan

    exp = EXPERIMENTS["biotorch-imagenet"]
    assert exp.datasets == ["ResNet-18"]
    assert exp.columns == ["BP", "FA", "DFA", "uSF", "brSF", "frSF", "sSF+WN"]
    runs = {r.method: r.config for r in plan("biotorch-imagenet")}
    assert len(runs) == 7
    for col, c in runs.items():
        spec = parse_method(c["method"])
        assert spec.bn and c["bn_affine"] == "all" and c["bn_stats"] == "running"
        assert (c["dataset"], c["model"], c["batch_size"], c["epochs"], c["loss"], c["init"]) == (
            "imagenet", "resnet18", 256, 75, "mean", "xavier")
        assert (c["augment"], c["protocol"], c["val_size"], c["weight_decay"]) == (
            "resized-crop-flip", "honest", 10_000, 1e-4)
        assert c["lr_milestones"] == "20:0.1,40:0.1,60:0.1" and c["lr_mult"] == 1.0
        # DFA: Adam at 1e-3 (BioTorch's per-method override), every other column SGD at 0.1
        assert (spec.update, c["base_lr"]) == (("Adam", 1e-3) if col == "DFA" else ("SGD", 0.1))
    assert runs["FA"]["scheme_options"] == {"init": "xavier"}
    table = paper.published("biotorch-imagenet")
    assert table.loc["ResNet-18", "BP"] == 30.39 and table.loc["ResNet-18", "frSF"] == 36.5
    rows = pd.DataFrame([{"run_key": "r1", "experiment": "biotorch-imagenet", "method": "BP",
                          "dataset": "ResNet-18", "lr_mult": 1.0, "seed": 1, "status": "done",
                          "best_test_error": 30.5, "val_error": 29.0,
                          "honest_test_error": 31.0, "config": {"epochs": 75}}])
    # by default the experiment's own rule: the best-validation epoch's test error (31.0)
    t = report.table(rows, "biotorch-imagenet", paper=True)
    assert t.loc["ResNet-18", ("BP", "paper")] == "30.39"
    assert t.loc["ResNet-18", ("BP", "Δ")] == "+0.61"
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "biotorch-imagenet" in capsys.readouterr().out


def _labels_in_a_daemon(root, out):
    ds = inet.load_imagenet(root, classes=None, crop=32, resize=36)
    x = ds.images("train", None, seed=1, device="cpu", workers=2)
    out.put([y.tolist() for _, y in x.batches([np.arange(4), np.arange(4, 12)], 1, True)])


def test_a_sweep_worker_can_start_loader_workers(ilsvrc):
    """A local sweep runs each run in a daemonic spawned process (asymbp.sweep.local), which
    multiprocessing forbids children; the loader's workers start there all the same."""
    import multiprocessing as mp

    root, _ = ilsvrc
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_labels_in_a_daemon, args=(root, out), daemon=True)
    p.start()
    import queue

    got = None
    while got is None and (p.is_alive() or not out.empty()):
        try:
            got = out.get(timeout=1)
        except queue.Empty:
            pass
    p.join(60)
    ds = inet.load_imagenet(root, classes=None)
    assert got == [ds.y_train[:4].tolist(), ds.y_train[4:12].tolist()] and p.exitcode == 0
