# syntax=docker/dockerfile:1
# The inspector (and the operator console) on NVIDIA GPUs: the `inspector` and `console` extras plus torch,
# torchvision (nvJPEG) and Triton for the device frame path. CUDA 13 and cuDNN come as NVIDIA's pip wheels
# (pinned by constraints.txt, as torch installs them); the driver comes from the host through the NVIDIA
# Container Toolkit (compose.gpu.yaml reserves the GPU).
#   docker build -f deploy/docker/inspector-gpu.Dockerfile -t edge-inspect/inspector:gpu .     (from the root)
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/edge-inspect
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edge_inspect ./edge_inspect
RUN /opt/edge-inspect/bin/pip install --constraint constraints.txt ".[inspector,console]" torch torchvision triton

FROM python:3.11-slim-bookworm
COPY --from=build /opt/edge-inspect /opt/edge-inspect
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/edge-inspect --create-home edge-inspect \
    && install -d -o edge-inspect -g edge-inspect /run/edge-inspect /etc/edge-inspect/console
# ONNX Runtime's CUDA provider loads libcudart, libcublas and libcudnn by name: point it at the pip wheels'.
# Which GPUs the container sees is the runtime's to say (compose.gpu.yaml reserves one); it needs the
# driver's compute libraries and NVML (utility, for the GPU metrics).
ENV PATH=/opt/edge-inspect/bin:$PATH PYTHONUNBUFFERED=1 \
    LD_LIBRARY_PATH=/opt/edge-inspect/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/edge-inspect/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER edge-inspect
WORKDIR /var/lib/edge-inspect
EXPOSE 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/readyz', timeout=2)"]
ENTRYPOINT ["edge-inspect"]
CMD ["serve", "--config", "/etc/edge-inspect/line.toml"]
