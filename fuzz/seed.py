#!/usr/bin/env python3
"""(Re)generates the seed corpora fuzz/corpus/<target>/ from the crate's own test vectors.

    python3 fuzz/seed.py            # all targets
    python3 fuzz/seed.py retry_after

Sources (read, never changed):
  www_authenticate  tests/data/challenge_vectors.rs, raw strings of src/bearer/challenge.rs tests
  token_response    JSON bodies of src/entra/token_client.rs tests, as templates (see below)
  mi_response       JSON bodies of src/credential/managed_identity/response.rs tests, same layout
  msal_cache        tests/data/*.json
  az_output         outputs in src/credential/azure_cli.rs and azure_developer_cli.rs tests
  retry_after       values in src/transport.rs tests
  certificate       made here with the openssl CLI (no test vectors: the tests make theirs)
  posix_acl         made here: ACLs of the shapes the ACL tests in src/entra/persistence/tests/
                    set (built there from Rust constants), and a few the kernel refuses

Each seed is written in the input layout its target reads (see src/fuzzing.rs), named by
the SHA-1 of its content as libFuzzer names corpus files. A target's directory is emptied
first, so the corpus is exactly what the sources give.
"""

import hashlib
import json
import re
import struct
import sys
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

# r#"..."# raw strings (the test vectors are written this way).
RAW = re.compile(r'r#"(.*?)"#', re.S)
# Plain "..." literals without escapes other than \" and \\.
PLAIN = re.compile(r'"((?:[^"\\\n]|\\["\\])*)"')


def tests_module(path):
    text = (ROOT / path).read_text()
    at = text.find("#[cfg(test)]")
    return text[at:] if at >= 0 else text


def unescape(s):
    return s.replace('\\"', '"').replace("\\\\", "\\")


def www_authenticate():
    seeds = []
    vectors = (ROOT / "tests/data/challenge_vectors.rs").read_text()
    seeds += [v for v in RAW.findall(vectors) if not v.startswith("{")]
    for v in RAW.findall(tests_module("src/bearer/challenge.rs")):
        if "{" not in v and not v.startswith("{"):
            seeds.append(v)
    # Several header lines in one input (the target splits at \n).
    if len(seeds) >= 2:
        seeds.append(seeds[0] + "\n" + seeds[1])
    return [s.encode() for s in seeds]


# token_response: [len][secret][status le16][body template]; in the template the bytes
# 0x01..0x06 become the secret raw, form-urlencoded, %20-encoded, JSON-escaped, %XX per byte,
# \uXXXX per char (src/fuzzing.rs, PLACEHOLDERS).
def token_input(secret, status, template):
    assert 8 <= len(secret) <= 40 and all(32 <= ord(c) < 127 for c in secret)
    return (
        bytes([len(secret) - 8])
        + bytes(ord(c) - 32 for c in secret)
        + struct.pack("<H", status - 100)
        + template
    )


def token_response():
    seeds = []
    bodies = [
        b for b in RAW.findall(tests_module("src/entra/token_client.rs"))
        if b.startswith("{") and "{{" not in b
    ]
    secret = "the-client-secret"
    for body in bodies:
        status = 400 if '"error"' in body else 200
        seeds.append(token_input(secret, status, body.encode()))
    # The error bodies again, with the secret echoed in error_description in every encoding.
    for body in bodies:
        if '"error_description"' not in body:
            continue
        for placeholder in range(1, 7):
            template = body.encode().replace(
                b'"error_description":"',
                b'"error_description":"client_secret=' + bytes([placeholder]) + b" ",
                1,
            )
            seeds.append(token_input("s p&c=\"x\\y/~", 401, template))
    # Non-JSON bodies: a proxy page quoting the secret, and plain text.
    seeds.append(
        token_input(secret, 502, b"<html>proxy says \x01 eyJa.b.c " + b"x" * 50 + b"</html>")
    )
    seeds.append(token_input(secret, 200, b"not json"))
    return seeds


