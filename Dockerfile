# `davit serve` on the CPU.
#   docker build -t davit-serve .
#   docker run --rm -p 8000:8000 davit-serve                          # tiny, random weights
#   docker run --rm -p 8000:8000 -e DAVIT_SERVE_TOKEN=secret davit-serve davit-tiny_3rdparty_in1k
# Inside the container the server listens on 0.0.0.0 (so that -p can reach it): set a token
# (DAVIT_SERVE_TOKEN) before publishing the port beyond this machine.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# PyTorch's CPU wheels: no CUDA libraries in the image
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision

COPY pyproject.toml README.md LICENSE NOTICE ./
COPY src ./src
RUN pip install '.[serve]' && rm -rf /app/src

RUN useradd --create-home davit
USER davit
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"

ENTRYPOINT ["davit", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["tiny", "--random-weights"]
