# syntax=docker/dockerfile:1
# The inspector (and the operator console) on CPUs: the `inspector` and `console` extras, ONNX Runtime on
# its CPU provider, the host frame path (OpenCV and numpy). No torch.
#   docker build -f deploy/docker/inspector-cpu.Dockerfile -t edge-inspect/inspector:cpu .     (from the root)
# The `inspector` extra pins onnxruntime-gpu, whose wheel also carries the CPU provider used here.
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/edge-inspect
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edge_inspect ./edge_inspect
RUN /opt/edge-inspect/bin/pip install --constraint constraints.txt ".[inspector,console]"

FROM python:3.11-slim-bookworm
COPY --from=build /opt/edge-inspect /opt/edge-inspect
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/edge-inspect --create-home edge-inspect \
    && install -d -o edge-inspect -g edge-inspect /run/edge-inspect /etc/edge-inspect/console
ENV PATH=/opt/edge-inspect/bin:$PATH PYTHONUNBUFFERED=1
USER edge-inspect
WORKDIR /var/lib/edge-inspect
# 9108: /metrics, /healthz, /readyz ([metrics] port in the config).
EXPOSE 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/readyz', timeout=2)"]
ENTRYPOINT ["edge-inspect"]
CMD ["serve", "--config", "/etc/edge-inspect/line.toml"]
