"""Sparse inference (issue 17 §2): the `.east` export computes the dense masked model's
logits, per layer and whole, with dead channels removed, on every kernel; `east infer`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_helpers import copy_run, randomise, trained_east_run
from torch import nn

from east.cli import main
from east.deploy.sparse import KERNELS, compile_sparse, load_sparse, save_sparse
from east.errors import EastError
from east.flops import analyze
from east.models import build_model
from east.models.export import nonzero_counts, plain_model

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _model(arch: str, stem: str, sharing: int | None, keep: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, in_channels=3, stem=stem,
                        activation="dyrelu" if sharing else "relu", sharing_ratio=sharing)
    model.set_beta(0.0)
    randomise(model, keep=keep, seed=seed + 1)
    return model.eval()


def _bn_outputs(plain: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every conv's BN output in the dense network, keyed by the conv's name."""
    bn_of = {"conv1": "bn1"}
    for name, m in plain.named_modules():
        if isinstance(m, nn.Conv2d) and name != "conv1":
            prefix, leaf = name.rsplit(".", 1)
            bn_of[name] = f"{prefix}.1" if leaf == "0" else f"{prefix}.bn{leaf[-1]}"
    seen: dict[str, torch.Tensor] = {}
    handles = [plain.get_submodule(bn).register_forward_hook(
        lambda _m, _i, out, conv=conv: seen.__setitem__(conv, out.detach().clone()))
        for conv, bn in bn_of.items()]
    with torch.no_grad():
        plain(x)
    for handle in handles:
        handle.remove()
    return seen


CASES = [  # arch, stem, sharing, share of weights kept, input size
    ("resnet34", "cifar", 2, 0.004, 8),  # EAST's main model: shared blocks, many dead channels
    ("resnet50", "imagenet", None, 0.003, 32),  # bottlenecks, 1x1 convs, 7x7 stem, max-pool
    ("resnet20", "cifar", 2, 0.05, 8),
]


@pytest.mark.parametrize(("arch", "stem", "sharing", "keep", "size"), CASES)
def test_sparse_model_matches_the_dense_model_per_layer_and_whole(arch, stem, sharing, keep,
                                                                   size) -> None:
    model = _model(arch, stem, sharing, keep, seed=7)
    sparse = compile_sparse(model, image_size=size, mean=MEAN, std=STD)
    plain = plain_model(model)
    x = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = model(x)
    assert want.abs().max() > 0.05  # logits that carry signal
    dense_layers = _bn_outputs(plain, x)
    for kernel in KERNELS:
        sparse.kernel = kernel
        trace: dict[str, torch.Tensor] = {}
        torch.testing.assert_close(sparse(x, trace=trace), want, rtol=1e-4, atol=1e-5)
        whole = sparse(x)  # without a trace: `fused` also adds the shortcut and the ReLU
        torch.testing.assert_close(whole, want, rtol=1e-4, atol=1e-5)
        if kernel != "compact_dense":  # batches larger than `chunk` run in slices
            sparse.chunk = 2
            torch.testing.assert_close(sparse(x), whole, rtol=1e-6, atol=1e-7)
            sparse.chunk = 16
        for conv in sparse.convs():  # per layer: the computed channels of each BN output
            torch.testing.assert_close(
                trace[conv.name], dense_layers[conv.name][:, conv.out_index], rtol=1e-4,
                atol=1e-5, msg=lambda m, c=conv.name: f"{c}: {m}")
    # Dead channels are gone, and the counts agree with an independent recount.
    channels = sparse.channel_summary()
    assert channels["dead"] > 0 and channels["computed"] + channels["dead"] == channels["total"]
    counts = nonzero_counts(model)
    assert sparse.meta["nnz"]["nnz_unique"] == counts.unique
    assert sparse.meta["nnz"]["nnz_materialized"] == counts.materialized
    analysis = analyze(plain, (3, size, size))
    assert analysis.effective_nnz <= sparse.nnz <= counts.materialized
    assert sparse.meta["flops"]["dense"] == analysis.flops_dense
    assert sparse.flops == (sum(2 * c.nnz * c.out_size ** 2 for c in sparse.convs())
                            + 2 * sparse.fc.nnz)


