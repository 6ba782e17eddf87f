"""The debug run as a Ray job on a real (one-node) Ray cluster, submitted the way users do: cluster/submit.sh,
i.e. `ray job submit --working-dir <repo> --runtime-env cluster/runtime_env.yaml -- rlaif train ...`.

The test starts its OWN Ray head (`ray start --head --block`, its own session, free ports, dashboard on 127.0.0.1,
its own --temp-dir and its own auth token) and in the end stops only that head: SIGTERM to the `ray start --block`
process (Ray then drains and stops the processes it started), then SIGKILL for anything left in the head's session
or carrying this head's marker variable (the job's driver runs in a session of its own). Never `ray stop`: that
kills every Ray process of the machine, other people's included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "cluster" / "submit.sh"
VENV_BIN = Path(sys.executable).parent  # the head runs from this environment: jobs get its python and `rlaif`
RAY = shutil.which("ray", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
MARKER = "TEST_CLUSTER_RAY_HEAD"  # set in the head's environment; every process it starts inherits it

HEAD_START_TIMEOUT_S = 120
SUBMIT_TIMEOUT_S = 180
JOB_TIMEOUT_S = 480
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

needs_ray_cli = pytest.mark.skipif(RAY is None or not sys.platform.startswith("linux"),
                                   reason="needs Linux and the `ray` CLI")


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free right now on every interface (Ray binds some of them on 0.0.0.0)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RayHead:
    """A private Ray head on this machine. Start with start(), always call stop() (in a finally)."""

    def __init__(self, num_cpus: int = 8) -> None:
        # Ray's unix sockets live under <temp-dir>/session_<date>_<pid>/sockets/ and must fit in ~107 characters:
        # keep the temp dir short (pytest's tmp_path is too long).
        self.tmp = Path(tempfile.mkdtemp(prefix="rlc-", dir="/tmp"))
        self.token_path = self.tmp / "auth_token"
        self.token = secrets.token_hex(32)
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        self.marker = uuid.uuid4().hex
        (gcs, dashboard, agent_http, agent_grpc, runtime_env_agent, metrics, client_server, node_manager,
         object_manager) = free_ports(9)
        self.gcs_port, self.dashboard_port = gcs, dashboard
        self.address = f"http://127.0.0.1:{dashboard}"
        self.log_path = self.tmp / "head.log"
        self.args = [
            RAY, "start", "--head", "--block", "--disable-usage-stats",
            # Ray turns 127.0.0.1 into the node's routable IP for the GCS and raylet (and binds some ports on all
            # interfaces whatever we pass); the dashboard (job API) stays on loopback. The token guards the rest.
            "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
            "--port", str(gcs), "--dashboard-port", str(dashboard),
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--runtime-env-agent-port", str(runtime_env_agent), "--metrics-export-port", str(metrics),
            "--ray-client-server-port", str(client_server), "--node-manager-port", str(node_manager),
            "--object-manager-port", str(object_manager),
            "--min-worker-port", "0", "--max-worker-port", "0",  # workers: OS-assigned ports, no shared range
            "--num-cpus", str(num_cpus), "--num-gpus", "0", "--object-store-memory", str(2 * 1024**3),
            "--temp-dir", str(self.tmp / "ray"),
        ]
        # The head's environment is what the job's driver and actors inherit. Keep the caller's Ray client settings
        # and the project's RLAIF_/WANDB_/VLLM_ variables out: the job must get those from the runtime env.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "RLAIF_", "WANDB_", "VLLM_"))}
        env.update({
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            # Ray 2.60 token auth, with a token of our own (not ~/.ray/auth_token, which other clusters may use).
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            MARKER: self.marker,
        })
        self.head_env = env
        # What a client of this head needs: the same token (submit.sh would set RAY_AUTH_MODE=token by itself).
        self.client_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.client_env.update({"PATH": env["PATH"], "RAY_AUTH_TOKEN_PATH": str(self.token_path)})
        self.proc: subprocess.Popen | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        log = open(self.log_path, "wb")
        # A session of its own: everything Ray starts (except job drivers, which Ray puts in their own sessions)
        # shares it, so stop() can find it all without touching any other Ray on the machine.
        self.proc = subprocess.Popen(self.args, env=self.head_env, cwd=self.tmp, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited with {self.proc.returncode}:\n{self.head_log()}")
            if "Ray runtime started" in self.head_log():
                try:
                    self.request("GET", "/api/version", timeout=5)
                    return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not come up in {HEAD_START_TIMEOUT_S} s:\n{self.head_log()}")

    def stop(self) -> list[int]:
        """Stop this head and everything it started; return the pids that needed SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` drains (<= 30 s) and stops its processes
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10  # the dashboard's module processes exit ~1 s after the head
        while self.own_pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        killed = self.own_pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.own_pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while self.own_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return killed

    def own_pids(self) -> list[int]:
        """Live processes of this head: in its session, or with its marker in their environment."""
        if self.proc is None:
            return []
        marker = f"{MARKER}={self.marker}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
                if state in (b"Z", b"X"):  # already dead, waiting to be reaped
                    continue
                if os.getsid(pid) == self.proc.pid:
                    pids.append(pid)
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(pid)
            except (OSError, IndexError):  # gone meanwhile, or not ours to read
                continue
        return pids

    # --- job API (HTTP, with the token) ----------------------------------------------------------------------

    def request(self, method: str, path: str, timeout: float = 30):
        req = urllib.request.Request(self.address + path, method=method,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def job_status(self, job_id: str) -> str:
        return self.request("GET", f"/api/jobs/{job_id}")["status"]

    def job_logs(self, job_id: str) -> str:
        try:
            return self.request("GET", f"/api/jobs/{job_id}/logs")["logs"]
        except Exception as exc:  # noqa: BLE001 - only used to explain a failure
            return f"<could not fetch the job's logs: {exc}>"

    def head_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def submit(head: RayHead, job_id: str, *command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    extra = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
    return subprocess.run(
        [str(SUBMIT), "--address", head.address, "--no-wait", "--submission-id", job_id, *extra, "--", *command],
        cwd=REPO, env=head.client_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=SUBMIT_TIMEOUT_S,
    )


def wait_for_job(head: RayHead, job_id: str, timeout: float) -> str:
    deadline, status = time.monotonic() + timeout, "PENDING"
    while time.monotonic() < deadline:
        try:
            status = head.job_status(job_id)
        except (OSError, urllib.error.URLError):
            pass  # a busy dashboard: ask again
        if status in TERMINAL:
            return status
        time.sleep(3)
    return status


def rl_steps_done(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted({r["step"] for r in rows if "time/step" in r})


@pytest.mark.e2e
@pytest.mark.cluster
@needs_ray_cli
def test_debug_run_as_ray_job_on_own_cluster_checkpoints_on_ray_job_stop(tmp_path):
    """Submitted with cluster/submit.sh, the run joins the head's cluster; `ray job stop` (SIGTERM, then SIGKILL
    after RAY_JOB_STOP_WAIT_TIME_S, which cluster/runtime_env.yaml raises from Ray's 3 s) lets it finish the step
    and write a complete checkpoint. With Ray's default the SIGKILL lands mid-step and no checkpoint exists."""
    t0 = time.monotonic()
    out = tmp_path / "run"
    cache = os.environ.get("RLAIF_CACHE") or str(Path(tempfile.gettempdir()) / "rlaif-test-cache")
    job_id = f"rlaif-test-{uuid.uuid4().hex[:8]}"
    head = RayHead(num_cpus=8)
    status, logs, stopped_after = "NOT SUBMITTED", "", []
    try:
        head.start()
        t_head = time.monotonic() - t0
        proc = submit(
            head, job_id,
            "rlaif", "train", "--config", "configs/debug.yaml", f"output_dir={out}", "trainer.steps=50",
            "trainer.progress=false", "trainer.timeout_s=300",
            env={"RLAIF_CACHE": cache, "WANDB_SILENT": "true"},
        )
        assert proc.returncode == 0, f"submit failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline and not rl_steps_done(out):
            status = head.job_status(job_id)
            assert status not in TERMINAL, f"job ended {status} before its first RL step:\n" + \
                head.job_logs(job_id)[-8000:]
            time.sleep(2)
        stopped_after = rl_steps_done(out)
        assert stopped_after, f"no RL step after {JOB_TIMEOUT_S} s:\n{head.job_logs(job_id)[-8000:]}"
        head.request("POST", f"/api/jobs/{job_id}/stop")  # what `ray job stop` does
        status = wait_for_job(head, job_id, 300)
        logs = head.job_logs(job_id)
        print(f"\n[test_cluster] head up in {t_head:.1f} s, stopped after RL step {stopped_after[-1]}, "
              f"job {status} at {time.monotonic() - t0:.1f} s")
    finally:
        if status not in TERMINAL and head.proc is not None:
            try:
                head.request("POST", f"/api/jobs/{job_id}/stop", timeout=10)
            except Exception:  # noqa: BLE001 - the head may be gone; stop() below kills the driver anyway
                pass
        leftovers = head.stop()
        still_alive = head.own_pids()
        head.cleanup()
        print(f"[test_cluster] cluster stopped at {time.monotonic() - t0:.1f} s; "
              f"SIGTERM/SIGKILL needed for {len(leftovers)} leftover process(es)")
    assert not still_alive, f"processes of the test's Ray head survived stop(): {still_alive}"
    assert status == "STOPPED", f"job {job_id} ended {status}; last job logs:\n{logs[-8000:]}"

    # The job joined this cluster (RAY_ADDRESS from `ray job submit`) instead of starting a Ray of its own.
    joined = [line for line in logs.splitlines() if line.startswith("rlaif: Ray: joined the cluster at ")]
    assert joined and joined[0].endswith(f":{head.gcs_port}"), logs[-3000:]
    # Quiet there too: the job's log holds rlaif's lines, the workers' output is in output_dir/logs.
    assert "Initializing a V1 LLM engine" not in logs, logs[-3000:]
    worker_logs = "".join(p.read_text(errors="replace") for p in (out / "logs").glob("worker-*.log"))
    assert ":actor_name:RolloutWorker" in worker_logs and "rollout engine 0 (rl stage): vLLM" in worker_logs

    # SIGTERM: the step in flight finished, a complete checkpoint of it was written, and the log says how to resume.
    steps = rl_steps_done(out)
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last >= stopped_after[-1], steps
    ckpt = out / "checkpoints" / f"step_{last:06d}"
    assert (ckpt / "manifest.json").is_file(), sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert f"rlaif: stopped by SIGTERM after RL step {last}; checkpoint {ckpt}" in logs, logs[-3000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["output_dir"] == str(out) and saved["trainer"]["steps"] == 50


# --- the operator files parse and say what the e2e test cannot exercise (fast; no Ray started) ---------------------


def test_runtime_env_keeps_the_upload_small_and_sets_string_env_vars():
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert set(env) == {"excludes", "env_vars"}  # the working dir comes from --working-dir
    for pattern in (".git/", ".venv/", "runs/", "outputs/", "wandb/", "*.safetensors"):
        assert pattern in env["excludes"]
    assert env["env_vars"]["WANDB_MODE"] == "offline"
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 300  # room for a step and a checkpoint
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_submit_script_is_valid_bash_and_refuses_a_missing_command():
    assert os.access(SUBMIT, os.X_OK)
    subprocess.run(["bash", "-n", str(SUBMIT)], check=True, timeout=30)
    proc = subprocess.run([str(SUBMIT), "--address", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "no command" in proc.stderr


def test_cluster_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "torch" in setup and "[gpu]" in setup
    assert all("RAY_AUTH_MODE=token" in " ".join(config[k]) for k in ("head_start_ray_commands",
                                                                      "worker_start_ray_commands"))


def test_rayjob_manifest_runs_a_gpu_config_with_token_auth():
    job = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].split()[:3] == ["rlaif", "train", "--config"]
    assert spec["entrypoint"].split()[3].endswith("configs/gpu.yaml")
    yaml.safe_load(spec["runtimeEnvYAML"])
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["authOptions"]["mode"] == "token"
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in cluster["workerGroupSpecs"]
            for c in g["template"]["spec"]["containers"]]
    assert gpus and all(gpus)
    # a preempted or deleted pod and `ray job stop` leave time for the step and checkpoint that SIGTERM asks for
    stop_wait = float(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"])
    graces = [g["template"]["spec"]["terminationGracePeriodSeconds"]
              for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]
    assert stop_wait >= 600 and all(grace > stop_wait for grace in graces)
