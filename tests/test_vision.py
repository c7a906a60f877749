"""Vision: conv statistics, the vision driver, BatchNorm re-estimation, timm loading, image evals,
the vision zoo and one end-to-end suite on the shipped zoo models.

Tiny random timm models built from configs for most tests; the shipped zoo checkpoints for the
BatchNorm measurement and the end-to-end run. One torch thread (restored after): on two busy
cores, two threads per process make these small convolutions many times slower.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import textwrap

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from torch import nn  # noqa: E402

from harness.data import images  # noqa: E402
from harness.drivers import vision  # noqa: E402
from harness.drivers.hooks import StatsCollector  # noqa: E402
from harness.core.method import build_params
from harness.plugins import get_method  # noqa: E402
from harness.core.spec import LayerSelection, ModelSpec  # noqa: E402
from harness.core.sparsity import measure  # noqa: E402
from harness.core.target import Target  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def method(name: str, **params):
    cls = get_method(name)
    return cls(build_params(cls, params))


def tiny_resnet(seed: int = 0) -> nn.Module:
    """timm resnet18d (deep stem 8-8-16) at widths 8-8-16-16 on 1-channel 32x32 images, random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model("resnet18d", pretrained=False, in_chans=1, num_classes=10,
                                  channels=(8, 8, 16, 16), stem_width=8)
    return model.eval()


def random_images(n: int = 24, size: int = 32, chans: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


def batches_of(x: torch.Tensor):
    return lambda bs: x.split(bs)


# --- conv statistics -------------------------------------------------------------------


def _same_conv():
    from timm.layers import Conv2dSame

    return Conv2dSame(3, 4, 3, stride=2)


CONVS = {
    "3x3 pad 1": lambda: nn.Conv2d(3, 4, 3, padding=1),
    "3x3 stride 2": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
    "3x2 dilated": lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=2),
    "padding same": lambda: nn.Conv2d(3, 4, 4, padding="same"),
    "reflect": lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    "timm Conv2dSame": _same_conv,
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # the even kernel is the point: asymmetric padding
@pytest.mark.parametrize("kind", list(CONVS))
def test_conv_hessian_from_unfold_equals_bruteforce_im2col(kind):
    torch.manual_seed(0)
    conv = CONVS[kind]().double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.double)
    # Brute force, independent of any padding logic: d out[n, 0, i, j] / d W[0] is the patch.
    out = conv(x)
    patches = [torch.autograd.grad(out[n, 0, i, j], conv.weight, retain_graph=True)[0][0].flatten()
               for n, i, j in itertools.product(*map(range, (out.shape[0], out.shape[2], out.shape[3])))]
    xs = torch.stack(patches)  # (positions, C_in*k_h*k_w)
    h_ref = xs.T @ xs / xs.shape[0]

    rows = vision.conv_rows(conv)
    collector = StatsCollector({"c": conv}, "hessian", {"c": rows})
    with torch.no_grad():
        conv(x)
    collector.remove()
    stats = collector.stats("c")
    assert stats.n == xs.shape[0]
    torch.testing.assert_close(stats.hessian.double(), h_ref, atol=1e-5, rtol=1e-5)
    # and the rows times the flattened weight are the convolution itself
    with torch.no_grad():
        manual = rows(x) @ conv.weight.reshape(4, -1).T + conv.bias
        torch.testing.assert_close(manual, conv(x).permute(0, 2, 3, 1).reshape(-1, 4))


