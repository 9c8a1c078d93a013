"""Every resize is sized before it is paid: an extreme aspect ratio is its own one-line error."""
import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from davit.checkpoint.card import Preprocessing
from davit.data import RESIZED_PIXEL_BUDGET, build_test_transform, resized_size
from davit.errors import ImageLoadError
from tests.engine.test_infer import TINY_MODEL, write_tiny_checkpoint
from tests.paths import REPO


def test_resized_size_refuses_an_extreme_aspect_ratio_before_resizing():
    assert resized_size(Preprocessing(), 640, 480) == (314, 236)
    with pytest.raises(ImageLoadError, match=r"tall\.png would be resized to 236 x 14160000 .*limit of 64000000"):
        resized_size(Preprocessing(), 1, 60000, "tall.png")
    assert RESIZED_PIXEL_BUDGET == 64_000_000


def test_the_transform_refuses_a_tall_png_and_names_it(tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("L", (1, 60000)).save(tall)
    with pytest.raises(ImageLoadError, match="tall.png would be resized"):
        build_test_transform()(tall)


def test_predict_on_a_folder_keeps_the_good_result_under_a_memory_limit(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes((REPO / "demo" / "cat.jpg").read_bytes())
    Image.new("L", (1, 60000)).save(folder / "tall.png")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    script = textwrap.dedent(f"""
        import resource, sys
        limit = 4 * 1024 ** 3
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from davit.cli.app import run_subcommand
        sys.exit(run_subcommand("predict", [{str(folder)!r}, "--model", {TINY_MODEL!r}, "--checkpoint",
                                            {str(checkpoint)!r}, "--device", "cpu", "--num-workers", "0",
                                            "--json"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 1, done.stderr
    records = {r["image"].rsplit("/", 1)[-1]: r for r in json.loads(done.stdout)}
    assert records["cat.jpg"]["topk"]
    assert "would be resized" in records["tall.png"]["error"]["message"]
    assert "MemoryError" not in done.stderr
