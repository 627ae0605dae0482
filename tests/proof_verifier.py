#!/usr/bin/env python3
"""An independent verifier of Chartledger record proof bundles.

Written from schema/proof-format.md, schema/ledger-format.md and schema/events.md alone
(not from the Rust code), so that it checks the documents as much as the bundles.
Standard library only, plus the `cryptography` package for the Ed25519 equation; the
strictness rules around it (canonical encodings, small order, torsion) are checked here
with plain integer arithmetic on the curve.

Usage: proof_verifier.py --trusted-key VKEY [--trusted-key VKEY ...] BUNDLE [BUNDLE ...]
Prints one line per bundle: "<file> VERIFIED ..." or "<file> REJECTED <location> <reason>".
Exit status 0 when every bundle verified, 1 otherwise, 2 on a usage error.
"""

import base64
import binascii
import datetime
import hashlib
import json
import re
import sys
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Reject(Exception):
    def __init__(self, location, reason):
        super().__init__(f"{location} {reason}")
        self.location = location
        self.reason = reason


# ---------------------------------------------------------------- Ed25519 (RFC 8032)

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def point_add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    A = (y1 - x1) * (y2 - x2) % P
    B = (y1 + x1) * (y2 + x2) % P
    C = t1 * 2 * D * t2 % P
    Dd = z1 * 2 * z2 % P
    E, F, G, H = B - A, Dd - C, Dd + C, B + A
    return (E * F % P, G * H % P, F * G % P, E * H % P)


def point_mul(s, pt):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = point_add(q, pt)
        pt = point_add(pt, pt)
        s >>= 1
    return q


def is_identity(pt):
    x, y, z, _ = pt
    return x % P == 0 and (y - z) % P == 0


