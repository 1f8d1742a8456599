"""``push_folder`` against huggingface_hub with its HTTP layer answered in-process (no network):
the repo id and files sent, the token in the Authorization header only, never in any log, output
or file; offline and unauthenticated pushes fail clearly and leave the folder intact."""

import base64
import json
import logging

import pytest

from prx_jax.publish.hub import HubError, push_folder

TOKEN = "hf_TESTtokenNeverPrinted0123456789"
REPO = "someone/prx-tiny"


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pipe"
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PRXPipeline"}))
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    (root / "transformer" / "config.json").write_text("{}")
    (root / "transformer" / "weights.bin").write_bytes(bytes(range(256)) * 3)
    return root


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub: records every request; answers create_repo, preupload and commit."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.utils import _http

    requests = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        requests.append((request.method, request.url.path, dict(request.headers), body))
        path = request.url.path
        if path == "/api/repos/create" and b"fail" in body:  # an auth error echoing the header
            auth = request.headers.get("authorization", "")
            return httpx2.Response(401, json={"error": f"Invalid credentials in {auth}"})
        if path == "/api/repos/create":
            return httpx2.Response(
                200, json={"url": f"https://huggingface.co/{REPO}", "name": REPO}
            )
        if path == "/api/validate-yaml":  # the Hub checks the card's front matter
            return httpx2.Response(200, json={"warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return httpx2.Response(
                200,
                json={
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                },
            )
        if "/commit/" in path:
            return httpx2.Response(
                200,
                json={"commitUrl": f"https://huggingface.co/{REPO}/commit/abc", "commitOid": "abc"},
            )
        return httpx2.Response(404, json={"error": f"unexpected {request.method} {path}"})

    def factory():
        return httpx2.Client(
            transport=httpx2.MockTransport(handler),
            event_hooks={"request": [_http.hf_request_event_hook]},
        )

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False, raising=False)
    huggingface_hub.set_client_factory(factory)
    yield requests
    huggingface_hub.set_client_factory(_http.default_client_factory)


def _commit_files(body: bytes) -> dict[str, bytes]:
    files = {}
    for line in body.decode().splitlines():
        item = json.loads(line)
        if item["key"] == "file":
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_push_sends_repo_and_files_and_never_shows_the_token(folder, hub, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    url = push_folder(folder, REPO, private=True)
    assert url == f"https://huggingface.co/{REPO}/commit/abc"
    create = [r for r in hub if r[1] == "/api/repos/create"]
    assert len(create) == 1
    sent = json.loads(create[0][3])
    assert (sent.get("organization"), sent["name"]) == ("someone", "prx-tiny")
    assert sent.get("private") is True or sent.get("visibility") == "private", sent
    commit = [r for r in hub if "/commit/" in r[1]]
    assert len(commit) == 1 and commit[0][1] == f"/api/models/{REPO}/commit/main"
    files = _commit_files(commit[0][3])
    want = {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }
    assert files == want
    for _, path, headers, _ in hub:
        if path == "/api/repos/create" or path.startswith(f"/api/models/{REPO}/"):
            assert headers.get("authorization") == f"Bearer {TOKEN}", path
    out = capsys.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in out.out + out.err + logs
    for p in folder.parent.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


def test_offline_is_a_clear_error_and_leaves_the_folder(folder, monkeypatch):
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(HubError, match="offline"):
        push_folder(folder, REPO, token=TOKEN)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_no_token_is_a_clear_error(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "none"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        push_folder(folder, REPO)


def test_server_error_is_clear_and_scrubbed(folder, hub, capsys):
    with pytest.raises(HubError, match="401") as e:
        push_folder(folder, "someone/fail-repo")
    assert TOKEN not in str(e.value) + repr(e.value.__context__) + repr(e.value.__cause__)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err