def test_convs_of_one_geometry_on_one_input_share_a_hessian():
    model = tiny_resnet()
    layers, _ = vision.select_layers(model)
    collector = StatsCollector(layers, "diag", vision.row_functions(layers))
    with torch.no_grad():
        model(random_images(4))
    collector.remove()
    # layer1.0.conv1 (3x3) and layer1.0.downsample.1 (1x1) read the same tensor through different
    # patches: separate accumulators; nothing else shares an input in a ResNet
    assert collector.group_of["layer1.0.conv1"] != collector.group_of["layer1.0.downsample.1"]
    assert len(set(collector.group_of.values())) == len(layers)

    twins = nn.ModuleDict({"a": nn.Conv2d(2, 3, 3, padding=1), "b": nn.Conv2d(2, 5, 3, padding=1)})
    collector = StatsCollector(dict(twins.items()), "hessian", vision.row_functions(dict(twins.items())))
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        twins["a"](x), twins["b"](x)
    collector.remove()
    assert collector.group_of == {"a": 0, "b": 0} and len(collector.acc) == 1


# --- the driver --------------------------------------------------------------------------


@pytest.mark.parametrize("name,target", [("magnitude", "0.5"), ("wanda", "0.7"), ("sparsegpt", "2:4"), ("obc", "2:4")])
def test_pruned_convs_reach_target_along_flattened_rows(name, target):
    model, x = tiny_resnet(), random_images()
    t = Target.parse(target)
    result = vision.prune_vision(model, batches_of(x), method(name), t, batch_size=8)
    convs = [r for r in result.reports if len(r.info["shape"]) == 4]
    assert len(convs) == 22 and convs[0].name == "conv1.3"  # 23 convs minus the stem's first
    for rep in result.reports:
        w = model.get_submodule(rep.name).weight
        flat = w.reshape(w.shape[0], -1)  # (C_out, C_in*k_h*k_w)
        assert (rep.rows, rep.cols) == tuple(flat.shape) and rep.info["shape"] == list(w.shape)
        m = measure(w, t)
        if t.is_nm:  # 2 zeros in every group of 4 consecutive flattened inputs, row by row
            groups = (flat == 0).reshape(flat.shape[0], -1, 4).sum(-1)
            assert bool((groups >= 2).all()) and m.nm_ok
        else:
            assert abs(m.sparsity - t.sparsity) <= 0.001 + 1 / rep.cols
        assert rep.rel_error is not None and rep.rel_error >= 0


def test_dense_reproduces_logits_exactly_and_leaves_batchnorm_alone():
    model, x = tiny_resnet(), random_images()
    before = model(x).detach()
    stats = model.bn1.running_mean.clone()
    result = vision.prune_vision(model, batches_of(x), method("dense"), Target(0.0))
    assert torch.equal(model(x), before)
    assert torch.equal(model.bn1.running_mean, stats)
    assert result.bn_recalibration["applied"] is False and all(r.rel_error == 0.0 for r in result.reports)


def test_stem_and_head_stay_dense_unless_layers_select_them():
    model, x = tiny_resnet(), random_images()
    stem, head = model.conv1[0].weight.clone(), model.fc.weight.clone()
    result = vision.prune_vision(model, batches_of(x), method("magnitude"), Target(0.5))
    assert {s["name"] for s in result.skipped} == {"conv1.0", "fc"}
    assert torch.equal(model.conv1[0].weight, stem) and torch.equal(model.fc.weight, head)
    assert {"conv1.0", "fc"}.isdisjoint(r.name for r in result.reports)

    model = tiny_resnet()
    result = vision.prune_vision(model, batches_of(x), method("magnitude"), Target(0.5),
                                 selection=LayerSelection(targets=(r"^fc$", r"^conv1\."), ignore=(r"conv1\.[36]",)))
    assert [r.name for r in result.reports] == ["conv1.0", "fc"]
    assert vision.stem_and_head(timm.create_model("test_vit", pretrained=False)) == (("patch_embed.proj",), ("head",))


def test_depthwise_convs_are_skipped_with_a_logged_note(caplog):
    model = timm.create_model("test_convnext", pretrained=False).eval()
    with caplog.at_level("INFO", logger="harness.drivers.vision"):
        layers, skipped = vision.select_layers(model)
    depthwise = [s for s in skipped if "groups=" in s["reason"]]
    assert depthwise and all(model.get_submodule(s["name"]).groups > 1 for s in depthwise)
    assert all(getattr(m, "groups", 1) == 1 for m in layers.values())
    assert any("depthwise" in r.message for r in caplog.records)


