# The sealtrail image used by compose.yaml and the Kubernetes manifests in docs/DEPLOY.md.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 sealtrail
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sealtrail ./sealtrail
COPY producers ./producers
COPY processors ./processors
COPY schemas ./schemas
RUN pip install --no-cache-dir .
USER sealtrail
ENV SEALTRAIL_HOME=/home/sealtrail/.sealtrail
ENTRYPOINT ["sealtrail"]
