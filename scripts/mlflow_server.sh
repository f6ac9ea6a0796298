#!/usr/bin/env bash
# The cluster's MLflow tracking server, authenticated: MLflow's basic-auth app, in the foreground.
#
#   scripts/mlflow_server.sh STATE_DIR [mlflow server options ...]
#   e.g. scripts/mlflow_server.sh /mlflow --artifacts-destination s3://BUCKET/mlflow-artifacts \
#            --host 0.0.0.0 --port 5000 --workers 2
#
# Two accounts, least privilege (docs/cluster.md, "Security model"):
# - the jobs' account, MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from the environment (the variables
#   every MLflow client reads; ~/.yxanul/mlflow.env, which every node and your laptop have). Not an admin: it
#   may create experiments (and manages those it created), reads the others, and writes to an experiment of
#   another account only where an admin gave it EDIT permission.
# - the admin, STATE_DIR/admin.env (MLFLOW_AUTH_ADMIN_USERNAME=... / MLFLOW_AUTH_ADMIN_PASSWORD=..., mode 0600),
#   made here with a random password on the first start. It stays in STATE_DIR, on the machine that runs this
#   server: no Ray process and no other node ever has it.
# Both files are authoritative: each start creates a missing account and sets the stored password of both to
# the one in its file, so rotating a password is editing the file and restarting this server.
# STATE_DIR (absolute) also holds the run store (mlflow.db), the user store (basic_auth.db), the auth config
# written here (basic_auth.ini, no secret in it) and the server's CSRF key (flask_secret_key, made once).
# No credential is ever on a command line or in the repository. Used by cluster.yaml, k8s/raycluster.yaml and
# the integration tests (tests/integration/conftest.py, mlflow_auth_server).
set -euo pipefail
state=${1:?usage: scripts/mlflow_server.sh STATE_DIR [mlflow server options ...]}
shift
if [[ $state != /* ]]; then
    echo "error: STATE_DIR must be an absolute path, got '$state'" >&2
    exit 2
fi
if [[ -z ${MLFLOW_TRACKING_USERNAME:-} || -z ${MLFLOW_TRACKING_PASSWORD:-} ]]; then
    echo "error: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the jobs' MLflow account, e.g." \
         "\`set -a; . ~/.yxanul/mlflow.env; set +a\`) before starting the MLflow server" >&2
    exit 2
fi
umask 077
mkdir -p "$state"
chmod 700 "$state"
# default_permission applies to accounts on experiments nobody gave them a permission on: they may read them.
# auth_cache_ttl_seconds: a password check (scrypt) costs ~0.2 s of CPU, on every request of every Train
# worker; cached for 60 s per server worker (a password changed through the API is dropped at once by the
# worker that handled the change, by the others after up to 60 s).
cat > "$state/basic_auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$state/basic_auth.db
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
EOF
export MLFLOW_AUTH_CONFIG_PATH=$state/basic_auth.ini
# The key that signs the UI's CSRF tokens: made once per server, kept beside its stores (never shared).
[[ -s $state/flask_secret_key ]] || od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$state/flask_secret_key"
MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$state/flask_secret_key")
export MLFLOW_FLASK_SERVER_SECRET_KEY
if [[ ! -s $state/admin.env ]]; then
    { echo "MLFLOW_AUTH_ADMIN_USERNAME=yxanul-admin"
      echo "MLFLOW_AUTH_ADMIN_PASSWORD=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"; } > "$state/admin.env"
fi
chmod 600 "$state/admin.env"
set -a
. "$state/admin.env"
set +a
# Both accounts in the user store, with the passwords of their files (passwords through the environment only).
python - <<'EOF'
import os, sys

from mlflow.server.auth.config import read_auth_config
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

store = SqlAlchemyStore()
store.init_db(read_auth_config().database_uri)
accounts = [(os.environ["MLFLOW_AUTH_ADMIN_USERNAME"], os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"], True),
            (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"], False)]
if accounts[0][0] == accounts[1][0]:
    sys.exit(f"error: MLFLOW_TRACKING_USERNAME={accounts[1][0]} is the admin account of {os.environ['MLFLOW_AUTH_CONFIG_PATH']}"
             f"; give the jobs an account of their own (docs/cluster.md, Security model)")
for username, password, admin in accounts:
    try:
        if not store.has_user(username):
            store.create_user(username, password, is_admin=admin)
        elif not store.authenticate_user(username, password):
            store.update_user(username, password)  # the file's password wins
        if store.get_user(username).is_admin != admin:
            store.update_user(username, is_admin=admin)
    except Exception as exc:  # e.g. MLflow's password rules: one line, no password in it
        sys.exit(f"error: MLflow account {username!r}: {str(exc).splitlines()[0]}")
EOF
# The server needs the admin's name (it checks the account exists), not its password, and no jobs' account.
unset MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
exec mlflow server --app-name basic-auth --backend-store-uri "sqlite:///$state/mlflow.db" "$@"
