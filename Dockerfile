# jbot worker image: CPU PyTorch, then jbot installed from its wheel (non-editable: the configs and sweep spaces
# are package data). GPU hosts: build FROM a CUDA PyTorch image.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md /tmp/jbot-src/
COPY jbot /tmp/jbot-src/jbot
RUN pip install "/tmp/jbot-src[generate,jetclass,s3]" && rm -rf /tmp/jbot-src
# stores a command makes without a server (mlruns/, sweeps/) go under the working folder
WORKDIR /work
ENTRYPOINT ["jbot"]
CMD ["--help"]