def mi_response():
    seeds = []
    bodies = [
        b for b in RAW.findall(tests_module("src/credential/managed_identity/response.rs"))
        if b.startswith("{") and "{{" not in b
    ]
    secret = "the-identity-header"
    for body in bodies:
        status = 500 if '"error"' in body else 200
        seeds.append(token_input(secret, status, body.encode()))
    # An error quoting the secret in every encoding, and its own token (Service Fabric shape
    # and the OAuth shape).
    for placeholder in range(1, 7):
        echo = bytes([placeholder])
        seeds.append(token_input(
            secret, 400,
            b'{"error":"invalid_request","error_description":"header ' + echo
            + b' token tok3n-Value_xyz","access_token":"tok3n-Value_xyz"}'))
        seeds.append(token_input(
            secret, 401,
            b'{"error":{"code":"SecretHeaderNotFound","message":"got ' + echo + b'"}}'))
    seeds.append(token_input(secret, 200, b'{"access_token":"a","expires_on":"1/16/2030 5:24:12 AM +00:00"}'))
    seeds.append(token_input(secret, 502, b"Bad gateway \x01 eyJa.b.c"))
    return seeds


def msal_cache():
    seeds = [p.read_bytes() for p in sorted((ROOT / "tests/data").glob("*.json"))]
    seeds.append(b"{}")
    return seeds


def az_output():
    seeds = []
    future = "4102444800"  # 2100-01-01
    for source in ("src/credential/azure_cli.rs", "src/credential/azure_developer_cli.rs"):
        for v in RAW.findall(tests_module(source)):
            v = v.replace("{{", "{").replace("}}", "}").replace("{future}", future)
            if v.startswith("{") and v.encode() not in seeds:
                seeds.append(v.encode())
    seeds.append(b"garbage")
    return seeds


# retry_after: [now u32 le][selector][value]\n[selector][value]...; selector % 4 picks
# retry-after, retry-after-ms, x-ms-retry-after-ms, x-unrelated.
def retry_after():
    now = 1_700_000_000
    head = struct.pack("<I", now)
    names = {"retry-after": 0, "retry-after-ms": 1, "x-ms-retry-after-ms": 2}
    text = tests_module("src/transport.rs")
    seeds = []
    # headers(&[("name", "value"), ...]) in retry_after_forms.
    for group in re.findall(r"headers\(&\[(.*?)\]\)", text, re.S):
        pairs = re.findall(r'\("([a-z-]+)",\s*(&?\w+|"[^"]*")\)', group)
        lines = []
        for name, value in pairs:
            if value.startswith('"'):
                value = value[1:-1]
            elif value.lstrip("&") == "date":
                value = formatdate(now + 7, usegmt=True)
            elif value.lstrip("&") == "past":
                value = formatdate(now - 7, usegmt=True)
            else:
                continue
            lines.append(bytes([names[name]]) + value.encode())
        if lines:
            seeds.append(head + b"\n".join(lines))
    return seeds


# certificate: [even][PEM] (byte 0 = 2 mod 4: the password is `fuzz`) or [odd][password
# length][password][PKCS#12]. Made with openssl
# (an RSA 2048 self-signed certificate valid for 100 years, so the seeds keep loading).
def certificate():
    import subprocess
    import tempfile

    def run(*args, data=b""):
        return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout

    with tempfile.TemporaryDirectory() as tmp:
        key, cert = f"{tmp}/key.pem", f"{tmp}/cert.pem"
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
            "-days", "36500", "-subj", "/CN=fuzz.test")
        key_pem, cert_pem = Path(key).read_bytes(), Path(cert).read_bytes()
        pkcs1 = run("pkey", "-in", key, "-traditional")
        seeds = [b"\0" + cert_pem + key_pem, b"\0" + key_pem + cert_pem, b"\0" + cert_pem + pkcs1,
                 b"\0" + cert_pem, b"\0" + key_pem]
        # An ENCRYPTED PRIVATE KEY (PBES2, AES-256-CBC) at one iteration, so each run is quick.
        encrypted = run("pkcs8", "-topk8", "-in", key, "-passout", "pass:fuzz", "-iter", "1")
        seeds.append(b"\2" + cert_pem + encrypted)
        for password, extra in [(b"pw", []), (b"", ["-nomac", "-keypbe", "NONE", "-certpbe", "NONE"]),
                                (b"pw", ["-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1"])]:
            p12 = run("pkcs12", "-export", "-in", cert, "-inkey", key,
                      "-passout", "pass:" + password.decode(), *extra)
            seeds.append(b"\1" + bytes([len(password)]) + password + p12)
    return seeds


