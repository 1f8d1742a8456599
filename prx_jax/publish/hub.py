"""Uploading an exported pipeline folder to the Hugging Face Hub (``create_repo`` +
``upload_folder``).

The token comes from where huggingface_hub looks (``HF_TOKEN``, the ``hf auth login`` file); it is
never printed, logged or written, and it is scrubbed from any error message shown. Offline mode or
no token is a ``HubError`` before anything is sent; the local folder is never modified.
"""

from __future__ import annotations

from pathlib import Path


class HubError(RuntimeError):
    """The push failed or cannot start; the message says why (never with the token)."""


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Creates ``repo_id`` (a model repo; kept if it exists) and uploads ``folder``; returns the
    commit URL."""
    from huggingface_hub import HfApi, constants, get_token

    folder = Path(folder)
    if not (folder / "model_index.json").exists():
        raise HubError(f"{folder} is not a pipeline folder (no model_index.json)")
    if constants.is_offline_mode():
        raise HubError("cannot push: Hugging Face offline mode is on (unset HF_HUB_OFFLINE)")
    token = token or get_token()
    if not token:
        raise HubError("cannot push: no Hugging Face token (set HF_TOKEN or run `hf auth login`)")
    api = HfApi(token=token)
    failure = None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message or "Upload PRX pipeline exported by prx_jax",
        )
    except Exception as e:  # network, auth, server: one clear error, token scrubbed
        failure = f"push of {folder} to {repo_id} failed: {type(e).__name__}: {e}"
    if failure is not None:  # raised outside the handler: the original (with headers) not chained
        raise HubError(_scrub(failure, token))
    return str(getattr(info, "commit_url", info))
