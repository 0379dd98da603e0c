"""Content Credentials (C2PA) on final videos: a signed manifest saying the video is AI-generated.

The manifest travels inside the MP4 (a `uuid` box, hashed together with the rest of the file), so
it survives a copy but not a re-encode; `persona verify` reads it back. c2pa-python does the C2PA
work (manifest store, BMFF hashing, COSE signature, validation); persona only decides what the
manifest says and which certificate signs it:

- the user's own certificate chain and private key (PEM), from PERSONA_C2PA_CERT / PERSONA_C2PA_KEY
  or `[c2pa] cert` / `key` in the user config file (`user_config_path()`, outside any workspace);
- otherwise a certificate made once per workspace in `.persona/c2pa/`. Nobody vouches for it, so
  its signature proves the file is unchanged since persona signed it, not who made it.

Signing and verifying never touch the network: no timestamp authority, no OCSP, no remote manifests.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from pathlib import Path
from typing import Any, TYPE_CHECKING

from persona import __version__
from persona.errors import PersonaError
from persona.files import staged_dir

if TYPE_CHECKING:
    from persona.workspace import Workspace

MIME = "video/mp4"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SOURCE_TYPE = IPTC + "trainedAlgorithmicMedia"
AI_SOURCE_TYPES = {IPTC + t for t in ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia",
                                      "algorithmicMedia", "compositeSynthetic")}
LIKENESS = "persona.likeness"  # persona's own assertion: whose likeness, and the consent behind it
WORKSPACE_ISSUER = "persona workspace certificate (self-signed)"  # the organisation named in both certificates
KEY_DIR = Path(".persona") / "c2pa"
INTEGRITY_ONLY = ("signed with this workspace's own self-signed certificate: it proves the file is unchanged "
                  "since persona signed it, not who made it (configure PERSONA_C2PA_CERT and PERSONA_C2PA_KEY "
                  "to sign with your own certificate)")

# Offline and quiet: no timestamp authority is configured on the signer, and nothing is fetched
# (remote manifests, OCSP responses) or allowed to be, whatever c2pa's defaults become.
_OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
            "core": {"allowed_network_hosts": []}}


# ---- which certificate ---------------------------------------------------------------------------
def user_config_path() -> Path:
    """The user-level config file: PERSONA_CONFIG, else $XDG_CONFIG_HOME/persona/config.toml."""
    if os.environ.get("PERSONA_CONFIG"):
        return Path(os.environ["PERSONA_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "persona" / "config.toml"


def _user_c2pa_config() -> tuple[dict[str, Any], Path]:
    path = user_config_path()
    if not path.is_file():
        return {}, path
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("c2pa", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PersonaError(f"is not valid TOML ({e})", file=path, fix="fix the syntax at that line") from None
    if not isinstance(table, dict):
        raise PersonaError("[c2pa] must be a table", file=path, fix='write [c2pa] with cert = "..." and key = "..."')
    return table, path


def user_certificate() -> tuple[Path, Path] | None:
    """(certificate chain, private key) the user configured, or None. Environment variables win."""
    cert, key = os.environ.get("PERSONA_C2PA_CERT"), os.environ.get("PERSONA_C2PA_KEY")
    where: Path | None = None
    if not cert and not key:
        table, where = _user_c2pa_config()
        cert, key = table.get("cert"), table.get("key")
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "PERSONA_C2PA_CERT" if not cert else "PERSONA_C2PA_KEY"
        raise PersonaError(f"a signing certificate needs both a certificate chain and its private key; {missing} "
                           "(or the matching [c2pa] key) is not set", file=where,
                           fix="set both, or neither to sign with the workspace's own certificate")
    paths = Path(str(cert)).expanduser(), Path(str(key)).expanduser()
    for p in paths:
        if not p.is_file():
            raise PersonaError("does not exist (named as the C2PA signing certificate or key)", file=p,
                               fix="point PERSONA_C2PA_CERT / PERSONA_C2PA_KEY at PEM files")
    return paths


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, WORKSPACE_ISSUER),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])


def make_workspace_certificate(folder: Path, persona: str) -> None:
    """A CA and a leaf issued by it, written to `folder` (ca.pem, chain.pem, key.pem with mode 0600).

    c2pa checks the signing certificate against the C2PA certificate profile before it signs: the
    digitalSignature key usage, an allowed extended key usage (emailProtection here; serverAuth or
    none at all is refused) and an authority key identifier. The profile describes an end-entity
    certificate issued by a CA, so persona issues one from its own CA rather than self-signing the
    signer (c2pa 0.91 tolerates a self-signed one with those extensions; stricter validators need
    not). The CA's private key is thrown away once the leaf is issued: it never signs anything else.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=3650)

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"persona CA for {persona}")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(sign=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(_name(f"persona for {persona}")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(sign=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    fd = os.open(folder / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "chain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))


def workspace_certificate(root: Path, persona: str) -> tuple[Path, Path]:
    """The workspace's (chain, key), made on first use; the folder is swapped in whole, so a killed
    run never leaves a key without its certificate."""
    folder = root / KEY_DIR
    if not ((folder / "chain.pem").is_file() and (folder / "key.pem").is_file()):
        with staged_dir(folder) as stage:
            os.chmod(stage, 0o700)
            make_workspace_certificate(stage, persona)
    return folder / "chain.pem", folder / "key.pem"


def _algorithm(key: Any, file: Path) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(key.curve.name)
        if alg:
            return alg
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise PersonaError(f"is a {type(key).__name__}, which C2PA cannot sign with", file=file,
                       fix="use an EC P-256/P-384/P-521, RSA (PS256) or Ed25519 key")


def _load_signing_material(cert: Path, key_file: Path) -> tuple[bytes, bytes, str, Any]:
    """PEM chain, PEM key, algorithm and the leaf certificate, checked to belong together."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    chain, key_pem = cert.read_bytes(), key_file.read_bytes()
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise PersonaError("is not a PEM certificate chain", file=cert,
                           fix="give the signing certificate first, then its issuing CA(s), in PEM") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise PersonaError("is an encrypted private key", file=key_file,
                           fix="give an unencrypted PEM key in a file only you can read (chmod 600)") from None
    except ValueError:
        raise PersonaError("is not a PEM private key", file=key_file, fix="give the signing key in PEM") from None
    pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*pub) != key.public_key().public_bytes(*pub):
        raise PersonaError("does not belong to the first certificate of the chain", file=key_file,
                           fix=f"use the key of the certificate at the top of {cert}")
    return chain, key_pem, _algorithm(key, key_file), certs[0]


# ---- what the manifest says ----------------------------------------------------------------------
def manifest(persona: str, consent: Any, title: str, consent_reference: bool = False) -> dict[str, Any]:
    """The manifest definition: created by a trained model, by persona, with this person's consent."""
    agent = {"name": "persona", "version": __version__}
    summary = None
    if consent is not None:
        summary = {"person": consent.person, "granted_by": consent.granted_by,
                   "date": consent.date.isoformat(), "scope": consent.scope}
        if consent_reference and consent.reference:  # where the signed record is: only when the user asks
            summary["reference"] = consent.reference
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": MIME,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": SOURCE_TYPE, "softwareAgent": agent,
                "description": f"AI-generated video: the likeness and voice of {persona} were synthesised by "
                               "models trained on recordings of them",
            }]}},
            {"label": LIKENESS, "data": {"persona": persona, "consent": summary}},
            # The person agreed to the scope above, not to their likeness training other models.
            {"label": "cawg.training-mining", "data": {"entries": {
                k: {"use": "notAllowed"} for k in ("cawg.ai_generative_training", "cawg.ai_training",
                                                   "cawg.ai_inference", "cawg.data_mining")}}},
        ],
    }


