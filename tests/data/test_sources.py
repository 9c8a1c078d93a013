"""Webdataset shards and Hugging Face datasets as sources: the same predictions and metrics as the
same images in folders, every sample once across processes, a corrupt sample one record."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from davit.data import build_test_transform
from davit.data.calibration import folder_images
from davit.data.datasets import build_dataset
from davit.data.sources import DatasetRow, ShardMember, shard_paths, stored_samples
from davit.engine.infer import InferenceOptions, expand_inputs, infer
from davit.errors import DatasetError, ImageLoadError, InvalidArgumentError
from tests.engine.test_evaluate import TINY_OPTIONS, main, tiny_checkpoint  # noqa: F401
from tests.engine.test_infer import Collect
from tests.paths import REPO

webdataset = pytest.importorskip("webdataset")
CLASSES = ("cats", "cups")
LABELS = [0, 1, 1, 0, 1, 0, 0]


def photo(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (28 + 4 * i, 36, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def same_images(tmp_path_factory):
    """The same seven photos three ways: class folders, two webdataset shards, a saved HF dataset."""
    root = tmp_path_factory.mktemp("sources")
    folders = root / "folders"
    for i, label in enumerate(LABELS):
        (folders / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        photo(i).save(folders / CLASSES[label] / f"p{i}.png")
    files = sorted(folders.rglob("*.png"))  # the folder dataset's order: class, then name
    order = [(int(f.stem[1:]), CLASSES.index(f.parent.name)) for f in files]
    for shard in range(2):
        with webdataset.TarWriter(str(root / f"train-{shard:04d}.tar")) as writer:
            for i, label in order[shard * 4:(shard + 1) * 4]:
                buffer = io.BytesIO()
                photo(i).save(buffer, "PNG")
                writer.write({"__key__": f"p{i}", "png": buffer.getvalue(), "cls": label})
    return root, files, [label for _, label in order]


def test_shards_list_their_samples_in_order(same_images):
    root, files, labels = same_images
    samples = stored_samples(f"wds:{root}/train-{{0000..0001}}.tar")
    assert [str(image).rsplit("#", 1)[1] for image in samples.images] == [f.stem for f in files]
    assert samples.labels == labels
    assert str(samples.images[0]) == f"{root}/train-0000.tar#{files[0].stem}"
    assert shard_paths(f"{root}/train-*.tar") == [f"{root}/train-0000.tar", f"{root}/train-0001.tar"]


def test_predictions_equal_the_folders(same_images):
    root, files, _ = same_images
    outputs = {}
    for name, source in (("folders", str(root / "folders")), ("wds", f"wds:{root}/train-{{0000..0001}}.tar")):
        sink = Collect()
        torch.manual_seed(0)
        infer(InferenceOptions(inputs=[source], model=json.dumps({"embed_dims": [8, 16, 24, 32],
              "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}), random_weights=True, num_workers=2,
              batch_size=3, device="cpu"), sink)
        outputs[name] = sink.records
    assert [r["topk"] for r in outputs["wds"]] == [r["topk"] for r in outputs["folders"]]
    assert [r["image"].rsplit("#", 1)[1] for r in outputs["wds"]] == [f.stem for f in files]


def test_a_corrupt_sample_is_one_record_by_its_key(tmp_path):
    with webdataset.TarWriter(str(tmp_path / "s.tar")) as writer:
        buffer = io.BytesIO()
        photo(0).save(buffer, "PNG")
        writer.write({"__key__": "good", "png": buffer.getvalue()})
        writer.write({"__key__": "bad", "png": b"\x89PNG not an image"})
        writer.write({"__key__": "nopic", "txt": b"a caption"})
    sink = Collect()
    infer(InferenceOptions(inputs=[f"wds:{tmp_path}/s.tar"], model=json.dumps({"embed_dims": [8, 16, 24, 32],
          "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}), random_weights=True, device="cpu",
          num_workers=0), sink)
    good, bad, nopic = sink.records
    assert "topk" in good and good["image"].endswith("s.tar#good")
    assert bad["image"].endswith("s.tar#bad") and "s.tar#bad" in bad["error"]["message"]
    assert "no image member" in nopic["error"]["message"] and "txt" in nopic["error"]["message"]


def test_a_truncated_shard_keeps_what_was_read(same_images, tmp_path):
    root, _, _ = same_images
    data = (root / "train-0000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:len(data) * 2 // 3])
    samples = stored_samples(f"wds:{tmp_path}/cut.tar")
    readable = []
    for image in samples.images:
        try:
            readable.append(Image.open(io.BytesIO(image.read())).size)
        except ImageLoadError as error:
            assert "cut.tar#" in str(error)
    assert 1 <= len(readable) < len(samples.images)


@pytest.mark.parametrize("source, message", [
    ("wds:/nowhere/x-{0..1}.tar", "do not exist"),
    ("wds:s3://bucket/x.tar", "local files"),
    ("wds:x.tar?image=jpg", "unknown option"),
])
def test_bad_sources_are_one_line(source, message):
    with pytest.raises((DatasetError, InvalidArgumentError), match=message):
        expand_inputs([source])


def test_a_compressed_shard_is_refused_with_what_to_do(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("a.txt"), io.BytesIO(b""))
    with pytest.raises(DatasetError, match="decompress"):
        stored_samples(f"wds:{tmp_path}/s.tar")


def test_calibration_reads_shards(same_images):
    root, _, _ = same_images
    batches = folder_images(f"wds:{root}/train-0000.tar", build_test_transform(), batch_size=3)
    from_folder = folder_images(root / "folders", build_test_transform(), batch_size=3, limit=4)
    assert torch.equal(torch.cat(batches), torch.cat(from_folder))


@pytest.fixture(scope="module")
def hf_dataset(same_images):
    datasets = pytest.importorskip("datasets")
    root, files, labels = same_images
    data = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))}))
    data.save_to_disk(str(root / "hf"))
    return root / "hf"


def test_hf_dataset_rows_are_the_images(hf_dataset, same_images):
    _, files, labels = same_images
    samples = stored_samples(f"hf:{hf_dataset}")
    assert samples.labels == labels and samples.classes == list(CLASSES)
    assert all(isinstance(image, DatasetRow) for image in samples.images)
    assert samples.images[2].read() == files[2].read_bytes()


def test_dataset_sections_build_the_same_samples(hf_dataset, same_images):
    root, files, labels = same_images
    transform = build_test_transform()
    wds_set = build_dataset({"type": "WebDataset", "data_root": str(root), "urls": "train-{0000..0001}.tar",
                             "classes": list(CLASSES), "split": ""}, transform, 2)
    hf_set = build_dataset({"type": "HFDataset", "path": str(hf_dataset)}, transform, 2)
    folder_set = build_dataset({"type": "CustomDataset", "data_root": str(root / "folders")}, transform, 2)
    for dataset in (wds_set, hf_set):
        assert [label for _, label in dataset.samples] == labels and dataset.classes == list(CLASSES)
        for i in range(len(files)):
            assert torch.equal(dataset[i].image, folder_set[i].image)
    assert isinstance(wds_set.samples[0][0], ShardMember)
    with pytest.raises(DatasetError, match="have no class"):
        build_dataset({"type": "WebDataset", "urls": str(root / "train-0000.tar"), "label_key": "nope"},
                      transform, 2)


def test_davit_test_metrics_equal_the_folders(tiny_checkpoint, same_images, hf_dataset, tmp_path):  # noqa: F811
    root, _, _ = same_images
    config = str(REPO / "configs/davit/davit-tiny_4xb256_in1k.py")
    common = [*TINY_OPTIONS, "test_dataloader.dataset.split=", "test_dataloader.dataset.ann_file=",
              "test_dataloader.dataset.data_prefix="]
    runs = {
        "folders": ["test_dataloader.dataset.type=CustomDataset",
                    f"test_dataloader.dataset.data_root={root / 'folders'}"],
        "wds": ["test_dataloader.dataset.type=WebDataset", f"test_dataloader.dataset.data_root={root}",
                "+test_dataloader.dataset.urls=train-{0000..0001}.tar",
                f"+test_dataloader.dataset.classes={list(CLASSES)}"],
        "hf": ["test_dataloader.dataset.type=HFDataset", f"+test_dataloader.dataset.path={hf_dataset}"],
    }
    results = {}
    for name, options in runs.items():
        work = tmp_path / name
        assert main([config, str(tiny_checkpoint), "--device", "cpu", "--work-dir", str(work), "--out",
                     str(work / "pred.json"), "--cfg-options", *common, *options]) == 0
        metrics = json.loads((work / "metrics.json").read_text())
        records = json.loads((work / "pred.json").read_text())
        results[name] = ({k: v for k, v in metrics.items() if k.startswith("accuracy")},
                         [(r["gt_label"], r["pred_label"]) for r in records])
    assert results["wds"] == results["folders"] == results["hf"]


def _as_shard(folder, shard):
    """The images of a class-folder dataset, in its order, as one webdataset shard with classes."""
    dataset = build_dataset({"type": "CustomDataset", "data_root": str(folder)}, build_test_transform())
    with webdataset.TarWriter(str(shard)) as writer:
        for position, (path, label) in enumerate(dataset.samples):
            writer.write({"__key__": f"{position:05d}", "png": path.read_bytes(), "cls": label})
    return dataset.classes


def _as_hf(folder, target):
    datasets = pytest.importorskip("datasets")
    dataset = build_dataset({"type": "CustomDataset", "data_root": str(folder)}, build_test_transform())
    data = datasets.Dataset.from_dict(
        {"image": [str(path) for path, _ in dataset.samples], "label": [label for _, label in dataset.samples]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=dataset.classes)}))
    data.save_to_disk(str(target))
    return target


def test_training_on_shards_and_a_dataset_equals_training_on_folders(tmp_path):
    from tests.engine.test_train import _colour_folder, _records, _same_state, _tiny_config, train

    data = tmp_path / "data"
    _colour_folder(data / "train", per_class=4)
    _colour_folder(data / "val", per_class=2, seed=1)
    classes = _as_shard(data / "train", tmp_path / "train-0000.tar")
    hf_val = _as_hf(data / "val", tmp_path / "val-hf")
    options = ["--device", "cpu", "--deterministic", "--seed", "3"]
    folders = _tiny_config(tmp_path / "folders.py", data, train_cfg="dict(by_epoch=True, max_epochs=2, val_interval=1)")
    stored = _tiny_config(
        tmp_path / "stored.py", data, train_cfg="dict(by_epoch=True, max_epochs=2, val_interval=1)",
        train_dataloader=f"dict(batch_size=4, num_workers=2, dataset=dict(type='WebDataset', "
                         f"urls={str(tmp_path / 'train-0000.tar')!r}, classes={classes!r}, pipeline=train_pipeline))",
        val_dataloader=f"dict(batch_size=8, num_workers=0, dataset=dict(type='HFDataset', path={str(hf_val)!r}, "
                       "pipeline=test_pipeline))")
    assert train([str(folders), "--work-dir", str(tmp_path / "a"), *options]) == 0
    assert train([str(stored), "--work-dir", str(tmp_path / "b"), *options]) == 0
    a = torch.load(tmp_path / "a" / "latest.pth", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "b" / "latest.pth", map_location="cpu", weights_only=True)
    _same_state(a["state_dict"], b["state_dict"])
    assert _records(tmp_path / "b", "val") == _records(tmp_path / "a", "val")


def test_predict_resumes_by_sample_name(same_images, tmp_path):
    root, files, _ = same_images
    model = json.dumps({"embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]})
    out = str(tmp_path / "p.jsonl")
    torch.manual_seed(0)
    first = infer(InferenceOptions(inputs=[f"wds:{root}/train-0000.tar"], model=model, random_weights=True,
                                   out=out, num_workers=0))
    torch.manual_seed(0)  # the same random weights: resuming needs the model that wrote the file
    both = infer(InferenceOptions(inputs=[f"wds:{root}/train-{{0000..0001}}.tar"], model=model,
                                  random_weights=True, out=out, resume=True, num_workers=0))
    assert (first.done, both.skipped, both.done) == (4, 4, 3)
    names = [json.loads(line)["image"].rsplit("#", 1)[1] for line in Path(out).read_text().splitlines()]
    assert names == [f.stem for f in files]
