"""What a run exposes to other users of the machine or the network (issue: nothing leaked).

* torch.distributed's rendezvous stores (the DeepSpeed groups', the weight sync's) listen on the group's own address
  only: torch's TCPStore server would listen on every interface, unauthenticated;
* Ray's token file is made private (ray.init leaves it 0644);
* cluster/submit.sh refuses to put a secret into the runtime_env, which Ray logs verbatim;
* end to end (tests/test_e2e.py): a debug run with sentinel WANDB_API_KEY and HF_TOKEN leaves neither anywhere under
  its output_dir or Ray's session folder.
"""

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from actors.group import tcp_store
from rlaif.run.session import private_token_file

from .conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rendezvous_store_listens_on_its_host_only():
    port, got = _free_port(), {}
    t = threading.Thread(target=lambda: got.setdefault("v", tcp_store("127.0.0.1", port, 2, 1, 30).get("k")))
    t.start()  # the client rank: it retries until the server listens
    server = tcp_store("127.0.0.1", port, 2, 0, timeout_s=30)  # returns once both ranks have joined
    listening = [c.laddr for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening  # torch's own: 0.0.0.0 / ::
    server.set("k", "v")  # the client reaches the server through it
    t.join(30)
    assert got == {"v": b"v"}


def test_rays_token_file_is_made_private(tmp_path, monkeypatch):
    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    private_token_file()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_submit_refuses_secrets_in_the_runtime_env():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "WANDB_API_KEY": "sentinel-123"}
    for arg in ("WANDB_API_KEY", "HF_TOKEN=abc", "MY_SECRET=x"):
        proc = subprocess.run(["bash", str(REPO / "cluster" / "submit.sh"), "--env", arg, "--", "true"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode != 0 and "looks like a secret" in proc.stderr, (arg, proc.stderr)
        assert "sentinel-123" not in proc.stderr + proc.stdout
