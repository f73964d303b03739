"""Embedded model fetches: two first-time fetches into one cache at once both succeed (one waits for the other),
and the fetch says what it downloads and where. The package index is a local folder (pip --find-links)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import textwrap
import zipfile


def _wheel(folder, name="evalharness_test_model", payload=b"GGUF" + bytes(range(256)) * 64):
    """A minimal valid wheel holding one model file, as the embedded models' PyPI packages do."""
    folder.mkdir()
    path = folder / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}/model.gguf": payload,
             f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            b"Tag: py3-none-any\n"}
    record = "".join(f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
                     f"{len(d)}\n" for n, d in files.items()) + f"{name}-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
        zf.writestr(f"{name}-1.0.dist-info/RECORD", record)
    return name, hashlib.sha256(payload).hexdigest()


def test_two_first_time_fetches_at_once_both_succeed(tmp_path):
    name, digest = _wheel(tmp_path / "index")
    code = textwrap.dedent(f"""
        import sys
        from evalharness import models
        models.EMBEDDED["tiny"] = models.Embedded("tiny.gguf", {digest!r}, ("{name.replace('_', '-')}==1.0",),
                                                  ("{name}/model.gguf",), "MIT")
        print(models.fetch_embedded("tiny"))
    """)
    env = {"PATH": "/usr/bin:/bin", "EVALHARNESS_CACHE": str(tmp_path / "cache"), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path / "index"), "HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    folder = tmp_path / "cache" / "models" / "tiny"
    assert {o[0].strip() for o in outs} == {str(folder)}
    assert hashlib.sha256((folder / "tiny.gguf").read_bytes()).hexdigest() == digest
    errs = "".join(o[1] for o in outs)
    assert errs.count(f"fetching tiny (tiny.gguf, MIT) once from the package index into {folder}") == 1, errs
    assert not list(folder.glob("*.partial")) and not list(folder.glob(".fetch-*"))
