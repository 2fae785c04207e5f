"""Schemathesis hooks for fuzzing tmem's REST API (tests/all/openapi_fuzz.rs runs it).

Loaded through SCHEMATHESIS_HOOKS=tmem_hooks. Four things:

1. A serializer for `application/wasm` (plugin uploads are raw bytes, like octet-stream).
2. `before_call`, which keeps what a request may do on the machine within the test and gives
   the stateful phase something to work with:
   - an attach request's `backing` and `socket` paths are moved into TMEM_FUZZ_DIR, the one
     path the host allows besides its data dir (`--allow-path`: it refuses anything else
     with 403, but a refused attach tests little), its size capped at 64 MiB (the backing file is written whole at
     attach), a `listen` beyond loopback with `allow_remote` moved to loopback, and `ublk`
     turned into `nbd` on a machine that has the ublk driver (a fuzzer makes no kernel devices);
   - a schema-valid pool config gets a chain of bundled plugins (the schema cannot name the
     registered plugins, so a generated chain would name none and no pool would ever exist);
   - a schema-valid page gets the pool's page size (which the schema cannot know);
   - every other schema-valid request of an operation that needs something to exist is aimed
     at something that does (`_steer`): an operation on a pool at an existing pool, a stored page
     loaded and invalidated, an attached device detached, a token made revoked, a real plugin
     module uploaded and an uploaded plugin removed (TMEM_FUZZ_PLUGIN names the module). Part of the time (and
     always when the fuzzer made none) the hooks make the thing first, as a client would:
     a pool, a page, a device, an uploaded plugin (the fuzzer's own go stale through its
     invalidations, shrinks and deletions).
   Schemathesis revalidates a case a hook changed, so a negative case made valid is judged as
   the valid case it became.
3. The check `refused_only_for_what_the_schema_cannot_state`. Schemathesis's own
   `positive_data_acceptance` cannot tell a schema gap from a refusal that depends on state
   (a plugin that is not registered, a pool's page size, the machine's kernel), so the run's
   config lets it accept 400 — and this check takes over: a schema-valid request may be
   refused with 400 only with a code (and, for the broad codes, a reason) listed here for its
   operation. Anything else is a rule missing from the schema.
4. `after_call`, which writes every request's operation and status to TMEM_FUZZ_CALLS, so the
   test can check that the run reached what it means to test (pools created, pages stored and
   loaded, devices attached) instead of only the 404s of a fuzzer that never found a pool.
"""

import hashlib
import json
import os
import re
import urllib.request

import schemathesis
from schemathesis.core.parameters import ParameterLocation

schemathesis.serializer.alias("application/wasm", "application/octet-stream")

FUZZ_DIR = os.environ.get("TMEM_FUZZ_DIR", "/nonexistent-tmem-fuzz-dir")
BASE_URL = os.environ.get("TMEM_FUZZ_URL", "")
TOKEN = os.environ.get("TMEM_FUZZ_TOKEN", "")
CALL_LOG = os.environ.get("TMEM_FUZZ_CALLS", "")
PLUGIN = os.environ.get("TMEM_FUZZ_PLUGIN", "")
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
TIER_REASONS = [
    r"is not a pool; create it first",
    r"cannot be its own lower tier",
    r"-byte pages, but this pool has",
    r"is already the lower tier of pool",
    r"has connected frontends",
    r"holds pages; a new lower tier must be empty",
    r"tiers cannot form a cycle",
    r"so its lower tier must be too",
    r"is writethrough \(it may drop pages\)",
]

