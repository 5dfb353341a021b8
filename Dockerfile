# vault-zpa daemon image: slim, non-root, no secret baked in (all credentials come from the
# environment or mounted files at run time).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vault_zpa ./vault_zpa
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin vault-zpa
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
EXPOSE 9850
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9850/healthz', timeout=2)"]
ENTRYPOINT ["vault-zpa"]
CMD ["daemon", "--listen", "0.0.0.0:9850"]