FUSED_CASES = [  # in channels, out channels, size, kernel, stride, padding, batch
    (5, 7, 9, 3, 1, 1, 3),
    (5, 7, 9, 3, 2, 1, 2),  # stride 2, odd size: the last window row is clipped
    (4, 6, 8, 1, 2, 0, 3),  # 1x1 downsample
    (3, 4, 11, 7, 2, 3, 2),  # ImageNet stem
    (3, 4, 6, 3, 1, 0, 1),  # no padding: every window inside
]


@pytest.mark.parametrize(("cin", "cout", "size", "k", "stride", "pad", "batch"), FUSED_CASES)
def test_fused_kernel_equals_conv2d_with_bias_shortcut_and_relu(cin, cout, size, k, stride,
                                                                pad, batch) -> None:
    """The fused kernel against F.conv2d computed independently: sparse weights (one output
    channel without any), per-channel and per-position biases, a shortcut added through a
    row map, ReLU on and off."""
    from east.deploy.fused import sparse_conv_chwn

    g = torch.Generator().manual_seed(cin * 100 + k * 10 + stride)
    w = torch.randn(cout, cin, k, k, generator=g) * (torch.rand(cout, cin, k, k, generator=g)
                                                     < 0.3)
    w[1] = 0.0
    x = torch.randn(batch, cin, size, size, generator=g)
    conv = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad)
    ho = conv.shape[-1]
    rows_nz = [torch.nonzero(w[o].flatten()).flatten() for o in range(cout)]
    indptr = np.cumsum([0] + [len(r) for r in rows_nz]).astype(np.int64)
    flat = torch.cat(rows_nz)
    channel, tap = flat // (k * k), flat % (k * k)
    values = torch.cat([w[o].flatten()[r] for o, r in enumerate(rows_nz)])
    residual = torch.randn(cout + 2, ho, ho, batch, generator=g)  # (R, H, W, B)
    row_map = torch.randperm(cout + 2, generator=g)[:cout]
    for bias in (torch.randn(cout, 1, generator=g), torch.randn(cout, ho * ho, generator=g)):
        for relu, shortcut in ((False, False), (True, True)):
            want = conv + bias.view(1, cout, *(1, 1) if bias.shape[1] == 1 else (ho, ho))
            if shortcut:
                want = want + residual[row_map].permute(3, 0, 1, 2)
            want = want.relu() if relu else want
            out = np.full((cout, ho, ho, batch), np.nan, np.float32)  # every value written
            sparse_conv_chwn(x.permute(1, 2, 3, 0).contiguous().numpy(), indptr,
                             channel.numpy(), (tap // k).numpy(), (tap % k).numpy(),
                             values.numpy(), stride, pad, bias.numpy(),
                             residual.numpy() if shortcut else np.zeros((0, 1, 1, 1), np.float32),
                             row_map.numpy() if shortcut else np.zeros(0, np.int64), relu, out)
            torch.testing.assert_close(torch.from_numpy(out).permute(3, 0, 1, 2), want,
                                       rtol=1e-5, atol=1e-5)


def test_sliced_batches_on_several_threads_equal_one_thread_bit_for_bit() -> None:
    model = _model("resnet20", "cifar", 2, 0.05, seed=5)
    sparse = compile_sparse(model, image_size=8, mean=MEAN, std=STD)
    sparse.chunk = 2
    x = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = sparse(x)
        torch.set_num_threads(3)  # four slices on three threads
        assert torch.equal(sparse(x), serial)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # the slices' one-thread setting is undone


def test_computed_channels_are_those_of_flops_analyze() -> None:
    """The channel sets come from east.flops' effective weights: a block's inner activation
    keeps exactly the channels some effective weight of the next conv reads."""
    model = _model("resnet34", "cifar", 2, 0.004, seed=11)
    sparse = compile_sparse(model, image_size=8, mean=MEAN, std=STD)
    effective = analyze(plain_model(model), (3, 8, 8)).effective_masks
    for block in sparse.blocks:
        mask = effective[f"{block.name}.conv2.weight"]
        read = torch.nonzero(mask.flatten(2).any(-1).any(0)).flatten()
        assert torch.equal(block.convs[1].in_index, read), block.name
    fc_read = torch.nonzero(effective["fc.weight"].any(0)).flatten()
    assert torch.equal(sparse.fc.in_index, fc_read)


def test_constant_channels_fold_into_biases_exactly() -> None:
    """A channel with no path from the input still carries its BN shift through ReLU; the
    sparse model folds what such channels add into biases (position-dependent where zero
    padding makes it so), instead of computing them."""
    model = _model("resnet34", "cifar", 2, 0.004, seed=7)
    sparse = compile_sparse(model, image_size=8, mean=MEAN, std=STD)
    plain = plain_model(model)
    folded = 0
    for conv in sparse.convs():
        module = plain.get_submodule(conv.name)
        outside = torch.ones(conv.in_total, dtype=torch.bool)
        outside[conv.in_index] = False
        w = module.weight.detach()[conv.out_index][:, outside]
        folded += int(torch.count_nonzero(w))
    assert folded > 0  # the case exists here, and the whole-model check above covers it
    assert any(conv.bias.shape[1] > 1 for conv in sparse.convs())  # border effects occur
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-4, atol=1e-5)


