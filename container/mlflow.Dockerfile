# MLflow tracking server with the Postgres and S3 (MinIO) clients it needs, and its basic-auth app
# (Flask-WTF is what `mlflow[auth]` adds). Exact versions: a rebuild installs the same server.
FROM python:3.11.13-slim-bookworm
RUN pip install --no-cache-dir mlflow==3.17.2 Flask-WTF==1.3.0 psycopg2-binary==2.9.10 boto3==1.38.23
COPY mlflow/basic_auth.ini /etc/mlflow/basic_auth.ini
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini
EXPOSE 5000
