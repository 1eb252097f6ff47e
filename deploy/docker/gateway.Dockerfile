# syntax=docker/dockerfile:1
# The camera gateway: numpy, OpenCV (headless), pyzmq and msgspec only (`pip install .`, no extra): no
# torch, no ONNX Runtime, so it fits small line-side machines.
#   docker build -f deploy/docker/gateway.Dockerfile -t edge-inspect/gateway .     (from the repository root)
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/edge-inspect
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edge_inspect ./edge_inspect
# constraints.txt pins every dependency to the versions the tests ran with.
RUN /opt/edge-inspect/bin/pip install --constraint constraints.txt .

FROM python:3.11-slim-bookworm
COPY --from=build /opt/edge-inspect /opt/edge-inspect
# A fixed uid, the same in every image, so that the shared volumes (the ipc sockets, the replay journal)
# belong to one user; the directories exist here so that new named volumes take their ownership.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/edge-inspect-camera --create-home edge-inspect \
    && install -d -o edge-inspect -g edge-inspect /run/edge-inspect
ENV PATH=/opt/edge-inspect/bin:$PATH PYTHONUNBUFFERED=1
USER edge-inspect
WORKDIR /var/lib/edge-inspect-camera
ENTRYPOINT ["edge-inspect"]
CMD ["camera", "synthetic", "--endpoint", "tcp://127.0.0.1:5555", "--camera-id", "cam-1"]
