"""The prediction record is one object: inference_model, davit predict (--json and --out) and the
server give the same keys and values for the same image, each valid under the documented schema."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest

from davit import inference_model
from davit.cli.app import run_subcommand
from davit.records import RECORD_SCHEMA
from tests.paths import REPO

PLACE = ("image", "index", "pred_scores")  # where the record came from, and the scores asked for


def _prediction(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in PLACE}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert (a["pred_label"], a["pred_class"]) == (b["pred_label"], b["pred_class"])
    assert a["pred_score"] == pytest.approx(b["pred_score"], abs=1e-5)
    assert [(t["label"], t["class"]) for t in a["topk"]] == [(t["label"], t["class"]) for t in b["topk"]]
    assert [t["score"] for t in a["topk"]] == pytest.approx([t["score"] for t in b["topk"]], abs=1e-5)


def test_api_cli_and_server_give_one_record(server, tiny_folder, photos, tmp_path, capsys):
    image = tmp_path / "a.jpg"
    image.write_bytes(photos["a.jpg"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")

    api = inference_model(str(tiny_folder), [str(image), str(bad)])
    assert run_subcommand("predict", [str(image), str(bad), "--model", str(tiny_folder), "--json",
                                      "--device", "cpu", "--num-workers", "0"]) == 1
    cli = json.loads(capsys.readouterr().out)
    out = tmp_path / "r.jsonl"
    assert run_subcommand("predict", [str(image), str(bad), "--model", str(tiny_folder), "--out", str(out),
                                      "--device", "cpu", "--num-workers", "0"]) == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    served = server.http.post("/v1/predict", files=[("images", ("a.jpg", photos["a.jpg"])),
                                                     ("images", ("bad.jpg", b"not an image"))]).json()["results"]

    assert api[0]["image"] == cli[0]["image"] == lines[0]["image"] == str(image) and served[0]["index"] == 0
    assert api[0]["pred_scores"].shape == (3,)  # mmpretrain's array
    api_json = [{**r, "pred_scores": r["pred_scores"].tolist()} if "pred_scores" in r else r for r in api]
    for record in [*api_json, *cli, *lines, *served]:
        jsonschema.validate(record, RECORD_SCHEMA)
    for other in (cli[0], lines[0], served[0]):
        _same(_prediction(api[0]), _prediction(other))
    for error in (api[1], cli[1], lines[1], served[1]):
        assert set(error) - set(PLACE) == {"error"} and set(error["error"]) == {"code", "message"}
    assert api[1]["error"] == cli[1]["error"] == lines[1]["error"]


def test_the_documented_schema_is_the_one_in_the_code():
    page = (REPO / "docs" / "records.md").read_text(encoding="utf-8")
    block = re.search(r"```json\n(.*?)```", page, re.S)
    assert block is not None, "docs/records.md should print the schema in a json block"
    assert json.loads(block.group(1)) == RECORD_SCHEMA