def test_vit_blocks_prune_their_linear_layers():
    model = timm.create_model("test_vit", pretrained=False, img_size=32).eval()
    x = random_images(8, 32, 3)
    result = vision.prune_vision(model, batches_of(x), method("sparsegpt"), Target(0.5))
    names = [r.name for r in result.reports]
    assert names[0] == "blocks.0.attn.qkv" and "head" not in names and "patch_embed.proj" not in names
    assert {r.block for r in result.reports} == set(range(len(model.blocks)))
    assert result.bn_recalibration == {"applied": False, "reason": "the model has no BatchNorm layers",
                                       "requested": "auto"}


# --- BatchNorm re-estimation -------------------------------------------------------------


def test_bn_recalibration_resets_and_reestimates_running_stats():
    model, x = tiny_resnet(), random_images()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [bn.running_var.clone() for bn in bns]
    result = vision.prune_vision(model, batches_of(x), method("magnitude"), Target(0.5))
    assert result.bn_recalibration == {"applied": True, "layers": len(bns), "images": 24, "batches": 1,
                                       "requested": "auto"}
    assert all(not torch.equal(bn.running_var, b) for bn, b in zip(bns, before))
    assert all(bn.momentum == 0.1 and not bn.training for bn in bns) and not model.training

    off = tiny_resnet()
    result = vision.prune_vision(off, batches_of(x), method("magnitude"), Target(0.5), bn_recalibration=False)
    assert result.bn_recalibration["applied"] is False
    assert torch.equal(off.layer1[0].bn1.running_var, tiny_resnet().layer1[0].bn1.running_var)


def test_bn_recalibration_restores_the_zoo_resnet_after_magnitude_pruning():
    """Magnitude 70% without re-estimation collapses the zoo ResNet; with it most accuracy returns."""
    from harness.models.load import load_vision_model

    split = images.eval_split("digits")
    accuracy = {}
    for bn in (False, None):
        loaded = load_vision_model(ModelSpec("zoo:tiny-resnet"))
        stream = images.calibration_stream("digits", loaded.data_config, 256, 0)
        vision.prune_vision(loaded.model, stream.batches, method("magnitude"), Target(0.7), bn_recalibration=bn)
        accuracy[bn] = images.accuracy(loaded.model, split, loaded.data_config)[0]
    assert accuracy[False] < 0.3 and accuracy[None] > 0.6, accuracy  # measured: 0.17 and 0.756


# --- images and evals -------------------------------------------------------------------


def test_digits_split_is_fixed_and_calibration_streams_repeat():
    train, test = images.digits("train"), images.digits("test")
    assert (len(train.items), len(test.items)) == (1297, 500) and train.items[0].size == (8, 8)
    config = {"input_size": (1, 32, 32), "interpolation": "bilinear", "mean": (0.3,), "std": (0.4,),
              "crop_pct": 1.0, "crop_mode": "center"}
    plain = images.calibration_stream("digits", config, 8, seed=0)
    augmented = images.calibration_stream("digits", config, 8, seed=0, augment_rounds=2)
    assert len(augmented) == 16
    a, b = torch.cat(list(augmented.batches(5))), torch.cat(list(augmented.batches(16)))
    assert a.shape == (16, 1, 32, 32) and torch.equal(a, b)  # every pass yields the same images
    assert not torch.equal(a[:8], torch.cat(list(plain.batches(8))))
    other = images.calibration_stream("digits", config, 8, seed=1)
    assert not torch.equal(torch.cat(list(other.batches(8))), torch.cat(list(plain.batches(8))))
    assert images.evenly_spaced(10, 3) == [0, 3, 6] and images.evenly_spaced(3, None) == [0, 1, 2]


