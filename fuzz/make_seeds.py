#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/seeds/<target>/) from the golden vectors in
schema/vectors/ and typical requests of crates/api/tests/api.rs. Run from anywhere;
rerun after the vectors change. seeds/proof_bundle/v2-* are two bundles of the
fixture in crates/proof/tests/proof.rs (serde_json of entry_bundle with consistency,
and of event_bundle(2)), kept as they are. The files are small on purpose: the fuzzer grows its
working corpus elsewhere (see README.md, section Fuzzing)."""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
VEC = ROOT / "schema" / "vectors"


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


ledger = json.loads((VEC / "ledger-v1.json").read_text())
external = json.loads((VEC / "signed-note-external.json").read_text())
proof_v1 = json.loads((VEC / "proof-v1.json").read_text())

for i, e in enumerate(ledger["envelopes"]):
    write("ledger_envelope", f"envelope-{i}", bytes.fromhex(e["canonical_hex"]))
    if len(e["payload"]["bytes_hex"]) >= 8:
        write("ledger_envelope", f"payload-{i}", bytes.fromhex(e["payload"]["bytes_hex"]))
for i, e in enumerate(ledger["invalid_envelopes"][:3]):
    write("ledger_envelope", f"invalid-{i}", bytes.fromhex(e["canonical_hex"]))

write("note_checkpoint", "ledger-checkpoint", ledger["checkpoint"]["signed_note"])
write("note_checkpoint", "ledger-vkey", ledger["signing_key"]["note_vkey"])
for i, n in enumerate(external["signed_notes"][:2]):
    write("note_checkpoint", f"note-{i}", n["signed_note"])
for i, c in enumerate(external["checkpoints"]):
    write("note_checkpoint", f"checkpoint-{i}", c["signed_note"])
for i, c in enumerate(external["checkpoint_texts"][:2]):
    write("note_checkpoint", f"checkpoint-text-{i}", c["text"])
write("note_checkpoint", "skey-0", external["keys"][0]["skey"])

write("proof_bundle", "v1-bundle", json.dumps(proof_v1["bundle"], separators=(",", ":")))

P = "0193a4b2-0000-7000-8000-000000000001"
E = "0193a4b2-0000-7000-8000-000000000002"
REQUESTS = [
    ("{ me { userId } }", None),
    ("query($p: UUID!) { patient(patientId: $p) { mrn } }", {"p": P}),
    ("query($p: UUID!) { chart(patientId: $p) { entries { entryId } } }", {"p": P}),
    ("query($p: UUID!, $t: DateTime!) { chart(patientId: $p, asOf: $t) { entries { entryId } } }",
     {"p": P, "t": "2026-11-23T12:00:00.000000Z"}),
    ('{ searchPatients(familyPrefix: "Matrix") { edges { node { patientId } } } }', None),
    ("query($p: UUID!) { accessLog(patientId: $p, first: 5) { edges { node { userId } } } }", {"p": P}),
    ("mutation($u: String!, $p: String!, $r: Role) { login(username: $u, password: $p, role: $r) "
     "{ token mfaRequired mfaEnrolled passwordChangeRequired userId } }",
     {"u": "admin", "p": "correct horse battery staple", "r": "ADMIN"}),
    ("mutation($p: UUID!, $i: UUID!, $c: JSON!, $e: UUID!) { recordEntry(patientId: $p, entryId: $i, "
     "content: $c, eventId: $e) { position } }",
     {"p": P, "i": E, "c": {"kind": "note", "text": "synthetic"}, "e": E}),
    ("query A { me { userId } } fragment F on QueryRoot { me { userId } } query B { ...F }", None, "B"),
    ('query($v: Boolean!, $n: String!) { __type(name: $n) @include(if: $v) { name fields { name } } }',
     {"v": True, "n": "QueryRoot"}),
]
for i, r in enumerate(REQUESTS):
    data = r[0]
    if r[1] is not None or len(r) > 2:
        data += "\0" + json.dumps(r[1] or {})
    if len(r) > 2:
        data += "\0" + r[2]
    write("graphql_request", f"request-{i}", data)
