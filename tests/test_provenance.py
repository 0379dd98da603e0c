"""Content Credentials: real MP4s signed with c2pa and read back, offline."""

import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from persona import __version__
from persona.errors import PersonaError
from persona.inference.assemble import _frames, burn_label, label_box, label_font
from persona.media import iter_frames, write_video
from persona.provenance import KEY_DIR, SOURCE_TYPE, WORKSPACE_ISSUER, sign_video, verify_video
from persona.workspace import Consent, Workspace

REFERENCE = "consent/ada-lovelace-2025-05-01.pdf"


@pytest.fixture(autouse=True)
def no_user_config(tmp_path, monkeypatch):
    """The machine's own signing setup never leaks into a test."""
    for var in ("PERSONA_C2PA_CERT", "PERSONA_C2PA_KEY", "PERSONA_C2PA_TRUST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PERSONA_CONFIG", str(tmp_path / "absent-config.toml"))


@pytest.fixture
def ws(tmp_path):
    consent = Consent(person="Ada Lovelace", granted_by="Ada Lovelace", date=dt.date(2025, 5, 1),
                      scope="educational explainer videos", reference=REFERENCE)
    return Workspace.create(tmp_path / "ada", "Ada Lovelace", consent=consent)


@pytest.fixture
def video(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(8)]
    tone = np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000).astype(np.float32) * 0.1
    return write_video(tmp_path / "plain.mp4", frames, 8, audio=tone, sr=16000, preset="ultrafast")


