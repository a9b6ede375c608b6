# MLflow tracking server with the Postgres and S3 (MinIO) clients it needs.
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.10 boto3==1.38.23
EXPOSE 5000
