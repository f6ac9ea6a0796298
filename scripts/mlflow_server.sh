#!/usr/bin/env bash
# The cluster's MLflow tracking server, authenticated: MLflow's basic-auth app, in the foreground.
#
#   scripts/mlflow_server.sh STATE_DIR [mlflow server options ...]
#   e.g. scripts/mlflow_server.sh /mlflow --artifacts-destination s3://BUCKET/mlflow-artifacts \
#            --host 0.0.0.0 --port 5000 --workers 2
#
# STATE_DIR (absolute) holds the run store (mlflow.db), the user store (basic_auth.db), the auth config
# written here (basic_auth.ini, no secret in it) and the server's CSRF key (flask_secret_key, made on the
# first start). The admin account is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from the
# environment: the variables every MLflow client reads, so one secret file (~/.yxanul/mlflow.env,
# docs/cluster.md) serves the server, the Ray workers and your laptop, and no credential is ever on a
# command line or in the repository. MLflow creates the admin user on the first start only; later starts
# keep the stored password (to rotate it, see docs/cluster.md "Security model"). Used by cluster.yaml,
# k8s/raycluster.yaml and the integration tests (tests/integration/conftest.py, mlflow_auth_server).
set -euo pipefail
state=${1:?usage: scripts/mlflow_server.sh STATE_DIR [mlflow server options ...]}
shift
if [[ $state != /* ]]; then
    echo "error: STATE_DIR must be an absolute path, got '$state'" >&2
    exit 2
fi
if [[ -z ${MLFLOW_TRACKING_USERNAME:-} || -z ${MLFLOW_TRACKING_PASSWORD:-} ]]; then
    echo "error: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the MLflow admin account, e.g." \
         "\`set -a; . ~/.yxanul/mlflow.env; set +a\`) before starting the MLflow server" >&2
    exit 2
fi
mkdir -p "$state"
umask 077
# default_permission applies to users an admin adds later: they may read every experiment.
# auth_cache_ttl_seconds: a password check (scrypt) costs ~0.2 s of CPU, on every request of every Train
# worker; cached for 60 s per server worker, so a rotated or deleted credential may work up to 60 s longer.
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
# MLflow 3.17 bootstraps the admin from these (environment, not the ini: the ini stays secret-free).
export MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_TRACKING_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD
unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
exec mlflow server --app-name basic-auth --backend-store-uri "sqlite:///$state/mlflow.db" "$@"