def test_missing_imagenet_root_is_one_line(tmp_path, monkeypatch):
    from harness.data.text import DatasetUnavailable

    monkeypatch.delenv(images.IMAGENET_ENV, raising=False)
    for root in (str(tmp_path / "nope"), None):
        with pytest.raises(DatasetUnavailable) as info:
            images.eval_split("imagenet", root)
        assert "\n" not in str(info.value) and images.IMAGENET_ENV in str(info.value)
    monkeypatch.setenv(images.IMAGENET_ENV, str(tmp_path))
    with pytest.raises(DatasetUnavailable, match=f"'{tmp_path / 'val'}' does not exist"):
        images.eval_split("imagenet", None)


# --- loading ---------------------------------------------------------------------------


def test_offline_pretrained_request_fails_with_one_line(monkeypatch):
    from harness.models.load import ModelUnavailable, load_vision_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as info:
        load_vision_model(ModelSpec("timm:test_resnet.r160_in1k"))
    msg = str(info.value)
    assert "\n" not in msg and "timm/test_resnet.r160_in1k" in msg and "offline" in msg
    assert "path:DIR" in msg and "weights: FILE" in msg


def test_local_weights_file_and_folder_load(tmp_path):
    from harness.models import zoo
    from harness.models.load import is_vision, load_vision_model

    source = timm.create_model("test_resnet", pretrained=False).eval()
    file = tmp_path / "w.pth"
    torch.save(source.state_dict(), file)
    loaded = load_vision_model(ModelSpec("timm:test_resnet", weights=str(file)))
    x = random_images(2, 160, 3)
    assert torch.equal(loaded.model(x), source(x))
    assert loaded.info["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert loaded.info["data_config"]["input_size"] == [3, 160, 160]

    folder = zoo.ensure_model("tiny-vit")
    spec = ModelSpec(f"path:{folder}")
    assert is_vision(spec) and load_vision_model(spec).data_config["input_size"] == (1, 8, 8)


# --- suites ----------------------------------------------------------------------------


def write(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_unknown_timm_model_and_tag_suggest_close_names(tmp_path):
    from harness.suite.loader import SuiteError, load_suite

    path = write(tmp_path, """
        name: t
        models: [timm:resnet5O, timm:resnet50.tv_in1kk]
        methods: [dense]
        calibration: {dataset: digits}
        evals: {digits: {}}
    """)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    first, second = str(info.value).splitlines()
    assert first.startswith(f"{path}:2: models[0]: Unknown timm model 'resnet5O'. Did you mean: timm:resnet50")
    assert "no pretrained tag 'tv_in1kk'. Did you mean: timm:resnet50.tv_in1k" in second


def test_vision_suite_problems_point_at_their_lines(tmp_path):
    from harness.suite.loader import SuiteError, load_suite

    path = write(tmp_path, """
        name: bad
        models: [zoo:tiny-resnet, {id: zoo:tiny-vit, weights: w.pth}]
        methods: [magnitude]
        targets: [0.5]
        calibration: {dataset: digits, n_samples: 5000, seqlen: 64, root: /data}
        evals:
          perplexity: [{dataset: digits, seqlen: 64}]
          imagenet: {limit: 0}
    """)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    lines = str(info.value).splitlines()
    expect = [(":2: models[1].weights", "'weights' is for timm: models"),
              (":5: calibration.n_samples", "at most"), (":5: calibration.seqlen", "for text datasets"),
              (":5: calibration.root", "'root' is for imagenet"),
              (":7: evals.perplexity", "does not suit zoo:tiny-resnet"), (":7: evals.perplexity[0].dataset",
                                                                           "Unknown dataset 'digits'"),
              (":8: evals.imagenet.limit", "an integer > 0")]
    for where, what in expect:
        assert any(where in ln and what in ln for ln in lines), (where, lines)

    mixed = write(tmp_path, """
        name: mixed
        models: [zoo:tiny-llama, zoo:tiny-resnet]
        methods: [wanda]
        targets: [0.5]
        calibration: {dataset: pydoc, augment_rounds: 2}
    """, "mixed.yaml")
    with pytest.raises(SuiteError) as info:
        load_suite(mixed)
    text = str(info.value)
    assert ":2: models: a suite holds language models or image classifiers, not both" in text
    assert ":5: calibration.augment_rounds: 'augment_rounds' is for image datasets" in text


def test_imagenet_folder_missing_here_is_a_warning(tmp_path, monkeypatch, caplog):
    from harness.suite.loader import expand, load_suite

    monkeypatch.delenv(images.IMAGENET_ENV, raising=False)
    path = write(tmp_path, """
        name: inet
        models: [{id: timm:test_resnet, weights: w.pth}]
        methods: [sparsegpt]
        targets: [0.5]
        calibration: {dataset: imagenet, n_samples: 16, augment_rounds: 2, bn_recalibration: false}
        evals:
          imagenet: {root: val, limit: 100}
    """)
    with caplog.at_level("WARNING", logger="harness.suite.loader"):
        suite = load_suite(path)
    assert [w.split(": ")[0] for w in suite.warnings] == [f"{path}:5", f"{path}:7"]
    assert "does not exist here" in suite.warnings[1] and caplog.records
    (cell,) = expand(suite)
    assert cell.model.weights == str(tmp_path / "w.pth") and cell.image_evals[0].root == str(tmp_path / "val")
    assert not cell.publishable
    ident = cell.to_dict()
    assert ident["calibration"] == {"dataset": "imagenet", "n_samples": 16, "seed": 0, "augment_rounds": 2,
                                    "bn_recalibration": False}
    assert "image_evals" not in ident  # an evaluation is not part of the pruned model's identity
    assert [e.identity for e in cell.evals()] == [{"dataset": "imagenet", "limit": 100}]
    from harness.core.spec import RunSpec

    again = RunSpec.from_dict(ident, evals=cell.evals_dict())
    assert again.run_id == cell.run_id and [e.eval_id for e in again.evals()] == [e.eval_id for e in cell.evals()]


def test_language_model_run_ids_gain_no_keys():
    from harness.suite.loader import expand, load_suite

    for cell in expand(load_suite("suites/smoke.yaml")):
        d = cell.to_dict()
        assert set(d["model"]) == {"id", "dtype", "revision", "trust_remote_code"}
        assert set(d["calibration"]) == {"dataset", "n_samples", "seqlen", "seed"}
        assert "image_evals" not in d


# --- the vision zoo -----------------------------------------------------------------------


def test_zoo_names_are_in_step():
    from harness.core import ids
    from harness.models import zoo

    assert ids.LM_ZOO_NAMES == tuple(zoo.ZOO_MODELS) and ids.VISION_ZOO_NAMES == tuple(zoo.VISION_ZOO_MODELS)
    assert ids.model_kind(ids.parse_model_id("zoo:tiny-vit")) == "vision"
    assert ids.model_kind(ids.parse_model_id("timm:resnet50.tv_in1k")) == "vision"
    with pytest.raises(ids.ModelIdError, match="use 'path:'"):
        ids.parse_model_id("timm:/models/resnet")


@pytest.mark.parametrize("name", ["tiny-resnet", "tiny-vit"])
def test_shipped_vision_checkpoint_is_complete_and_accurate(name):
    from harness.models import zoo
    from harness.models.load import load_vision_model
    from harness.models.zoo._vision import vision_checkpoint_problem

    path = zoo.shipped_dir(name)
    assert vision_checkpoint_problem(path, zoo.get_vision_zoo_config(name)) is None
    assert zoo.ensure_model(name) == path and (path / "model.safetensors").stat().st_size < 2_000_000
    manifest = zoo.read_manifest(path)
    loaded = load_vision_model(ModelSpec(f"zoo:{name}"))
    top1, top5 = zoo.digits_accuracy(loaded.model, loaded.data_config)
    assert top1 == pytest.approx(manifest["test_top1"], abs=1e-4) and top1 > 0.9
    assert loaded.info["sha256"] == manifest["model_sha256"]


def test_vision_build_is_byte_identical(tmp_path):
    from harness.models import zoo

    calls = []
    a = zoo.build_model("tiny-resnet", tmp_path / "a", steps=3, progress=lambda *c: calls.append(c[:2]))
    b = zoo.build_model("tiny-resnet", tmp_path / "b", steps=3)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    for f in ("model.safetensors", "config.json", "zoo.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert json.loads((a / "config.json").read_text())["architecture"] == "resnet18d"


# --- end to end ---------------------------------------------------------------------------


def test_zoo_vision_suite_end_to_end(tmp_path, monkeypatch):
    from harness.models import zoo
    from harness.run.runner import run_suite
    from harness.store.index import Store
    from harness.suite.loader import load_suite

    monkeypatch.delenv(images.IMAGENET_ENV, raising=False)
    path = write(tmp_path, """
        name: vision-e2e
        models: [zoo:tiny-resnet, zoo:tiny-vit]
        methods: [dense, magnitude, sparsegpt]
        targets: [0.5, "2:4"]
        calibration: {dataset: digits, n_samples: 64, seed: 0}
        evals: {digits: {}}
    """)
    store = Store(tmp_path / "results" / "sb.duckdb")
    results = run_suite(load_suite(path), store=store, device="cpu")
    assert [r.status for r in results] == ["ok"] * 10, [r.error for r in results]
    by = {(r.spec.model.id, r.spec.method, r.spec.target): r for r in results}
    for name in ("tiny-resnet", "tiny-vit"):
        dense = by[(f"zoo:{name}", "dense", "0")].metrics
        assert set(dense) == {"digits/top1"}  # top5 is stored, not a headline
        assert dense["digits/top1"] == pytest.approx(zoo.read_manifest(zoo.shipped_dir(name))["test_top1"], abs=1e-4)
        assert by[(f"zoo:{name}", "sparsegpt", "0.5")].metrics["digits/top1"] > 0.8
    run_id = by[("zoo:tiny-resnet", "magnitude", "0.5")].spec.run_id
    record = json.loads((store.run_dir(run_id) / "record.json").read_text())
    assert record["prune_info"]["bn_recalibration"]["applied"] is True
    assert record["model_info"]["data_config"]["input_size"] == [1, 48, 48]
    assert record["eval_info"]["images"]["digits"]["images"] == 500
    assert {m["name"] for m in record["metrics"]} == {"digits/top1", "digits/top5"}
    assert "conv1" not in {layer["name"] for layer in record["layers"]}
    (nm,) = store.query("SELECT nm_compliant FROM runs WHERE method = 'sparsegpt' AND target = '2:4' "
                        "AND model = 'zoo:tiny-resnet'")
    assert nm == (True,)

    bad = write(tmp_path, """
        name: no-imagenet
        models: [zoo:tiny-resnet]
        methods: [dense]
        evals: {imagenet: {limit: 10}}
    """, "bad.yaml")
    (res,) = run_suite(load_suite(bad), store=store, device="cpu")
    assert res.status == "error" and "DatasetUnavailable: imagenet val images: no folder" in res.error
    assert "\n" not in res.error


def test_layers_whose_forward_never_runs_are_skipped():
    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)  # uses out_proj.weight directly
            self.head = nn.Linear(8, 3)
            self.pretrained_cfg = {"first_conv": None, "classifier": "head"}

        def forward(self, x):
            h = self.fc(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))

    model = WithMHA().eval()
    x = torch.randn(6, 5, 8)
    result = vision.prune_vision(model, batches_of(x), method("sparsegpt"), Target(0.5))
    assert [r.name for r in result.reports] == ["fc"]
    assert {"name": "attn.out_proj", "reason": "its forward never ran, so it has no calibration statistics"} \
        in result.skipped


def test_imagenet_folder_calibration_and_eval_through_the_runner(tmp_path):
    """An ImageFolder of 1,000 one-image classes stands in for ImageNet (train/ and val/ alike)."""
    import numpy as np
    from PIL import Image

    from harness.run.runner import run_suite
    from harness.store.index import Store
    from harness.suite.loader import load_suite

    rng = np.random.default_rng(0)
    for i in range(1000):
        (tmp_path / "inet" / f"n{i:08d}").mkdir(parents=True)
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "inet" / f"n{i:08d}" / "a.png")
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), tmp_path / "w.pth")
    path = write(tmp_path, """
        name: inet
        models: [{id: timm:test_resnet, weights: w.pth}]
        methods: [wanda]
        targets: [0.5]
        calibration: {dataset: imagenet, root: inet, n_samples: 8, augment_rounds: 2}
        evals:
          imagenet: {root: inet, limit: 50}
    """)
    store = Store(tmp_path / "results" / "sb.duckdb")
    (res,) = run_suite(load_suite(path), store=store, device="cpu")
    assert res.status == "ok", res.error
    record = json.loads((store.run_dir(res.spec.run_id) / "record.json").read_text())
    assert {m["name"] for m in record["metrics"]} == {"imagenet/top1", "imagenet/top5"}
    assert record["eval_info"]["images"]["imagenet"] == {"source": str(tmp_path / "inet"), "images": 50, "limit": 50}
    assert record["prune_info"]["calibration_images"] == 16  # 8 images x 2 augmented rounds
    assert record["prune_info"]["bn_recalibration"]["images"] == 16
    assert record["publishable"] is False and record["model_info"]["data_config"]["input_size"] == [3, 160, 160]
    split = images.eval_split("imagenet", str(tmp_path / "inet"), 50)
    assert split.labels == list(range(0, 1000, 20))  # evenly spaced: one image from every 20th class