def test_file_round_trip_loads_without_running_code(tmp_path) -> None:
    model = _model("resnet20", "cifar", 2, 0.05, seed=3)
    sparse = compile_sparse(model, image_size=8, mean=MEAN, std=STD, meta={"source": {"x": 1}})
    path = save_sparse(sparse, tmp_path / "m.east")
    blob = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert blob["format"] == "east-sparse/1" and blob["meta"]["source"] == {"x": 1}
    loaded = load_sparse(path)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(loaded(x), sparse(x))
    assert loaded.meta == sparse.meta
    with pytest.raises(EastError, match=r"m\.east: not an east sparse model"):
        torch.save({"conv1.weight": torch.zeros(1)}, path)
        load_sparse(path)
    blob["blocks"][0]["convs"][0]["indices"] = blob["blocks"][0]["convs"][0]["indices"] + 10**6
    torch.save(blob, path)
    with pytest.raises(EastError, match=r"m\.east: damaged sparse model .*out of range"):
        load_sparse(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(EastError, match=r"m\.east: sparse model is not"):
        load_sparse(path)


def test_fully_collapsed_network_exports_as_a_constant() -> None:
    model = _model("resnet20", "cifar", None, 0.0, seed=5)  # every weight zero
    sparse = compile_sparse(model, image_size=8, mean=MEAN, std=STD)
    assert sparse.nnz == 0 and sparse.channel_summary()["computed"] == 0
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-5, atol=1e-6)


def test_trained_digits_cell_exports_sparse_and_infers(tmp_path, capsys) -> None:
    from east.data import build_test_loader, load_splits
    from east.evaluate import load_trained_model
    from east.train.run import read_cell

    run = trained_east_run()
    cell = read_cell(run / "cell.json")
    out = tmp_path / "digits.east"
    assert main(["export", str(run), "--format", "sparse", "--out", str(out),
                 "--no-measure"]) == 0
    line = capsys.readouterr().out
    model, _ = load_trained_model(run, cell, "model.pt", torch.device("cpu"))
    counts = nonzero_counts(model)
    sparse = load_sparse(out)
    assert f"{counts.unique:,} unique" in line and f"{sparse.nnz:,} after dead-channel" in line
    logits = []
    for x, _ in build_test_loader(cell.data, eval_batch_size=128):
        with torch.no_grad():
            want = model(x)
        torch.testing.assert_close(sparse(x), want, rtol=1e-4, atol=1e-5)
        logits.append(want)
    dense_logits = torch.cat(logits)
    record = json.loads((run / "inference.json").read_text())
    assert record["nnz"]["nnz_stored"] == sparse.nnz and record["measured"] is None
    assert record["flops_ratio"] == pytest.approx(record["flops"]["dense"]
                                                  / record["flops"]["stored"])
    assert record["sparse_file"].endswith("digits.east")

    # east infer on the raw uint8 test images (N, C, H, W) and as (N, H, W, C).
    pixels = load_splits(cell.data).test.images
    assert pixels.dtype == torch.uint8 and pixels.shape == (359, 1, 8, 8)
    np.save(tmp_path / "test.npy", pixels.numpy())
    np.save(tmp_path / "test_nhwc.npy", pixels.permute(0, 2, 3, 1).numpy())
    assert main(["infer", str(out), str(tmp_path / "test.npy"), "--logits",
                 str(tmp_path / "logits.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 359 and lines[0].startswith("test.npy[0]\t")
    predicted = [int(line.split("\t")[1]) for line in lines]
    assert predicted == dense_logits.argmax(1).tolist()
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "logits.npy")),
                               dense_logits, rtol=1e-4, atol=1e-5)
    assert main(["infer", str(out), str(tmp_path / "test_nhwc.npy")]) == 0
    assert [int(x.split("\t")[1]) for x in capsys.readouterr().out.splitlines()] == predicted


