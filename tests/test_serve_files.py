"""`serve` serves only its own routes and files (issue 20): Gradio 3.41's `/file=` route, mounted as it is, serves
any file under the working directory, symlinks out of it included; serve's app does not. Real requests through
the real app."""
from __future__ import annotations

import os

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A working directory holding a secret file and a symlink to a file outside it."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "secret.txt").write_text("api-key-in-the-working-directory")
    (tmp_path / "outside.txt").write_text("a file outside the working directory")
    os.symlink(tmp_path / "outside.txt", tmp_path / "work" / "link.txt")
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def _fetch(client: TestClient, workdir) -> dict:
    return {name: client.get(f"/file={path}")
            for name, path in (("relative", "secret.txt"), ("absolute", workdir / "secret.txt"),
                               ("symlink", "link.txt"))}


def test_gradio_as_mounted_serves_the_working_directory(workdir):
    import gradio as gr

    with gr.Blocks() as blocks:
        gr.Markdown("page")
    app = gr.mount_gradio_app(FastAPI(), blocks, path="/")
    responses = _fetch(TestClient(app), workdir)
    assert responses["relative"].text == "api-key-in-the-working-directory"  # live: the hole exists
    assert responses["symlink"].text == "a file outside the working directory"


def test_serve_serves_no_file_of_the_working_directory_but_its_uploads(workdir, tiny_models):
    from lib_handrefiner.cli.serve import create_app
    from lib_handrefiner.service import StandaloneService

    client = TestClient(create_app(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet)))
    for name, response in _fetch(client, workdir).items():
        assert response.status_code == 403, (name, response.status_code, response.text)
        assert "api-key" not in response.text and "outside" not in response.text.replace("File not allowed", "")
    # What is uploaded to this server (the editor's images) is still served back.
    (uploaded,) = client.post("/upload", files={"files": ("hand.png", b"\x89PNG fake bytes", "image/png")}).json()
    assert client.get(f"/file={uploaded}").content == b"\x89PNG fake bytes"
    assert not str(uploaded).startswith(str(workdir))
    assert client.get("/handrefiner/version").status_code == 200  # its own routes answer