def test_sequential_statistics_see_the_earlier_layers_pruned():
    """sequential: each layer's Hessian comes from the model with the earlier layers already pruned."""
    import torch
    from torch import nn

    from harness.core.method import PruneResult, PruningMethod
    from harness.core.target import Target
    from harness.drivers.vision import prune_vision

    class Zeroing(PruningMethod):
        name, stats = "zeroing", "hessian"

        def __init__(self):
            super().__init__()
            self.seen = {}

        def prune(self, name, weight, stats, target):
            self.seen[name] = stats.hessian.clone()
            return PruneResult(torch.zeros_like(weight))

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, bias=False),
                             nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, bias=False)).eval()

    images = torch.randn(8, 1, 6, 6)
    batches = lambda b: list(images.split(b))  # noqa: E731
    one_pass, seq = Zeroing(), Zeroing()
    prune_vision(model(), batches, one_pass, Target(0.5), batch_size=4, bn_recalibration=False)
    prune_vision(model(), batches, seq, Target(0.5), batch_size=4, bn_recalibration=False, sequential=True)
    assert sorted(seq.seen) == sorted(one_pass.seen) == ["2", "4"]  # "0" is the stem: dense by default
    assert torch.equal(seq.seen["2"], one_pass.seen["2"])  # the first pruned layer sees dense inputs either way
    assert float(one_pass.seen["4"].abs().max()) > 0  # one pass: dense inputs
    assert float(seq.seen["4"].abs().max()) == 0  # sequential: layer 2 is all zeros, so layer 4's input is 0


