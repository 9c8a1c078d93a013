"""A stand-in for the Hugging Face Hub, so that hub tests need no network."""
from pathlib import Path

from huggingface_hub import constants as hf_constants

from davit.checkpoint import hub


class FakeHub:
    """Stands in for the Hub: ``probe`` (``get_hf_file_metadata``) raises ``errors[filename]``,
    ``download`` (``hf_hub_download``) returns ``files[filename]`` (a real file), else a fake cache
    path; both record their calls."""

    def __init__(self, errors: dict[str, Exception], files: dict[str, Path] | None = None):
        self.errors, self.files, self.probed, self.downloaded = errors, files or {}, [], []

    def probe(self, url, timeout=None):
        filename = url.rsplit("/", 1)[-1]
        self.probed.append(filename)
        if filename in self.errors:
            raise self.errors[filename]

    def download(self, repo_id, filename, *, revision=None):
        self.downloaded.append(filename)
        return str(self.files.get(filename, f"/cache/{repo_id}/{filename}"))

    def install(self, monkeypatch):
        monkeypatch.setattr(hub, "get_hf_file_metadata", self.probe)
        monkeypatch.setattr(hub, "hf_hub_download", self.download)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        return self