def decode_point(b):
    """RFC 8032 5.1.3, rejecting non-canonical y (y >= p) and x = 0 with the sign bit."""
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign = n >> 255
    y = n & ((1 << 255) - 1)
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        if sign:
            return None
        x = 0
    else:
        x = pow(x2, (P + 3) // 8, P)
        if (x * x - x2) % P != 0:
            x = x * SQRT_M1 % P
        if (x * x - x2) % P != 0:
            return None
        if (x & 1) != sign:
            x = P - x
    return (x, y, 1, x * y % P)


def small_order(pt):
    return is_identity(point_mul(8, pt))


def vet_public_key(b):
    """LF §6: canonical, not of small order, torsion-free."""
    pt = decode_point(b)
    return pt is not None and not small_order(pt) and is_identity(point_mul(L, pt))


def verify_strict(public_key, message, signature):
    """LF §3.2: S < L, R and A canonical and not of small order, cofactorless equation."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    for enc in (r, public_key):
        pt = decode_point(enc)
        if pt is None or small_order(pt):
            return False
    try:
        # OpenSSL computes [S]B - [k]A, encodes it and compares with R byte for byte.
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except InvalidSignature:
        return False


# ---------------------------------------------------------------- encodings

def b64(s, what, loc, length=None):
    if not isinstance(s, str):
        raise Reject(loc, f"{what} is not a string")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Reject(loc, f"{what} is not base64")
    if base64.b64encode(raw).decode("ascii") != s:
        raise Reject(loc, f"{what} is not canonical base64")
    if length is not None and len(raw) != length:
        raise Reject(loc, f"{what} has the wrong length")
    return raw


def sha256(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


SIGNATURE_CONTEXT = b"chartledger:v1:event-signature\x00"
EVENT_HASH_TAG = b"chartledger:v1:event-hash\x00"
PAYLOAD_TAG = b"chartledger:v1:payload-commitment\x00"
KEY_ID_TAG = b"chartledger:v1:key-id\x00"

STREAM_RE = re.compile(r"\$?[a-z0-9][a-z0-9._:-]*")
TYPE_RE = re.compile(r"[a-z][a-z0-9_.]*")
ROLE_RE = re.compile(r"[a-z][a-z0-9_]*")


class Reader:
    def __init__(self, data, loc):
        self.data, self.at, self.loc = data, 0, loc

    def take(self, n):
        if self.at + n > len(self.data):
            raise Reject(self.loc, "truncated")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return int.from_bytes(self.take(2), "little")

    def u64(self):
        return int.from_bytes(self.take(8), "little")

    def i64(self):
        return int.from_bytes(self.take(8), "little", signed=True)

    def string(self, pattern, max_len, what):
        n = self.u64()
        if n > len(self.data) - self.at:
            raise Reject(self.loc, "length prefix beyond the data")
        raw = self.take(n)
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject(self.loc, f"invalid {what}")
        if pattern is not None and (not 1 <= len(raw) <= max_len or not pattern.fullmatch(s)):
            raise Reject(self.loc, f"invalid {what}")
        return s

    def end(self):
        if self.at != len(self.data):
            raise Reject(self.loc, "trailing bytes")


def decode_envelope(raw, loc):
    """LF §3: the body fields, the signature, the event hash."""
    if len(raw) > 1024:
        raise Reject(loc, "envelope too large")
    r = Reader(raw, loc)
    if r.u16() != 1:
        raise Reject(loc, "unsupported format")
    e = {}
    e["stream_id"] = r.string(STREAM_RE, 128, "stream id")
    e["stream_revision"] = r.u64()
    event_id = r.take(16)
    if event_id[6] >> 4 != 7 or event_id[8] >> 6 != 0b10:
        raise Reject(loc, "event id is not a UUIDv7")
    e["event_id"] = str(uuid.UUID(bytes=event_id))
    e["event_type"] = r.string(TYPE_RE, 64, "event type")
    e["schema_version"] = r.u16()
    e["recorded_at"] = r.i64()
    e["actor_user_id"] = str(uuid.UUID(bytes=r.take(16)))
    e["actor_role"] = r.string(ROLE_RE, 32, "role")
    e["payload_commitment"] = r.take(32)
    e["prev_hash"] = r.take(32)
    e["key_id"] = r.take(32)
    body_len = r.at
    e["signature"] = r.take(64)
    r.end()
    if (e["stream_revision"] == 0) != (e["prev_hash"] == bytes(32)):
        raise Reject(loc, "bad genesis")
    e["body"] = raw[:body_len]
    e["hash"] = sha256(EVENT_HASH_TAG, raw)
    return e


def commitment(salt, payload):
    return sha256(PAYLOAD_TAG, salt, len(payload).to_bytes(8, "little"), payload)


def key_id(public_key):
    return sha256(KEY_ID_TAG, b"\x01", public_key)


def valid_key_name(name):
    return 0 < len(name.encode("utf-8")) <= 128 and not any(
        c.isspace() or c == "+" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name)


def decode_key_introduced(raw, loc):
    r = Reader(raw, loc)
    if r.u8() != 1:
        raise Reject(loc, "key algorithm")
    pk = r.take(32)
    name = r.string(None, 0, "key name")
    valid_from = r.i64()
    r.end()
    if not valid_key_name(name):
        raise Reject(loc, "key name")
    if not vet_public_key(pk):
        raise Reject(loc, "invalid public key")
    return {"public_key": pk, "name": name, "valid_from": valid_from}


def decode_key_retired(raw, loc):
    r = Reader(raw, loc)
    kid = r.take(32)
    until = r.i64()
    reason = r.u8()
    r.end()
    if reason not in (1, 2):
        raise Reject(loc, "retirement reason")
    return {"key_id": kid, "valid_until": until, "reason": "rotation" if reason == 1 else "compromise"}


def render_time(micros):
    if not -62135596800000000 <= micros < 253402300800000000:
        return f"@{micros}us"
    dt = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=micros)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond:06d}Z")


# ---------------------------------------------------------------- key registry (LF §6)

class Registry:
    def __init__(self):
        self.keys = {}  # key id -> dict(public_key, name, valid_from, valid_until)
        self.anchor = None
        self.last = None  # (revision, hash)

    def valid_at(self, kid, t):
        k = self.keys.get(kid)
        if k is None:
            return None
        if k["valid_from"] <= t and (k["valid_until"] is None or t < k["valid_until"]):
            return k
        return None

    def apply(self, e, payload, loc):
        rev, prev = (0, bytes(32)) if self.last is None else (self.last[0] + 1, self.last[1])
        if e["stream_revision"] != rev or e["prev_hash"] != prev:
            raise Reject(loc, "broken $keys hash link")
        at = e["recorded_at"]
        message = SIGNATURE_CONTEXT + e["body"]
        if e["event_type"] == "key.introduced":
            k = decode_key_introduced(payload, loc)
            kid = key_id(k["public_key"])
            if kid in self.keys:
                raise Reject(loc, "key introduced twice")
            if k["valid_from"] < at:
                raise Reject(loc, "valid_from before the introduction")
            if self.anchor is None:
                if e["key_id"] != kid:
                    raise Reject(loc, "anchor not signed by itself")
                signer = k["public_key"]
            else:
                s = self.valid_at(e["key_id"], at)
                if s is None:
                    raise Reject(loc, "registry event signer not valid")
                signer = s["public_key"]
            if not verify_strict(signer, message, e["signature"]):
                raise Reject(loc, "invalid signature")
            self.keys[kid] = dict(k, valid_until=None)
            if self.anchor is None:
                self.anchor = kid
        elif e["event_type"] == "key.retired":
            k = decode_key_retired(payload, loc)
            s = self.valid_at(e["key_id"], at)
            if s is None:
                raise Reject(loc, "registry event signer not valid")
            if not verify_strict(s["public_key"], message, e["signature"]):
                raise Reject(loc, "invalid signature")
            target = self.keys.get(k["key_id"])
            if target is None or target["valid_until"] is not None:
                raise Reject(loc, "retirement of an unknown or retired key")
            if k["valid_until"] < target["valid_from"]:
                raise Reject(loc, "valid_until before valid_from")
            if k["reason"] == "rotation" and k["valid_until"] < at:
                raise Reject(loc, "backdated rotation")
            target["valid_until"] = k["valid_until"]
        else:
            raise Reject(loc, "unknown $keys event type")
        self.last = (e["stream_revision"], e["hash"])


# ---------------------------------------------------------------- Merkle (RFC 9162 §2.1)

def leaf_hash(data):
    return sha256(b"\x00", data)


def node_hash(left, right):
    return sha256(b"\x01", left, right)


def root_from_inclusion(leaf, index, size, proof):
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_consistency(m, n, old_root, new_root, proof):
    if not 0 < m <= n:
        return False
    if m == n:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = ([old_root] if m & (m - 1) == 0 else []) + list(proof)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


# ---------------------------------------------------------------- notes and checkpoints (LF §8)

def parse_vkey(text):
    name, _, rest = text.partition("+")
    hexhash, _, key64 = rest.partition("+")
    if not valid_key_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hexhash):
        raise ValueError("bad verifier key")
    raw = b64(key64, "verifier key", "trusted-key")
    if len(raw) != 33 or raw[0] != 1:
        raise ValueError("bad verifier key")
    if note_key_hash(name, raw[1:]).hex() != hexhash:
        raise ValueError("bad verifier key hash")
    return (name, raw[1:])


def note_key_hash(name, public_key):
    return sha256(name.encode("utf-8"), b"\n\x01", public_key)[:4]


def parse_note(note, loc):
    """Returns (text, [(name, key hash, signature)])."""
    if len(note.encode("utf-8")) > 256 * 1024:
        raise Reject(loc, "note too large")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise Reject(loc, "control character in note")
    split = note.rfind("\n\n")
    if split < 0:
        raise Reject(loc, "no signature block")
    text, sigs = note[:split + 1], note[split + 2:]
    if not sigs.endswith("\n") or sigs == "\n":
        raise Reject(loc, "malformed signature block")
    out = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise Reject(loc, "malformed signature line")
        name, sep, sig64 = line[2:].partition(" ")
        if not sep or not valid_key_name(name):
            raise Reject(loc, "malformed signature line")
        raw = b64(sig64, "note signature", loc)
        if len(raw) < 5:
            raise Reject(loc, "short note signature")
        out.append((name, raw[:4], raw[4:]))
    return text, out


def parse_checkpoint_text(text, loc):
    if not text.endswith("\n"):
        raise Reject(loc, "checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not lines[0]:
        raise Reject(loc, "malformed checkpoint")
    if not re.fullmatch(r"0|[1-9][0-9]{0,19}", lines[1]) or int(lines[1]) >= 2**64:
        raise Reject(loc, "checkpoint size")
    if len(lines[2]) != 44:
        raise Reject(loc, "checkpoint root hash")
    root = b64(lines[2], "root hash", loc, 32)
    time = keys_head = None
    for ext in lines[3:]:
        if not ext:
            raise Reject(loc, "empty extension line")
        if ext == "chartledger-time" or ext.startswith("chartledger-time "):
            value = ext[len("chartledger-time "):]
            if time is not None or not re.fullmatch(r"0|-?[1-9][0-9]*", value) or not -2**63 <= int(value) < 2**63:
                raise Reject(loc, "chartledger-time")
            time = int(value)
        if ext == "chartledger-keys" or ext.startswith("chartledger-keys "):
            m = re.fullmatch(r"chartledger-keys (0|[1-9][0-9]{0,19}) ([A-Za-z0-9+/=]{44})", ext)
            if keys_head is not None or m is None or int(m.group(1)) >= 2**64:
                raise Reject(loc, "chartledger-keys")
            keys_head = (int(m.group(1)), b64(m.group(2), "keys head", loc, 32))
    return {"origin": lines[0], "size": int(lines[1]), "root": root, "root_b64": lines[2], "time": time,
            "keys_head": keys_head}


def open_note(note, verifiers, loc):
    """C2SP signed-note: unknown keys ignored, a known key's bad signature rejects, one must verify."""
    text, sigs = parse_note(note, loc)
    verified = []
    for name, khash, sig in sigs:
        keys = {pk for (n, pk) in verifiers if n == name and note_key_hash(n, pk) == khash}
        if not keys:
            continue
        if len(keys) > 1:
            raise Reject(loc, "ambiguous verifier")
        if not verify_strict(next(iter(keys)), text.encode("utf-8"), sig):
            raise Reject(loc, "invalid checkpoint signature")
        verified.append(name)
    if not verified:
        raise Reject(loc, "checkpoint not signed by a trusted key")
    return text, verified


def registry_verifiers(trusted, registry, time):
    out = list(trusted)
    if time is not None:
        for k in registry.keys.values():
            if registry.valid_at(key_id(k["public_key"]), time) is not None:
                out.append((k["name"], k["public_key"]))
    return out


# ---------------------------------------------------------------- the bundle (proof-format §4)

V1, V2 = "chartledger-proof/v1", "chartledger-proof/v2"
ITEM_MEMBERS = {V1: {"position", "envelope", "payload", "salt", "inclusion_proof", "decoded"},
                V2: {"envelope", "payload", "salt", "inclusion", "decoded"}}


def render(e, payload, version):
    if payload is None:
        rendered_payload = None
    elif e["stream_id"] == "$keys" and e["event_type"] in ("key.introduced", "key.retired"):
        try:
            if e["event_type"] == "key.introduced":
                k = decode_key_introduced(payload, "render")
                rendered_payload = {"algorithm": 1, "public_key": base64.b64encode(k["public_key"]).decode(),
                                    "name": k["name"], "valid_from": render_time(k["valid_from"])}
            else:
                k = decode_key_retired(payload, "render")
                rendered_payload = {"key_id": k["key_id"].hex(), "valid_until": render_time(k["valid_until"]),
                                    "reason": k["reason"]}
        except Reject:
            rendered_payload = {"undecodable_bytes": len(payload)}
    else:
        try:
            rendered_payload = strict_json(payload)
        except (UnicodeDecodeError, ValueError):
            rendered_payload = {"undecodable_bytes": len(payload)}
    out = {
        "stream_id": e["stream_id"], "stream_revision": e["stream_revision"], "event_id": e["event_id"],
        "event_type": e["event_type"], "schema_version": e["schema_version"],
        "recorded_at": render_time(e["recorded_at"]),
        "actor_user_id": e["actor_user_id"], "actor_role": e["actor_role"],
        "key_id": e["key_id"].hex(), "event_hash": e["hash"].hex(), "payload": rendered_payload,
    }
    if version == V1:
        out.update(recorded_at_micros=e["recorded_at"], payload_commitment=e["payload_commitment"].hex(),
                   prev_hash=e["prev_hash"].hex())
    return out


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate member")
        out[k] = v
    return out


def strict_json(raw):
    """RFC 8259 JSON text: no NaN/Infinity, no duplicate members."""
    return json.loads(raw.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_no_duplicates)


def is_u64(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


def decode_item(item, loc, version):
    if not isinstance(item, dict):
        raise Reject(loc, "malformed event item")
    if version == V1:
        if set(item) != ITEM_MEMBERS[V1] or not is_u64(item["position"]) or not isinstance(
                item["inclusion_proof"], list):
            raise Reject(loc, "malformed event item")
        inclusion = (item["position"], [b64(h, "inclusion proof", loc, 32) for h in item["inclusion_proof"]])
    else:
        # `inclusion` may be absent or null (proof-format §4 step 1).
        if not set(item) - {"inclusion"} == ITEM_MEMBERS[V2] - {"inclusion"}:
            raise Reject(loc, "malformed event item")
        inc = item.get("inclusion")
        inclusion = None
        if inc is not None:
            if not isinstance(inc, dict) or set(inc) != {"position", "proof"} or not is_u64(inc["position"]):
                raise Reject(loc, "malformed inclusion")
            path = b64(inc["proof"], "inclusion proof", loc)
            if len(path) % 32:
                raise Reject(loc, "inclusion proof length")
            inclusion = (inc["position"], [path[i:i + 32] for i in range(0, len(path), 32)])
    envelope = b64(item["envelope"], "envelope", loc)
    if (item["payload"] is None) != (item["salt"] is None):
        raise Reject(loc, "payload and salt must both be present or both null")
    payload = salt = None
    if item["payload"] is not None:
        salt = b64(item["salt"], "salt", loc, 32)
        payload = b64(item["payload"], "payload", loc)
        if len(payload) > 1 << 20:
            raise Reject(loc, "payload too large")
    e = decode_envelope(envelope, loc)
    if render(e, payload, version) != item["decoded"]:
        raise Reject(loc, "rendering mismatch")
    if payload is not None and commitment(salt, payload) != e["payload_commitment"]:
        raise Reject(loc, "payload does not open the commitment")
    e.update(payload=payload, inclusion=inclusion)
    if inclusion is not None:
        e.update(position=inclusion[0], proof=inclusion[1])
    return e


def check_inclusion(e, cp, loc):
    if e["inclusion"] is None:
        return
    if e["position"] >= cp["size"]:
        raise Reject(loc, "position beyond the checkpoint")
    if root_from_inclusion(leaf_hash(e["hash"]), e["position"], cp["size"], e["proof"]) != cp["root"]:
        raise Reject(loc, "inclusion proof does not lead to the checkpoint root")


def check_signed(e, registry, loc):
    k = registry.valid_at(e["key_id"], e["recorded_at"])
    if k is None:
        raise Reject(loc, "signing key unknown or not valid at recorded_at")
    if not verify_strict(k["public_key"], SIGNATURE_CONTEXT + e["body"], e["signature"]):
        raise Reject(loc, "invalid signature")
    return k


def same_uuid(value, expected):
    try:
        return isinstance(value, str) and uuid.UUID(value) == uuid.UUID(expected)
    except ValueError:
        return False


def verify_bundle(doc, trusted):
    # Step 1.
    top = {"format", "subject", "checkpoint", "keys", "events", "chain"}
    if not isinstance(doc, dict) or not top <= set(doc) <= top | {"consistency"}:
        raise Reject("bundle", "wrong members")
    version = doc["format"]
    if version not in (V1, V2):
        raise Reject("bundle", "unsupported format")
    for name in ("keys", "events", "chain"):
        if not isinstance(doc[name], list):
            raise Reject("bundle", f"{name} is not a list")
    if not doc["keys"] or not doc["events"]:
        raise Reject("bundle", "keys and events must not be empty")
    subject = doc["subject"]
    if not isinstance(subject, dict) or subject.get("type") not in ("entry", "event") or set(subject) != (
            {"type", "patient_id", "entry_id"} if subject.get("type") == "entry" else {"type", "event_id"}):
        raise Reject("bundle", "malformed subject")

    # Step 2.
    c = doc["checkpoint"]
    required = {"note", "origin", "size", "root_hash"}
    optional = {"time"} if version == V1 else {"time", "keys_head"}
    if not isinstance(c, dict) or not required <= set(c) <= required | optional or not isinstance(
            c["note"], str):
        raise Reject("checkpoint", "malformed checkpoint member")
    text, _ = parse_note(c["note"], "checkpoint")
    cp = parse_checkpoint_text(text, "checkpoint")
    rendering = {"note": c["note"], "origin": cp["origin"], "size": cp["size"], "root_hash": cp["root_b64"],
                 "time": None if cp["time"] is None else render_time(cp["time"])}
    head = cp["keys_head"] if version == V2 else None
    if version == V2:
        rendering["keys_head"] = None if head is None else {"revision": head[0], "event_hash": head[1].hex()}
    if rendering != {k: c.get(k) for k in required | optional}:
        raise Reject("checkpoint", "rendering mismatch")
    if version == V2:
        # Which items carry an inclusion proof (proof-format §1).
        for name, proven in (("events", len(doc["events"]) - 1),
                             ("keys", len(doc["keys"]) - 1 if head is None else None)):
            for i, item in enumerate(doc[name]):
                if (isinstance(item, dict) and item.get("inclusion") is not None) != (i == proven):
                    raise Reject(f"{name}[{i}]", "inclusion proof missing or misplaced")

    # Step 3.
    registry = Registry()
    last_pos = None
    for i, item in enumerate(doc["keys"]):
        loc = f"keys[{i}]"
        e = decode_item(item, loc, version)
        if e["stream_id"] != "$keys" or e["stream_revision"] != i:
            raise Reject(loc, "not $keys at this revision")
        if e["payload"] is None:
            raise Reject(loc, "$keys payload missing")
        registry.apply(e, e["payload"], loc)
        if e["inclusion"] is not None:
            if last_pos is not None and e["position"] <= last_pos:
                raise Reject(loc, "positions not increasing")
            last_pos = e["position"]
        check_inclusion(e, cp, loc)
        last_key = (e["stream_revision"], e["hash"])
    if head is not None and last_key != head:
        raise Reject(f"keys[{len(doc['keys']) - 1}]", "registry does not end at the checkpoint's keys head")

    # Step 4.
    anchor_pk = registry.keys[registry.anchor]["public_key"] if registry.anchor else None
    anchored = any(pk == anchor_pk for _, pk in trusted)
    verifiers = registry_verifiers(trusted, registry, cp["time"]) if anchored else list(trusted)
    _, signed_by = open_note(c["note"], verifiers, "checkpoint")

    # Step 5.
    events = []
    for i, item in enumerate(doc["events"]):
        loc = f"events[{i}]"
        e = decode_item(item, loc, version)
        if events and e["stream_id"] != events[-1]["stream_id"]:
            raise Reject(loc, "events of different streams")
        if events and e["stream_revision"] <= events[-1]["stream_revision"]:
            raise Reject(loc, "events out of revision order")
        e["key"] = check_signed(e, registry, loc)
        check_inclusion(e, cp, loc)
        e["loc"] = loc
        events.append(e)

    # Step 6.
    lo, hi = events[0]["stream_revision"], events[-1]["stream_revision"]
    merged = list(events)
    for i, b in enumerate(doc["chain"]):
        loc = f"chain[{i}]"
        e = decode_envelope(b64(b, "chain envelope", loc), loc)
        if e["stream_id"] != events[0]["stream_id"]:
            raise Reject(loc, "chain event of another stream")
        if not lo < e["stream_revision"] < hi:
            raise Reject(loc, "chain revision out of range")
        check_signed(e, registry, loc)
        e["loc"] = loc
        merged.append(e)
    merged.sort(key=lambda x: x["stream_revision"])
    for prev, nxt in zip(merged, merged[1:]):
        if nxt["stream_revision"] != prev["stream_revision"] + 1 or nxt["prev_hash"] != prev["hash"]:
            raise Reject(nxt["loc"], "broken stream chain")

    # Step 7.
    if subject["type"] == "event":
        if len(events) != 1 or doc["chain"] or not same_uuid(subject["event_id"], events[0]["event_id"]):
            raise Reject("events[0]", "not the subject event")
    else:
        try:
            stream = f"patient-{uuid.UUID(subject['patient_id'])}"
            entry = str(uuid.UUID(subject["entry_id"]))
        except (ValueError, TypeError, AttributeError):
            raise Reject("bundle", "malformed subject")
        for i, e in enumerate(events):
            loc = f"events[{i}]"
            allowed = ("entry.recorded",) if i == 0 else ("entry.amended", "entry.entered_in_error")
            if e["stream_id"] != stream or e["event_type"] not in allowed:
                raise Reject(loc, "not a version of the subject entry")
            if e["payload"] is not None:
                member = "amendment_of_id" if e["event_type"] == "entry.amended" else "entry_id"
                try:
                    value = strict_json(e["payload"])
                except (UnicodeDecodeError, ValueError):
                    value = None
                if not isinstance(value, dict) or not same_uuid(value.get(member), entry):
                    raise Reject(loc, "not a version of the subject entry")

    # Step 8.
    cons = doc.get("consistency")
    extends = None
    if cons is not None:
        loc = "consistency"
        if not isinstance(cons, dict) or set(cons) != {"old_checkpoint", "proof"} or not isinstance(
                cons["old_checkpoint"], str) or not isinstance(cons["proof"], list):
            raise Reject(loc, "malformed consistency member")
        proof = [b64(h, "consistency proof", loc, 32) for h in cons["proof"]]
        old_text, _ = parse_note(cons["old_checkpoint"], loc)
        old = parse_checkpoint_text(old_text, loc)
        open_note(cons["old_checkpoint"], registry_verifiers(trusted, registry, old["time"]), loc)
        if old["origin"] != cp["origin"]:
            raise Reject(loc, "different logs")
        if not verify_consistency(old["size"], cp["size"], old["root"], cp["root"], proof):
            raise Reject(loc, "consistency proof does not verify")
        extends = old["size"]

    return {"size": cp["size"], "signed_by": signed_by, "versions": len(events), "extends": extends}


def main(argv):
    trusted, files = [], []
    it = iter(argv)
    for a in it:
        if a == "--trusted-key":
            try:
                trusted.append(parse_vkey(next(it)))
            except (StopIteration, ValueError, Reject):
                print("usage error: bad --trusted-key", file=sys.stderr)
                return 2
        else:
            files.append(a)
    if not trusted or not files:
        print(__doc__, file=sys.stderr)
        return 2
    status = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                raw = f.read((16 << 20) + 1)
            if len(raw) > 16 << 20:
                raise Reject("bundle", "too large")
            try:
                doc = strict_json(raw)
            except (UnicodeDecodeError, ValueError):
                raise Reject("bundle", "not JSON")
            r = verify_bundle(doc, trusted)
            print(f"{path} VERIFIED size={r['size']} versions={r['versions']} extends={r['extends']} "
                  f"signed_by={','.join(r['signed_by'])}")
        except Reject as e:
            print(f"{path} REJECTED {e.location} {e.reason}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