STATE_DEPENDENT = {
    "POST /api/v1/pools": {
        "unknown_plugin": ANY,
        "unknown_plugin_version": ANY,
        "invalid_pool": CHAIN_REASONS,
        # The lower tier as it is (exists, owned, empty, persistent, its page size), or the
        # pool's own name: never one field alone.
        "invalid_tier": TIER_REASONS,
    },
    "PATCH /api/v1/pools/{name}": {
        "unknown_plugin": ANY,
        "unknown_plugin_version": ANY,
        "invalid_pool": CHAIN_REASONS,
        # A tier added or moved at run time: the lower pool as it is, as at creation.
        "invalid_tier": TIER_REASONS,
    },
    # The governor's watermarks against each other (one given: against the other's current
    # value): JSON Schema cannot compare two numbers.
    "PATCH /api/v1/memory": {"invalid_governor": [r"^PSI watermarks must satisfy"]},
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
            r"a TCP export requires TLS, and this host has none",  # the host's TLS (tmem serve --tls-*)
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


# What earlier requests made, for `_steer`: (pool, offset) of stored pages, (pool, id) of
# attached devices, (name, sha256) of uploaded plugins. Entries may be gone since (a page
# invalidated, a pool destroyed): the request then gets its 404, as any client would.
STORED = []
ATTACHED = []
UPLOADED = []
TOKENS = []
# Steered requests so far, by operation; and what the hooks made themselves (for unique names).
STEERED = {}
MADE = []


def _get(path):
    request = urllib.request.Request(f"{BASE_URL}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)
    except Exception:
        return None


def _attach_one():
    """Attaches a small NBD device to a pool that has none, as a client would, so that a detach
    has something to detach (the fuzzer's own devices rarely outlive its pool deletions)."""
    pools = [
        p for p in (_get("/api/v1/pools") or [])
        if not p.get("frontends") and not p.get("tier_of") and p.get("page_size", 0) <= 65536
    ]
    n = len(MADE)
    pool = pools[0]["name"] if pools else f"steered-{n}"
    MADE.append(pool)
    if not pools and not _post("/api/v1/pools", {"name": pool, "backends": [{"plugin": "ram"}]}):
        return None
    device = _post(f"/api/v1/pools/{urllib.request.quote(pool, safe='')}/frontends", {
        "kind": "nbd",
        "size_bytes": 1 << 20,
        "backing": os.path.join(FUZZ_DIR, f"steered-{n}.img"),
        "socket": os.path.join(FUZZ_DIR, f"steered-{n}.sock"),
    })
    return (device["pool"], device["id"]) if device else None


def _upload_one(n):
    """Uploads the plugin module under a name of its own, as a client would, so that a removal
    has something to remove."""
    if not PLUGIN:
        return None
    with open(PLUGIN, "rb") as module:
        data = module.read()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/wasm"}
    url = f"{BASE_URL}/api/v1/plugins?name=steered-plugin-{n}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as response:
            plugin = json.load(response)
            return (plugin["name"], plugin["sha256"])
    except Exception:
        return None


def _make_token(n):
    """Makes a token of an existing pool, as an operator would, so that a revocation has
    something to revoke."""
    pool = _existing_pool(n)
    token = pool and _post(f"/api/v1/pools/{urllib.request.quote(pool, safe='')}/tokens", {"scope": "frontend"})
    return (token["pool"], token["id"]) if token else None


def _existing_pool(n, without_device=False):
    """The name of an existing pool (the `n`th, round the list), made first when there is none."""
    # (A lower tier belongs to its upper pool: pages, frontends and devices are refused there.)
    pools = [
        p for p in (_get("/api/v1/pools") or [])
        if not (without_device and (p.get("frontends") or p.get("tier_of")))
    ]
    if pools:
        return pools[n % len(pools)]["name"]
    name = f"steered-{n}-{len(MADE)}"
    MADE.append(name)
    return name if _post("/api/v1/pools", {"name": name, "backends": [{"plugin": "ram"}]}) else None


def _store_one(turn):
    """Stores a page, as a client would, so that a load or invalidate has a page to find (the
    fuzzer's own pages rarely outlive its invalidations, shrinks and pool deletions)."""
    # A pool that takes pages from the page API: enabled, not a lower tier (its upper pool's),
    # and not owned by a block device (any frontend: 409 pool_owned for a device's).
    pools = [
        p for p in (_get("/api/v1/pools") or [])
        if p.get("enabled", True) and not p.get("tier_of") and not p.get("frontends")
    ]
    if not pools:
        name = f"steered-pages-{turn}"
        if not _post("/api/v1/pools", {"name": name, "backends": [{"plugin": "ram"}]}):
            return None
        pools = [{"name": name, "page_size": 4096}]
    pool = pools[turn % len(pools)]
    offset = 1 << 20 | turn
    url = f"{BASE_URL}/api/v1/pools/{urllib.request.quote(pool['name'], safe='')}/pages/{offset}"
    page = bytes([turn % 251 + 1]) * int(pool.get("page_size", 4096))
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}
    request = urllib.request.Request(url, data=page, headers=headers, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (pool["name"], offset) if response.status == 201 else None
    except Exception:
        return None


def _set_binary_body(case, data):
    """Replaces the raw body of a schema-valid case. Any bytes are valid for a `format: binary`
    body, but Schemathesis (4.32) revalidates a body a hook changed and cannot validate bytes:
    it would call the case negative, and then expect the request to be refused. So the change
    is marked validated (a private part of Schemathesis, pinned by install-deps.sh)."""
    case.body = data
    if case._meta is not None:
        case._meta.clear_dirty(ParameterLocation.BODY)


def _post(path, body):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(f"{BASE_URL}{path}", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except Exception:
        return None


def _steer(label, case):
    """Every other schema-valid request of an operation that needs something to exist is aimed
    at something that does (a fuzzer that only draws names and offsets at random would never
    find a pool, a stored page or an attached device, and test nothing but their 404s)."""
    turn = STEERED.get(label, 0)
    STEERED[label] = turn + 1
    if turn % 2 or not isinstance(case.path_parameters, dict):
        return
    params = case.path_parameters
    if label == "POST /api/v1/plugins" and PLUGIN:
        with open(PLUGIN, "rb") as module:
            _set_binary_body(case, module.read())
        # Under a name of its own, given explicitly (Schemathesis revalidates a changed case,
        # and reads an absent optional `name` as null there).
        query = case.query if isinstance(case.query, dict) else {}
        if not (isinstance(query.get("name"), str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", query["name"])):
            query["name"] = f"fuzzed-{turn // 2}"
        case.query = query
    elif label == "DELETE /api/v1/plugins/{name}":
        plugin = UPLOADED[turn // 2 % len(UPLOADED)] if UPLOADED and turn % 4 == 0 else _upload_one(turn // 2)
        if plugin:
            params["name"] = plugin[0]
            if isinstance(case.query, dict) and "version" in case.query:
                case.query["version"] = plugin[1]
    elif label == "DELETE /api/v1/pools/{name}/tokens/{id}":
        token = TOKENS[turn // 2 % len(TOKENS)] if TOKENS and turn % 4 == 0 else _make_token(turn // 2)
        if token:
            params["name"], params["id"] = token
    elif label == "DELETE /api/v1/pools/{name}/frontends/{id}":
        device = ATTACHED[turn // 2 % len(ATTACHED)] if ATTACHED and turn % 4 == 0 else _attach_one()
        if device:
            params["name"], params["id"] = device
    elif label in ("GET /api/v1/pools/{name}/pages/{offset}", "DELETE /api/v1/pools/{name}/pages/{offset}"):
        # Half the time a page the fuzzer stored; otherwise (and when it stored none) one stored
        # just now: the fuzzer's own go stale through invalidations and shrinks.
        page = STORED[turn // 2 % len(STORED)] if STORED and turn % 4 == 0 else _store_one(turn // 2)
        if page:
            params["name"], params["offset"] = page
    elif label.split(" ", 1)[1].startswith("/api/v1/pools/{name}"):
        # Any other operation on one pool: an existing pool (a pool is one swap area: only one
        # without a device can take one).
        pool = _existing_pool(turn // 2, without_device=label == "POST /api/v1/pools/{name}/frontends")
        if pool:
            params["name"] = pool


@schemathesis.hook
def before_call(ctx, case, kwargs):
    label = f"{case.operation.method.upper()} {case.operation.path}"
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    # Only a case valid in every part is steered (a negative part must stay what the fuzzer
    # made it: a real module with a null `name` is accepted, and so no longer negative).
    # The stateful phase is left alone: there the parameters come from the document's links,
    # and what it checks is that following them works.
    stateful = case.meta is not None and case.meta.phase.name.value == "stateful"
    if positive and not stateful and not any(c.mode.is_negative for c in case.meta.components.values()):
        _steer(label, case)
    body = case.body
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
        # A generated binary body is Schemathesis's `Binary` (its bytes in `.data`), or text.
        raw = getattr(body, "data", body)
        raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        if positive and isinstance(raw, (bytes, bytearray)) and isinstance(case.path_parameters, dict):
            name = case.path_parameters.get("name")
            size = _pool_page_size(name) if isinstance(name, str) else None
            if size:
                data = bytes(raw) or b"\0"
                _set_binary_body(case, (data * (size // len(data) + 1))[:size])


@schemathesis.hook
def after_call(ctx, case, response):
    label = f"{case.operation.method.upper()} {case.operation.path}"
    params = case.path_parameters if isinstance(case.path_parameters, dict) else {}
    try:
        if label == "PUT /api/v1/pools/{name}/pages/{offset}" and response.status_code == 201:
            STORED.append((params["name"], params["offset"]))
        elif label == "POST /api/v1/pools/{name}/frontends" and response.status_code == 201:
            device = json.loads(response.content)
            ATTACHED.append((device["pool"], device["id"]))
        elif label == "POST /api/v1/pools/{name}/tokens" and response.status_code == 201:
            token = json.loads(response.content)
            TOKENS.append((token["pool"], token["id"]))
        elif label == "DELETE /api/v1/pools/{name}/tokens/{id}" and response.status_code == 204:
            TOKENS[:] = [t for t in TOKENS if t != (params["name"], params["id"])]
        elif label == "POST /api/v1/plugins" and response.status_code == 201:
            plugin = json.loads(response.content)
            UPLOADED.append((plugin["name"], plugin["sha256"]))
        elif label == "DELETE /api/v1/pools/{name}/frontends/{id}" and response.status_code == 204:
            ATTACHED[:] = [a for a in ATTACHED if a != (params["name"], params["id"])]
        elif label == "DELETE /api/v1/pools/{name}/pages/{offset}" and response.status_code == 204:
            STORED[:] = [p for p in STORED if p != (params["name"], params["offset"])]
        elif label == "DELETE /api/v1/plugins/{name}" and response.status_code == 204:
            UPLOADED[:] = [u for u in UPLOADED if u[0] != params["name"]]
        elif label == "DELETE /api/v1/pools/{name}" and response.status_code == 204:
            ATTACHED[:] = [a for a in ATTACHED if a[0] != params["name"]]
            STORED[:] = [p for p in STORED if p[0] != params["name"]]
            TOKENS[:] = [t for t in TOKENS if t[0] != params["name"]]
    except (KeyError, ValueError, TypeError):
        pass
    # One line per request, "METHOD PATH STATUS": the test reads it to check what the run reached.
    if CALL_LOG:
        with open(CALL_LOG, "a", encoding="utf-8") as log:
            log.write(f"{case.operation.method.upper()} {case.operation.path} {response.status_code}\n")


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
