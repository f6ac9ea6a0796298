# Sourced by the GPU-machine scripts (device_env.sh, gpu_check.sh, gpu_multi.sh), after PYTHONPATH: Python bytecode
# for the packages the jobs import, written once per machine. The kit installs into /tmp/site without it (pip
# --no-compile), and the scripts used to set PYTHONDONTWRITEBYTECODE=1, so every process on the GPU machine (the
# sweep driver, each Tune trial process, Ray's own) compiled Ray, MLflow, SQLAlchemy, pydantic, ... from source at
# import: on the 2-core CPU VM importing mlflow + ray.tune took 3.3-4.1 s against 1.7-2.0 s with bytecode
# (2026-12-07), and a user's pip install has it. The image's torch (and triton) get it too where they lack it
# (compileall only writes what is missing or stale). Bytecode of the repository's own modules goes to __pycache__
# (git-ignored), as everywhere.
unset PYTHONDONTWRITEBYTECODE
if [ -d /tmp/site ] && [ ! -e /tmp/site/.bytecode_ok ]; then
    _began=$(date +%s)
    _dirs=(/tmp/site)
    for _pkg in torch triton; do
        _dir=$(${PYTHON:-python3} -c "import importlib.util as u, os; s = u.find_spec('$_pkg'); print(os.path.dirname(s.origin) if s and s.origin else '')" 2>/dev/null)
        [ -n "$_dir" ] && [ -w "$_dir" ] && _dirs+=("$_dir")
    done
    ${PYTHON:-python3} -m compileall -q -j 0 "${_dirs[@]}" > /dev/null 2>&1
    touch /tmp/site/.bytecode_ok
    echo "bytecode for ${_dirs[*]}: $(( $(date +%s) - _began )) s (once per machine)"
    unset _began _dirs _pkg _dir
fi
