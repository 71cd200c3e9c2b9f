# syntax=docker/dockerfile:1
# maester bot image (CPU only, slim): the Discord bot, and the trainer for machines without a GPU.
#   docker build -t maester-bot .
#   docker run --rm --init --env-file .env -v maester_checkpoints:/checkpoints:ro maester-bot
#   docker run --rm --init -v maester_checkpoints:/checkpoints --entrypoint python maester-bot -m trainer train
# docker compose runs both (services bot, train-cpu, trainer-cpu); see docs/deployment.md.

FROM python:3.12.13-slim-trixie

# torch's CPU build lives on PyTorch's own index; PyPI's Linux torch is the multi-GB CUDA build.
# pip picks 2.13.0+cpu from there, which satisfies the 2.13.0 pin CI uses. A build argument, so it is
# set only while building and the install command stays the one .ci/run runs.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HOME=/cache/huggingface \
    MAESTER_CHECKPOINT_DIR=/checkpoints \
    MAESTER_STATE_DIR=/state \
    MAESTER_CORPUS=/opt/maester/data/corpus/Game_of_Thrones_Script_MD.csv \
    MAESTER_HEALTH_HOST=0.0.0.0 \
    MAESTER_HEALTH_PORT=8080

# uid/gid 1000: the usual first user on a Linux host, so a bind-mounted ./checkpoints created by that
# user is readable and writable.
RUN groupadd --gid 1000 maester \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash maester \
    && mkdir -p /checkpoints /cache/huggingface /state \
    && chown -R 1000:1000 /checkpoints /cache /state

WORKDIR /opt/maester

# Dependencies first, from the project's own metadata and CI's constraints, so editing the source does
# not reinstall them: an empty package skeleton is enough for pip to resolve pyproject.toml.
COPY pyproject.toml README.md ./
COPY .ci/constraints-cpu.txt .ci/
RUN mkdir trainer bot && touch trainer/__init__.py bot/__init__.py \
    && python -m pip install -c .ci/constraints-cpu.txt . \
    && rm -rf build ./*.egg-info \
    && python -c "import sys, torch; sys.exit(torch.version.cuda is not None and 'torch is a CUDA build')"

COPY trainer/ trainer/
# The corpus, checksum-verified, goes into the image so `train` needs nothing mounted and no download
# at run time. Its own layer before bot/ is copied, so editing the bot does not fetch it again.
# A mirror: --build-arg MAESTER_CORPUS_BASE_URL=https://... (same file paths).
ARG MAESTER_CORPUS_BASE_URL
RUN python -m trainer download-corpus --dest /opt/maester/data/corpus
COPY bot/ bot/
COPY docker/healthcheck.py docker/
RUN python -m pip install --no-deps . \
    && rm -rf build ./*.egg-info

VOLUME ["/checkpoints", "/cache/huggingface", "/state"]
USER 1000:1000
WORKDIR /home/maester
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/maester/docker/healthcheck.py", "bot"]

ENTRYPOINT ["python", "-m", "bot"]