def test_sequential_reestimates_batchnorm_before_each_later_layer():
    """With BatchNorm re-estimation on, a later layer's statistics come from the pruned model with fresh BN stats."""
    import torch
    from torch import nn

    from harness.core.method import PruneResult, PruningMethod
    from harness.core.target import Target
    from harness.drivers.vision import prune_vision

    class Scaling(PruningMethod):
        name, stats = "scaling", "hessian"

        def __init__(self, factor):
            super().__init__()
            self.factor, self.seen = factor, {}

        def prune(self, name, weight, stats, target):
            self.seen[name] = stats.hessian.clone()
            return PruneResult(weight * self.factor)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, bias=False),
                             nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()

    images = torch.randn(8, 1, 6, 6)
    batches = lambda b: list(images.split(b))  # noqa: E731
    seen = {}
    for recal in (True, False):
        for factor in (1.0, 10.0):
            method = Scaling(factor)
            res = prune_vision(model(), batches, method, Target(0.5), batch_size=4, bn_recalibration=recal,
                               sequential=True)
            seen[recal, factor] = method.seen["5"]
            assert res.bn_recalibration.get("before_each_layer") == (1 if recal else None)
    # re-estimated BN normalises the scaled conv away: layer 5 sees the same inputs either way
    torch.testing.assert_close(seen[True, 10.0], seen[True, 1.0], rtol=1e-3, atol=1e-5)
    # with BN's stale statistics the scale passes through (inputs 10x, Hessian about 100x)
    assert float(seen[False, 10.0].trace()) > 50 * float(seen[False, 1.0].trace())