# posix_acl: the value of system.posix_acl_access as the kernel gives it: version 2 (LE u32),
# then per entry tag (LE u16), permissions (LE u16), id (LE u32; u32::MAX for the entries that
# name nobody, and for an id the user namespace does not map).
ACL_TAGS = {"u::": 0x01, "u": 0x02, "g::": 0x04, "g": 0x08, "m::": 0x10, "o::": 0x20}
NOBODY = 0xFFFFFFFF
FILE_GID = 100  # the file's group in src/fuzzing/posix_acl.rs


def acl(*entries, version=2):
    """entries as setfacl writes them: "u::6", "u:1:4", "g::4", "g:2:4", "m::6", "o::0"."""
    out = struct.pack("<I", version)
    for entry in entries:
        kind, id_, perm = entry.split(":")
        tag = ACL_TAGS[kind + "::" if id_ == "" else kind]
        out += struct.pack("<HHI", tag, int(perm), NOBODY if id_ == "" else int(id_))
    return out


def posix_acl():
    unmapped = str(NOBODY)
    return [
        # No named entry: the mode says it all.
        acl("u::6", "g::4", "o::0"),
        acl("u::7", "g::5", "o::5"),
        # A mask without named entries (the kernel takes it).
        acl("u::6", "g::4", "m::6", "o::0"),
        # The tests' kept ACL: a named user and group, the mask showing as the group bits.
        acl("u::6", "u:1:6", "g::4", "g:2:4", "m::6", "o::0"),
        # A directory's default ACL as the tests set it.
        acl("u::7", "u:1:7", "g::5", "m::7", "o::5"),
        # Named ids unsorted and twice (the kernel keeps them as set), a mask narrower than
        # the entries.
        acl("u::6", "u:5:6", "u:1:4", "u:5:0", "g::4", "g:9:4", "g:2:4", "m::4", "o::0"),
        # Ids a user namespace does not map, among mapped ones.
        acl("u::6", "u:0:4", "u:1:6", f"u:{unmapped}:6", "g::4", "g:2:4", f"g:{unmapped}:6",
            "m::6", "o::0"),
        # Sharing through the file's group: the group reads alone, a named writer and owner.
        acl("u::6", "u:1000:6", "u:1001:4", "g::4", f"g:{FILE_GID}:6", "m::6", "o::0"),
        acl("u::6", "u:1000:6", "u:1001:6", "g::0", "m::6", "o::0"),
        acl("u::4", "g::6", "m::6", "o::0"),
        # Others read, the groups not: their members may not, though others may.
        acl("u::6", "g::0", "g:2:0", "m::6", "o::4"),
        # What the kernel refuses: named entries without a mask, out of order, two masks, the
        # mask after others', a cut entry, version 1, an unknown tag, permissions beyond rwx.
        acl("u::6", "u:1:4", "g::4", "o::0"),
        acl("u::6", "g::4", "u:1:4", "m::4", "o::0"),
        acl("u::6", "g::4", "m::4", "m::6", "o::0"),
        acl("u::6", "g::4", "o::0", "m::4"),
        acl("u::6", "g::4", "o::0")[:-1],
        acl("u::6", "g::4", "o::0", version=1),
        acl("u::6") + struct.pack("<HHI", 0x40, 4, 1) + acl("g::4", "o::0")[4:],
        acl("u::8", "g::4", "o::0"),
    ]


TARGETS = {
    "www_authenticate": www_authenticate,
    "token_response": token_response,
    "mi_response": mi_response,
    "msal_cache": msal_cache,
    "az_output": az_output,
    "retry_after": retry_after,
    "certificate": certificate,
    "posix_acl": posix_acl,
}


def main(names):
    for name in names or TARGETS:
        seeds = TARGETS[name]()
        out = CORPUS / name
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            old.unlink()
        for seed in dict.fromkeys(seeds):
            (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        print(f"{name}: {len(list(out.iterdir()))} seeds in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