def sign_video(ws: Workspace, src: str | Path, dst: str | Path, title: str, consent_reference: bool = False) -> dict[str, Any]:
    """Copy `src` (an MP4) to `dst` with a signed C2PA manifest; returns what was signed and by whom.

    `dst` is written to a temporary file and renamed, so it is either absent, the old file, or a
    complete signed video.
    """
    import c2pa

    from persona.files import atomic_path

    user = user_certificate()
    kind = "user" if user else "workspace"
    cert, key_file = user or workspace_certificate(ws.root, ws.name)
    chain, key_pem, alg, leaf = _load_signing_material(cert, key_file)
    definition = manifest(ws.name, ws.pack.consent, title, consent_reference)
    info = c2pa.C2paSignerInfo(alg=alg, sign_cert=chain, private_key=key_pem, ta_url=None)
    context = c2pa.Context.from_dict({**_OFFLINE, "builder": {"thumbnail": {"enabled": False}}})
    try:
        with (atomic_path(dst) as tmp, c2pa.Signer.from_info(info) as signer,
              c2pa.Builder(definition, context) as builder, open(src, "rb") as source, open(tmp, "w+b") as out):
            builder.sign(signer, MIME, source, out)
    except c2pa.C2paError as e:
        if kind == "workspace":
            raise
        raise PersonaError(f"C2PA refused this signing certificate ({e})", file=cert,
                           fix="use a signing certificate with the digitalSignature key usage, the emailProtection "
                               "or documentSigning extended key usage and an authority key identifier, "
                               "followed by its CA, in PEM") from None
    return {"signed": True, "signer": kind, "certificate": str(cert), "subject": leaf.subject.rfc4514_string(),
            "algorithm": alg, "consent_reference": bool(consent_reference and ws.pack.consent and ws.pack.consent.reference),
            "note": INTEGRITY_ONLY if kind == "workspace" else "signed with your certificate"}