def _certificate_chain(folder: Path, org: str, tls: bool = False) -> tuple[Path, Path, Path]:
    """A user's CA + leaf as PEM files: (chain, key, root); `tls` gives the leaf a web server's
    extended key usage (serverAuth), which C2PA does not accept for signing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(sign):
        return x509.KeyUsage(sign, False, False, False, False, not sign, not sign, False, False)

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("Studio Root")).issuer_name(name("Studio Root"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30)).add_extension(x509.BasicConstraints(True, 0), True)
          .add_extension(usage(False), True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
    eku = ExtendedKeyUsageOID.SERVER_AUTH if tls else ExtendedKeyUsageOID.EMAIL_PROTECTION
    leaf = (x509.CertificateBuilder().subject_name(name("Studio Signer")).issuer_name(name("Studio Root"))
            .public_key(key.public_key()).serial_number(2).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).add_extension(x509.BasicConstraints(False, None), True)
            .add_extension(usage(True), True)
            .add_extension(x509.ExtendedKeyUsage([eku]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    chain = folder / "chain.pem"
    chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (folder / "root.pem").write_bytes(ca.public_bytes(pem))
    return chain, folder / "key.pem", folder / "root.pem"


def test_signed_video_says_ai_generated_with_persona_and_consent(ws, video, tmp_path):
    out = tmp_path / "final.mp4"
    signed = sign_video(ws, video, out, "How computers see")
    assert signed["signer"] == "workspace" and "not who made it" in signed["note"]
    r = verify_video(out)
    assert r["status"] == "valid" and r["problems"] == []
    assert r["ai_generated"] is True and r["digital_source_type"] == SOURCE_TYPE
    assert SOURCE_TYPE.endswith("/trainedAlgorithmicMedia")
    assert r["generator"] == f"persona {__version__}" and r["title"] == "How computers see"
    assert r["persona"] == "Ada Lovelace"
    assert r["consent"] == {"person": "Ada Lovelace", "granted_by": "Ada Lovelace", "date": "2025-05-01",
                            "scope": "educational explainer videos"}
    assert r["signer"]["kind"] == "workspace (self-signed)" and r["signer"]["issuer"] == WORKSPACE_ISSUER
    assert r["trusted"] is False and "not who made it" in r["note"]
    assert r["signer"]["signed_at"] is None  # no timestamp authority was asked (signing is offline)
    assert len(list(iter_frames(out))) == 8  # still the same playable video


def test_consent_reference_only_when_asked(ws, video, tmp_path):
    plain, with_ref = tmp_path / "a.mp4", tmp_path / "b.mp4"
    assert sign_video(ws, video, plain, "t")["consent_reference"] is False
    assert REFERENCE.encode() not in plain.read_bytes()
    assert sign_video(ws, video, with_ref, "t", consent_reference=True)["consent_reference"] is True
    assert verify_video(with_ref)["consent"]["reference"] == REFERENCE
    assert "reference" not in verify_video(plain)["consent"]


def test_workspace_certificate_is_made_once_with_a_private_key(ws, video, tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    sign_video(ws, video, tmp_path / "a.mp4", "t")
    folder = ws.root / KEY_DIR
    chain = (folder / "chain.pem").read_bytes()
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    leaf, ca = x509.load_pem_x509_certificates(chain)
    assert leaf.issuer == ca.subject != leaf.subject  # issued by a CA: c2pa refuses a self-signed signer
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    sign_video(ws, video, tmp_path / "b.mp4", "t")
    assert (folder / "chain.pem").read_bytes() == chain  # reused, not remade


def test_a_flipped_byte_reads_as_tampered(ws, video, tmp_path):
    out = tmp_path / "final.mp4"
    sign_video(ws, video, out, "t")
    data = bytearray(out.read_bytes())
    data[data.index(b"mdat") + 100] ^= 0x01  # one bit of the picture/sound data
    out.write_bytes(bytes(data))
    r = verify_video(out)
    assert r["status"] == "tampered" and any("mismatch" in p for p in r["problems"])


def test_video_without_manifest_says_so(video):
    r = verify_video(video)
    assert r["status"] == "no manifest" and r["ai_generated"] is None and r["signer"] is None


def test_not_an_mp4_is_one_clear_error(tmp_path):
    f = tmp_path / "notes.mp4"
    f.write_text("not a video")
    with pytest.raises(PersonaError, match="is not an MP4"):
        verify_video(f)


def test_user_certificate_signs_and_can_be_trusted(ws, video, tmp_path, monkeypatch):
    chain, key, root = _certificate_chain(tmp_path / "mine", "Example Studio")
    monkeypatch.setenv("PERSONA_C2PA_CERT", str(chain))
    monkeypatch.setenv("PERSONA_C2PA_KEY", str(key))
    out = tmp_path / "final.mp4"
    assert sign_video(ws, video, out, "t")["signer"] == "user"
    assert not (ws.root / KEY_DIR).exists()  # no workspace certificate needed
    r = verify_video(out)
    assert r["status"] == "valid" and r["signer"]["name"] == "Studio Signer" and r["signer"]["kind"] == "certificate"
    assert r["trusted"] is False and "note" not in r
    monkeypatch.setenv("PERSONA_C2PA_TRUST", str(root))
    assert verify_video(out)["trusted"] is True


def test_user_certificate_from_the_user_config_file(ws, video, tmp_path, monkeypatch):
    chain, key, _ = _certificate_chain(tmp_path / "mine", "Example Studio")
    config = tmp_path / "config.toml"
    config.write_text(f'[c2pa]\ncert = "{chain}"\nkey = "{key}"\n')
    monkeypatch.setenv("PERSONA_CONFIG", str(config))
    assert sign_video(ws, video, tmp_path / "final.mp4", "t")["signer"] == "user"


def test_a_certificate_c2pa_refuses_is_one_clear_error(ws, video, tmp_path, monkeypatch):
    chain, key, _ = _certificate_chain(tmp_path / "mine", "Example Studio", tls=True)
    monkeypatch.setenv("PERSONA_C2PA_CERT", str(chain))
    monkeypatch.setenv("PERSONA_C2PA_KEY", str(key))
    out = tmp_path / "final.mp4"
    with pytest.raises(PersonaError, match="extended key usage"):
        sign_video(ws, video, out, "t")
    assert not out.exists() and not list(tmp_path.glob(".final*"))  # nothing unsigned under the final name


def test_a_key_that_does_not_match_the_certificate_is_refused(ws, video, tmp_path, monkeypatch):
    chain, _, _ = _certificate_chain(tmp_path / "one", "A")
    _, other_key, _ = _certificate_chain(tmp_path / "two", "B")
    monkeypatch.setenv("PERSONA_C2PA_CERT", str(chain))
    monkeypatch.setenv("PERSONA_C2PA_KEY", str(other_key))
    with pytest.raises(PersonaError, match="does not belong"):
        sign_video(ws, video, tmp_path / "final.mp4", "t")
    monkeypatch.delenv("PERSONA_C2PA_KEY")
    with pytest.raises(PersonaError, match="PERSONA_C2PA_KEY"):
        sign_video(ws, video, tmp_path / "final.mp4", "t")


def test_cli_verify_json(ws, video, tmp_path):
    out = tmp_path / "final.mp4"
    sign_video(ws, video, out, "t")
    cmd = [sys.executable, "-m", "persona", "verify"]
    done = subprocess.run([*cmd, str(out), "--json"], capture_output=True, text=True, timeout=120,
                          env={**_env(tmp_path)})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "valid" and report["ai_generated"] and report["persona"] == "Ada Lovelace"
    assert "valid" in done.stderr and "not who made it" in done.stderr
    missing = subprocess.run([*cmd, str(video)], capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert missing.returncode == 1 and "no Content Credentials" in missing.stderr


def _env(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_C2PA_")}
    return {**env, "PERSONA_CONFIG": str(tmp_path / "absent-config.toml"), "COLUMNS": "200"}


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_visible_label_changes_pixels_only_in_its_corner(corner):
    h, w = 144, 256
    frame = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    font = label_font(h)
    out = burn_label(frame, corner, font)
    changed = np.argwhere((out != frame).any(axis=2))
    assert len(changed) > 0
    rows, cols = changed[:, 0], changed[:, 1]
    top, left = corner.startswith("top"), corner.endswith("left")
    assert (rows < h // 4).all() if top else (rows >= 3 * h // 4).all()
    assert (cols < w // 3).all() if left else (cols >= 2 * w // 3).all()
    x0, y0, x1, y1 = label_box((w, h), corner, font)
    assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1


def test_assembly_frame_loop_burns_the_label_in_the_chosen_corner(video):
    plain = [f for _, f in iter_frames(video)]
    labelled = list(_frames([video], [], 8, burn=False, corner="bottom-left"))
    assert len(labelled) == len(plain)
    x0, y0, x1, y1 = label_box((96, 64), "bottom-left", label_font(64))
    assert x0 < 10 and y1 > 54  # hugs the bottom-left corner
    for a, b in zip(plain, labelled):
        rows, cols = np.nonzero((a != b).any(axis=2))
        assert len(rows) and rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1
