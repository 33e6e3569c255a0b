#!/bin/sh
# Creates the stack's databases, owned by POSTGRES_USER: one per component, so each runs its own
# schema migrations (MLflow tracking, MLflow auth, Prefect, the Feast SQL registry).
# The postgres image runs this once, on an empty data volume, after it created POSTGRES_USER and
# POSTGRES_DB; tests/integration/compose_native.py runs it the same way against a native cluster.
set -eu
for database in ${MLSTACK_DATABASES:?list the databases to create}; do
    echo "creating database ${database}"
    psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
        -c "CREATE DATABASE \"${database}\" OWNER \"${POSTGRES_USER}\""
done
