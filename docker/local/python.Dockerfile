# A stand-in for python:3.11-slim, built from Debian's packages on a machine that cannot
# pull from an image registry (scripts/compose-test.sh builds it). Debian's Python 3.11 in a
# virtualenv at /opt/venv, first on PATH, so `pip install` works as in the official image.
# Build context: a directory holding ca-bundle.crt, the CA bundle pip trusts on this host.
ARG DEBIAN_IMAGE=recsys-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY ca-bundle.crt /etc/ssl/certs/host-ca-bundle.crt
ENV PATH=/opt/venv/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1
CMD ["python3"]
