#!/usr/bin/env bash
# Submit an rlaif run to a Ray cluster as a Ray job (Ray 2.60, `ray[default]`).
#
#   cluster/submit.sh [--address http://HEAD:8265] [--runtime-env FILE] [--env KEY[=VALUE]]... \
#       [other `ray job submit` options, e.g. --no-wait, --submission-id ID] \
#       -- rlaif train --config configs/xxx.yaml key=value ...
#
# It runs, from the repository root:
#   ray job submit [--address URL] --working-dir <repo> --runtime-env cluster/runtime_env.yaml [...] -- COMMAND
# The repository is uploaded as the job's working dir (excludes in cluster/runtime_env.yaml keep it < 1 MiB), so
# relative paths such as configs/xxx.yaml resolve on the cluster. Use absolute (ideally shared) paths for output_dir.
#
#   --address URL         the head's dashboard (job API), http://HOST:8265. Default: what `ray job submit` finds in
#                         RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, then http://127.0.0.1:8265. Not the GCS port 6379.
#   --runtime-env FILE    default cluster/runtime_env.yaml
#   --env KEY=VALUE       add/override an env var of the job (driver and all actors), e.g. --env RLAIF_CACHE=/shared.
#   --env KEY             the same, with the value of KEY in your shell (e.g. --env HF_HUB_OFFLINE).
#                         Secrets are refused (names with KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL): Ray's agent
#                         writes every runtime_env verbatim into runtime_env_agent.log, readable by every user of the
#                         node, and the dashboard shows it. Give the nodes their secrets instead: export them before
#                         `ray start` (the job inherits the node's environment), or log in on each node
#                         (`wandb login`: ~/.netrc; `hf auth login`: the Hub token file), both private to the user.
#   anything else before `--` is passed to `ray job submit` unchanged. Without --no-wait the command follows the
#   job's logs and exits non-zero if the job fails. Ctrl-C does not stop the job: `ray job stop <id> --address URL`.
#
# Authentication (Ray 2.60 token auth; https://docs.ray.io/en/latest/ray-security/token-auth.html). Verified here:
#   * A head started by `ray start --head` or `ray.init()` turns token auth on when RAY_AUTH_MODE is unset and a token
#     exists (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN); `ray.init()` even generates one. Its job API
#     then rejects every request without the token.
#   * The `ray job submit` client, however, only sends the token when RAY_AUTH_MODE=token is set in ITS environment:
#     unset, it fails with "AuthenticationError: Authentication required: Unauthorized: Missing authentication token
#     ... Note: RAY_AUTH_MODE is currently 'disabled'", even with the right token in ~/.ray/auth_token.
#     A wrong token fails with "Forbidden: Invalid authentication token".
#   * A client with RAY_AUTH_MODE=token and any token also works against a head without auth (the header is ignored).
#   So this script sets RAY_AUTH_MODE=token when it is unset and a token is available (RAY_AUTH_TOKEN,
#   RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); an explicit RAY_AUTH_MODE is always respected. For a remote cluster copy
#   the head's token (`ray get-auth-token` on the head prints it) to ~/.ray/auth_token or export RAY_AUTH_TOKEN.
#   The alternative, RAY_AUTH_MODE=disabled for BOTH the head (`RAY_AUTH_MODE=disabled ray start --head ...`) and the
#   client, also works, but lets anyone who reaches the ports run code: only on loopback / a trusted private network.
#   The job's driver and actors inherit the head's auth settings; nothing needs to be passed into the runtime env.
set -euo pipefail

die() { echo "cluster/submit.sh: $*" >&2; exit 2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runtime_env="$repo/cluster/runtime_env.yaml"
address=()
envs=()
passthrough=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --) shift; break ;;
    -h|--help) sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --address) [[ $# -ge 2 ]] || die "--address needs a value"; address=(--address "$2"); shift 2 ;;
    --address=*) address=(--address "${1#*=}"); shift ;;
    --runtime-env) [[ $# -ge 2 ]] || die "--runtime-env needs a file"; runtime_env="$2"; shift 2 ;;
    --runtime-env=*) runtime_env="${1#*=}"; shift ;;
    --env) [[ $# -ge 2 ]] || die "--env needs KEY=VALUE or KEY"; envs+=("$2"); shift 2 ;;
    --env=*) envs+=("${1#*=}"); shift ;;
    --working-dir*|--runtime-env-json*) die "$1 is set by this script (working dir: the repository; use --env)" ;;
    *) passthrough+=("$1"); shift ;;
  esac
done
[[ $# -gt 0 ]] || die "no command; usage: cluster/submit.sh [--address URL] [--env K=V]... -- rlaif train --config ..."
[[ -f "$runtime_env" ]] || die "runtime env file not found: $runtime_env"
command -v ray >/dev/null || die "'ray' not found on PATH (pip install 'ray[default]==2.60.0', or activate the venv)"

if [[ -z "${RAY_AUTH_MODE:-}" ]] &&
   [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -f "$HOME/.ray/auth_token" ]]; then
  export RAY_AUTH_MODE=token
fi

runtime_args=(--runtime-env "$runtime_env")
if [[ ${#envs[@]} -gt 0 ]]; then
  # Merge the --env values into the runtime env; `ray job submit` takes either --runtime-env or --runtime-env-json.
  # Use the Python that runs `ray` (it has PyYAML, a Ray dependency).
  py="$(dirname "$(command -v ray)")/python"
  [[ -x "$py" ]] || py="$(command -v python3 || command -v python)"
  json="$("$py" - "$runtime_env" "${envs[@]}" <<'PY'
import json, os, sys
import yaml
with open(sys.argv[1]) as f:
    env = yaml.safe_load(f) or {}
env_vars = {k: str(v) for k, v in (env.get("env_vars") or {}).items()}
for item in sys.argv[2:]:
    key, sep, value = item.partition("=")
    if not key:
        sys.exit(f"cluster/submit.sh: bad --env {item!r}: expected KEY=VALUE or KEY")
    if any(word in key.upper() for word in ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")):
        sys.exit(f"cluster/submit.sh: --env {key}: refused, it looks like a secret, and Ray writes the runtime_env "
                 f"verbatim into a log every user of the node can read. Export {key} before `ray start` on the "
                 f"nodes, or log in there (wandb login, hf auth login)")
    if not sep:
        if key not in os.environ:
            sys.exit(f"cluster/submit.sh: --env {key}: {key} is not set in this shell")
        value = os.environ[key]
    env_vars[key] = value
env["env_vars"] = env_vars
print(json.dumps(env))
PY
)"
  runtime_args=(--runtime-env-json "$json")
fi

cd "$repo"
exec ray job submit ${address[@]+"${address[@]}"} --working-dir "$repo" "${runtime_args[@]}" \
  ${passthrough[@]+"${passthrough[@]}"} -- "$@"
