# jbot worker image: CPU PyTorch, jbot with the generate extra. GPU hosts: build FROM a CUDA PyTorch image.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /opt/jbot
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY jbot ./jbot
COPY configs ./configs
COPY sweeps/*.yaml ./sweeps/
RUN pip install ".[generate]"
ENTRYPOINT ["jbot"]
CMD ["--help"]
