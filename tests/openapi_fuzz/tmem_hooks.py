"""Schemathesis hooks for fuzzing tmem's REST API (tests/all/openapi_fuzz.rs runs it).

Loaded through SCHEMATHESIS_HOOKS=tmem_hooks. Three things:

1. A serializer for `application/wasm` (plugin uploads are raw bytes, like octet-stream).
2. `before_call`, which keeps what a request may do on the machine within the test and gives
   the stateful phase something to work with:
   - an attach request's `backing` and `socket` paths are moved into TMEM_FUZZ_DIR (the
     host has no allowed-paths option yet: as root, a fuzzed path could truncate or zero any
     file or block device), its size capped at 64 MiB (the backing file is written whole at
     attach), a `listen` beyond loopback with `allow_remote` moved to loopback, and `ublk`
     turned into `nbd` on a machine that has the ublk driver (a fuzzer makes no kernel devices);
   - a schema-valid pool config gets a chain of bundled plugins (the schema cannot name the
     registered plugins, so a generated chain would name none and no pool would ever exist);
   - a schema-valid page gets the pool's page size (which the schema cannot know).
   Schemathesis revalidates a case a hook changed, so a negative case made valid is judged as
   the valid case it became.
3. The check `refused_only_for_what_the_schema_cannot_state`. Schemathesis's own
   `positive_data_acceptance` cannot tell a schema gap from a refusal that depends on state
   (a plugin that is not registered, a pool's page size, the machine's kernel), so the run's
   config lets it accept 400 — and this check takes over: a schema-valid request may be
   refused with 400 only with a code (and, for the broad codes, a reason) listed here for its
   operation. Anything else is a rule missing from the schema.
"""

import hashlib
import json
import os
import re
import urllib.request

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")

FUZZ_DIR = os.environ.get("TMEM_FUZZ_DIR", "/nonexistent-tmem-fuzz-dir")
BASE_URL = os.environ.get("TMEM_FUZZ_URL", "")
TOKEN = os.environ.get("TMEM_FUZZ_TOKEN", "")
MAX_DEVICE_BYTES = 64 << 20
CHAINS = [
    [{"plugin": "ram"}],
    [{"plugin": "zstd"}, {"plugin": "ram"}],
    [{"plugin": "lz4"}, {"plugin": "ram"}],
]
PERSISTENT_CHAIN = [{"plugin": "sled", "grants": ["storage"]}]

# Refusals of a pool's settings that depend on its plugins (what they are, what their manifests
# accept) or on the pool as it is: never on one field alone, so the schema cannot state them.
CHAIN_REASONS = [
    r"^plugin '",  # a config its manifest refuses, a grant it does not use or needs, refused or faulted at start
    r"^config for plugin '",
    r"^'[^']*': ",  # a secret given as "<secret>" after its endpoints changed
    r"^'[^']*' is a store, so it must be the last link",
    r"must end with a store",
    r"^max_bytes cannot apply to a remote store",
    r"^durability and flush_interval_ms apply only to persistent pools",
    r"^flush_interval_ms applies only to periodic durability",
    r"^a persistent pool .* needs a host with a data dir",
    r"^pool '[^']*' is not persistent",
    r"^a hot swap keeps the chain's",
    r"^a hot swap ",
    r"endpoint",  # the network capability's endpoints (a remote store's config)
]
ANY = [r""]

STATE_DEPENDENT = {
    "POST /api/v1/pools": {
        "unknown_plugin": ANY,
        "unknown_plugin_version": ANY,
        "invalid_pool": CHAIN_REASONS,
    },
    "PATCH /api/v1/pools/{name}": {
        "unknown_plugin": ANY,
        "unknown_plugin_version": ANY,
        "invalid_pool": CHAIN_REASONS,
    },
    # The pool's page size.
    "PUT /api/v1/pools/{name}/pages/{offset}": {"wrong_page_size": ANY},
    # Not a Wasm module that is a tmem plugin: no schema says that.
    "POST /api/v1/plugins": {"invalid_plugin": ANY},
    "POST /api/v1/pools/{name}/frontends": {
        "invalid_frontend": [
            r"multiple of",  # the pool's page size
            r"-byte pages; a block device needs pages of at most",  # the pool's page size
            r"is not a loopback address",  # an address's kind, with allow_remote false
            r"is not an IP address and port",  # an IPv6 text the pattern lets through
            r"^cannot listen on",  # the machine's addresses
        ],
        # The machine's kernel has no ublk driver.
        "unsupported_frontend": [r"ublk"],
    },
}


def _pool_page_size(name):
    url = f"{BASE_URL}/api/v1/pools/{urllib.request.quote(name, safe='')}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)["page_size"]
    except Exception:
        return None


def _confined(path, prefix, suffix=""):
    digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return os.path.join(FUZZ_DIR, f"{prefix}-{digest}{suffix}")


def _is_chain(backends):
    return isinstance(backends, list) and all(
        isinstance(b, dict) and isinstance(b.get("plugin"), str) for b in backends
    )


@schemathesis.hook
def before_call(ctx, case, kwargs):
    label = f"{case.operation.method.upper()} {case.operation.path}"
    body = case.body
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if label.endswith("/pools/{name}/frontends") and case.operation.method.upper() == "POST" and isinstance(body, dict):
        if isinstance(body.get("backing"), str):
            body["backing"] = _confined(body["backing"], "backing")
        if isinstance(body.get("socket"), str):
            body["socket"] = _confined(body["socket"], "s", ".sock")
        size = body.get("size_bytes")
        if isinstance(size, (int, float)) and not isinstance(size, bool) and size > MAX_DEVICE_BYTES:
            body["size_bytes"] = 4096 * (1 + int(size) % (MAX_DEVICE_BYTES // 4096))
        listen = body.get("listen")
        if isinstance(listen, str) and body.get("allow_remote") is True:
            port = listen.rsplit(":", 1)[-1]
            body["listen"] = f"127.0.0.1:{port}" if port.isdigit() else "127.0.0.1:0"
        if body.get("kind") == "ublk" and os.path.exists("/dev/ublk-control"):
            body["kind"] = "nbd"
    elif label.endswith("/api/v1/pools") and case.operation.method.upper() == "POST" and isinstance(body, dict):
        if positive and _is_chain(body.get("backends")):
            name = str(body.get("name", ""))
            digest = int(hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest(), 16)
            persistent = "durability" in body or "flush_interval_ms" in body
            chain = PERSISTENT_CHAIN if persistent else CHAINS[digest % len(CHAINS)]
            body["backends"] = [dict(link) for link in chain]
    elif label.endswith("/pages/{offset}") and case.operation.method.upper() == "PUT":
        if positive and isinstance(body, (bytes, bytearray)) and isinstance(case.path_parameters, dict):
            name = case.path_parameters.get("name")
            size = _pool_page_size(name) if isinstance(name, str) else None
            if size:
                data = bytes(body) or b"\0"
                case.body = (data * (size // len(data) + 1))[:size]


@schemathesis.check
def refused_only_for_what_the_schema_cannot_state(ctx, response, case):
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    label = f"{case.operation.method.upper()} {case.operation.path}"
    try:
        error = json.loads(response.content)["error"]
        code, message = error["code"], error["message"]
    except Exception:
        raise AssertionError(f"a 400 without the API's error body: {response.content[:200]!r}")
    reasons = STATE_DEPENDENT.get(label, {}).get(code)
    if reasons is None or not any(re.search(r, message) for r in reasons):
        raise AssertionError(
            f"a schema-valid request was refused with 400 `{code}` ({message}): "
            "a rule the schema could state is missing from it"
        )
    return None
