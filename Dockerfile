# One image for every Swapline process: the API (gunicorn), Celery workers and Flower.
# The compose file picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The embedding model ships inside a Python package; nothing may reach a model hub at run time.
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /app

# CPU-only torch first, from PyTorch's CPU index: the default index would pull a multi-GB CUDA build.
# Pinned to the version pyproject.toml requires; its own layer, so code changes don't re-download it.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Every other dependency from the lock, hash-checked (requirements.lock; README "Security" says how to
# regenerate it). torch, installed above, already satisfies the lock's pin, so it is not fetched again.
# Its own layer too: it changes only when the lock does.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY shared ./shared
COPY workers ./workers
COPY webapp ./webapp
# The dependencies are all in place: --no-deps, so nothing unlocked slips in.
RUN pip install --no-deps .

# Not root: nothing here needs it (Celery warns when it runs as root), and the shared data volume
# should not fill with root-owned files.
RUN useradd --create-home --uid 10001 swapline \
    && mkdir -p /data \
    && chown swapline:swapline /data
USER swapline

ENV SWAPLINE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000 5555

# Worker class, threads and timeouts: webapp/api/gunicorn_conf.py.
CMD ["gunicorn", "-c", "python:webapp.api.gunicorn_conf", "--bind", "0.0.0.0:8000", "--workers", "2", \
     "webapp:create_app()"]