# ---- reading it back -----------------------------------------------------------------------------
def _trust_anchors() -> str | None:
    """Root certificates the user trusts (PERSONA_C2PA_TRUST or [c2pa] trust: a PEM file)."""
    path = os.environ.get("PERSONA_C2PA_TRUST") or _user_c2pa_config()[0].get("trust")
    if not path:
        return None
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise PersonaError("does not exist (named as C2PA trust anchors)", file=p,
                           fix="point PERSONA_C2PA_TRUST at a PEM file of root certificates, or unset it")
    return p.read_text(encoding="utf-8")


def verify_video(path: str | Path) -> dict[str, Any]:
    """What the video's Content Credentials say, and whether they still match the file.

    status: "valid" (manifest intact, signature good), "tampered" (the file or the manifest changed
    after signing) or "no manifest". `trusted` is whether the signer chains to a root you trust.
    """
    import c2pa

    path = Path(path)
    if not path.is_file():
        raise PersonaError("does not exist", file=path, fix="check the path")
    with open(path, "rb") as f:
        if f.read(12)[4:8] != b"ftyp":  # every MP4 (ISO BMFF) file starts with its ftyp box
            raise PersonaError("is not an MP4 video", file=path,
                               fix="give the .mp4 that persona wrote (Content Credentials are read from MP4 files)")
    report: dict[str, Any] = {"file": str(path), "status": "no manifest", "ai_generated": None,
                              "digital_source_type": None, "generator": None, "title": None, "persona": None,
                              "consent": None, "signer": None, "trusted": False, "problems": []}
    settings: dict[str, Any] = dict(_OFFLINE)
    anchors = _trust_anchors()
    if anchors:
        settings["trust"] = {"user_anchors": anchors}
    try:
        with open(path, "rb") as f, c2pa.Reader(MIME, f, context=c2pa.Context.from_dict(settings)) as reader:
            store = json.loads(reader.json())
            state = reader.get_validation_state()
    except c2pa.C2paError.ManifestNotFound:
        return report
    except c2pa.C2paError as e:  # an MP4 whose structure or manifest no longer parses: damaged after writing
        report.update(status="tampered", problems=[f"the file or its manifest cannot be parsed ({e})"])
        return report
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    assertions = {a["label"]: a.get("data", {}) for a in active.get("assertions", [])}
    actions = next((d.get("actions", []) for k, d in assertions.items() if k.split(".v")[0] == "c2pa.actions"), [])
    source = next((a.get("digitalSourceType") for a in actions if a.get("action") == "c2pa.created"), None)
    gen = (active.get("claim_generator_info") or [{}])[0]
    likeness = assertions.get(LIKENESS, {})
    sig = active.get("signature_info", {})
    failures = store.get("validation_results", {}).get("activeManifest", {}).get("failure", [])
    # An unknown signer is not damage: `trusted` reports it. Everything else means the bytes changed.
    problems = [f"{f['code']}: {f.get('explanation', '')}" for f in failures if not f["code"].startswith("signingCredential.untrusted")]
    report.update(
        status="tampered" if problems else "valid", problems=problems,
        ai_generated=source in AI_SOURCE_TYPES, digital_source_type=source,
        generator=" ".join(str(gen[k]) for k in ("name", "version") if gen.get(k)) or None,
        title=active.get("title"), persona=likeness.get("persona"), consent=likeness.get("consent"),
        signer={"name": sig.get("common_name"), "issuer": sig.get("issuer"), "algorithm": sig.get("alg"),
                "kind": "workspace (self-signed)" if sig.get("issuer") == WORKSPACE_ISSUER else "certificate",
                "signed_at": sig.get("time")},
        trusted=state == "Trusted",
    )
    if report["signer"]["kind"].startswith("workspace"):
        report["note"] = ("signed with a persona workspace's own self-signed certificate, which nobody vouches for: "
                          "it proves the file is unchanged since it was signed, not who made it")
    return report