def test_agreement_and_kl_against_the_dense_logits():
    dense = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert images.agreement(dense, dense) == (1.0, 0.0, 0.0)
    other = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # second image flips to class 0
    agree, kl, _ = images.agreement(other, dense)
    p = torch.softmax(dense[1], 0)
    expected = float((p * (p.log() - torch.log_softmax(other[1], 0))).sum()) / 2
    assert agree == 0.5 and kl == pytest.approx(expected, rel=1e-6)


def test_agreement_eval_through_the_runner(tmp_path):
    """evals.digits.agreement adds agree_top1 and kl_dense: exact for dense, below 1 / above 0 once pruned."""
    from harness.run.runner import run_suite
    from harness.store.index import Store
    from harness.suite.loader import load_suite

    path = write(tmp_path, """
        name: agree
        models: [zoo:tiny-vit]
        methods: [dense, magnitude]
        targets: [0.9]
        calibration: {dataset: digits, n_samples: 32, seed: 0}
        evals: {digits: {agreement: true, limit: 200}}
    """)
    store = Store(tmp_path / "results" / "sb.duckdb")
    results = run_suite(load_suite(path), store=store, device="cpu")
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    rows = {(m, name): v for m, name, v in store.query(
        "SELECT r.method, m.metric, m.value FROM metrics m JOIN runs r USING (run_id)")}
    assert rows["dense", "digits/agree_top1"] == 1.0 and rows["dense", "digits/kl_dense"] == pytest.approx(0, abs=1e-9)
    assert rows["magnitude", "digits/agree_top1"] < 0.95 and rows["magnitude", "digits/kl_dense"] > 0.05
    # agreeing with a dense model that is right ~95% of the time bounds accuracy
    assert abs(rows["magnitude", "digits/top1"] - rows["magnitude", "digits/agree_top1"]) < 0.1
    from harness.suite.loader import expand

    plain = load_suite(write(tmp_path, "name: p\nmodels: [zoo:tiny-vit]\nmethods: [dense]\nevals: {digits: {}}\n",
                             "plain.yaml"))
    assert "agreement" not in json.dumps(expand(plain)[0].to_dict())  # off: earlier run ids unchanged


def test_agreement_must_be_a_boolean(tmp_path):
    from harness.suite.loader import SuiteError, load_suite

    path = write(tmp_path, """
        name: bad-agree
        models: [zoo:tiny-vit]
        methods: [dense]
        evals:
          digits: {agreement: yes please}
    """)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert ":5: evals.digits.agreement: expected true or false" in str(err.value)