def test_infer_reads_image_folders_and_float_arrays(tmp_path, capsys) -> None:
    from PIL import Image

    model = _model("resnet20", "cifar", 2, 0.05, seed=9)
    path = save_sparse(compile_sparse(model, image_size=8, mean=MEAN, std=STD),
                       tmp_path / "m.east")
    pixels = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    folder = tmp_path / "images" / "sub"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(pixels[i].numpy()).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("ignored")
    normalised = (pixels.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
                  ) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(normalised)
    torch.save(normalised, tmp_path / "float.pt")
    assert main(["infer", str(path), str(tmp_path / "images"), str(tmp_path / "float.pt"),
                 "--logits", str(tmp_path / "l.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [x.split("\t")[0] for x in lines] == ["sub/img0.png", "sub/img1.png",
                                                "sub/img2.png", "float.pt[0]", "float.pt[1]",
                                                "float.pt[2]"]
    got = torch.load(tmp_path / "l.pt", weights_only=True)
    torch.testing.assert_close(got, torch.cat([want, want]), rtol=1e-4, atol=1e-5)

    Image.fromarray(np.zeros((9, 8, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    assert main(["infer", str(path), str(tmp_path / "big.png")]) == 2
    err = capsys.readouterr().err
    assert "big.png: 8x9 pixels; this model takes 8x8 images" in err
    np.save(tmp_path / "bad.npy", np.zeros((2, 5, 8, 8), dtype=np.uint8))
    assert main(["infer", str(path), str(tmp_path / "bad.npy")]) == 2
    assert "bad.npy: uint8 pixels of shape (2, 5, 8, 8)" in capsys.readouterr().err


def test_measured_speedup_is_the_ratio_of_interleaved_times() -> None:
    from east.deploy.measure import dense_twin, measure_speedup

    model = _model("resnet18", "cifar", None, 0.002, seed=2)
    sparse = compile_sparse(model, image_size=8, mean=MEAN, std=STD)
    dense, name = dense_twin(model)
    assert name == "torchvision resnet18"
    threads = torch.get_num_threads()
    result = measure_speedup(sparse, dense, batch_sizes=(1, 4), repeats=3, inner={1: 2},
                             threads=1)
    assert torch.get_num_threads() == threads and result["threads"] == 1
    for batch in ("1", "4"):
        m = result["batches"][batch]
        assert m["speedup"]["n"] == 3
        assert sorted(m["speedup_per_repeat"])[1] == pytest.approx(m["speedup"]["median"])
        assert m["dense_images_per_s"] == pytest.approx(int(batch) / m["dense_s"]["median"])


def test_report_table_gains_measured_speedups_only_where_an_export_exists(tmp_path) -> None:
    import pandas as pd
    from test_report import write_metrics

    from east.report import build_report

    records = []
    speedups = {("rigl", 0.999, 0): 10.0, ("rigl", 0.999, 1): 14.0}
    for arch in ("resnet34", "resnet18"):
        for row, method in (("rigl", "rigl"), ("east", "east")):
            for sparsity in (0.999, 0.9999):
                for seed in (0, 1):
                    run = tmp_path / "runs" / f"{arch}-{row}-{sparsity}" / f"seed{seed}"
                    write_metrics(run, arch=arch, dataset="cifar10", method=method,
                                  sparsity=sparsity, seed=seed, acc=0.5)
                    value = speedups.get((row, sparsity, seed)) if arch == "resnet34" else None
                    if value is not None:
                        measured = {"batches": {"1": {"speedup": {"median": value / 2}},
                                                "64": {"speedup": {"median": value}}}}
                        (run / "inference.json").write_text(json.dumps({"measured": measured}))
                    elif (row, seed) == ("east", 0):  # an export without a measurement
                        (run / "inference.json").write_text(json.dumps({"measured": None}))
                    records.append({"row": row, "row_label": row.upper(), "arch": arch,
                                    "dataset": "cifar10", "method": method,
                                    "sparsity": sparsity, "seed": seed, "run_dir": str(run)})
    report = build_report(pd.DataFrame(records), tmp_path / "reports", figures=False)
    results = report.results.set_index(["arch", "row", "sparsity", "seed"])
    assert results.loc[("resnet34", "rigl", 0.999, 1), "inference_speedup"] == 14.0
    assert results.loc[("resnet34", "rigl", 0.999, 1), "inference_speedup_b1"] == 7.0
    assert results["inference_speedup"].notna().sum() == 2
    md = (tmp_path / "reports" / "tables" / "resnet34-cifar10.md").read_text()
    line = next(x for x in md.splitlines() if "inference speed-up (measured)" in x)
    assert [c.strip() for c in line.split("|")[1:-1]] == [
        "*inference speed-up (measured): RIGL*", "12.0x", "—"]
    assert sum("inference speed-up (measured)" in x for x in md.splitlines()) == 1  # not EAST
    assert "batch 64, one CPU thread" in md
    for fmt in ("html", "tex"):
        text = (tmp_path / "reports" / "tables" / f"resnet34-cifar10.{fmt}").read_text()
        assert "Inference speed-up (measured): RIGL" in text and "12.0x" in text
    other = (tmp_path / "reports" / "tables" / "resnet18-cifar10.md").read_text()
    assert "speed-up" not in other  # no sparse export there: the table is unchanged


def test_trained_cell_measured_export_reaches_the_report(tmp_path) -> None:
    """Train (fixture) -> evaluate -> export --format sparse (measured) -> report."""
    import pandas as pd

    from east.evaluate import evaluate_run
    from east.report import build_report
    from east.train.export import export_run
    from east.train.run import read_cell

    run = copy_run(tmp_path)
    cell = read_cell(run / "cell.json")
    evaluate_run(run, device="cpu")
    result = export_run(run, format="sparse")
    assert result.path == run / "model.east" and load_sparse(result.path).nnz > 0
    record = json.loads((run / "inference.json").read_text())
    measured = record["measured"]
    assert measured["threads"] == 1 and set(measured["batches"]) == {"1", "64"}
    for batch, m in measured["batches"].items():
        per_repeat = sorted(m["speedup_per_repeat"])
        assert len(per_repeat) == 5 and per_repeat[2] == pytest.approx(m["speedup"]["median"])
        assert m["sparse_images_per_s"] == pytest.approx(int(batch) / m["sparse_s"]["median"])
    expected = pd.DataFrame([{"row": "east", "arch": cell.model.arch, "dataset": "digits",
                              "method": "east", "sparsity": cell.sparsity.sparsity,
                              "seed": cell.seed, "run_dir": str(run)}])
    report = build_report(expected, tmp_path / "reports", figures=False)
    assert report.results.loc[0, "status"] == "done"
    speedup = measured["batches"]["64"]["speedup"]["median"]
    assert report.results.loc[0, "inference_speedup"] == pytest.approx(speedup)
    md = (tmp_path / "reports" / "tables" / "resnet34-digits.md").read_text()
    assert f"| *inference speed-up (measured): east* | {speedup:.1f}x |" in md
