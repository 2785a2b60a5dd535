"""Builds a pure-Python wheel from pkg/pyproject.toml with the standard library alone.

    python3 make_wheel.py PKG-DIR OUT-DIR      # prints the wheel's path

A wheel is a zip file (PEP 427): the package's files plus a `<name>-<version>.dist-info`
folder holding METADATA, WHEEL and RECORD (every file's sha256 and size). `pip wheel`
needs setuptools *and* the `wheel` package, which a machine without a package index
may lack; this writes the same thing for a pure-Python package listed in
`[tool.setuptools] packages`. Entries are sorted and dated 1980-01-01, so the same
source always gives the same bytes (and the bundle the same sha256).
"""

import base64
import hashlib
import os
import re
import sys
import tomllib  # Python 3.11+
import zipfile

#: The earliest date a zip entry can carry: a fixed date keeps builds reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def record_hash(data):
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def package_files(pkg_dir, package):
    """(path in the wheel, bytes) for each file of `package`, skipping byte code."""
    root = os.path.join(pkg_dir, *package.split("."))
    if not os.path.isfile(os.path.join(root, "__init__.py")):
        sys.exit(f"make_wheel: {root} is not a package (no __init__.py)")
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                yield os.path.relpath(path, pkg_dir).replace(os.sep, "/"), file.read()


def build(pkg_dir, out_dir):
    with open(os.path.join(pkg_dir, "pyproject.toml"), "rb") as file:
        pyproject = tomllib.load(file)
    project = pyproject["project"]
    name, version = project["name"], project["version"]
    # Wheel file names use the normalised name with "_" (PEP 427, PEP 503).
    dist = re.sub(r"[-_.]+", "_", name).lower()
    dist_info = f"{dist}-{version}.dist-info"

    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if "description" in project:
        metadata.append(f"Summary: {project['description']}")
    if "requires-python" in project:
        metadata.append(f"Requires-Python: {project['requires-python']}")
    wheel = ["Wheel-Version: 1.0", "Generator: newt make_wheel.py", "Root-Is-Purelib: true",
             "Tag: py3-none-any"]

    entries = []
    for package in pyproject["tool"]["setuptools"]["packages"]:
        entries.extend(package_files(pkg_dir, package))
    entries.append((f"{dist_info}/METADATA", ("\n".join(metadata) + "\n\n").encode()))
    entries.append((f"{dist_info}/WHEEL", ("\n".join(wheel) + "\n").encode()))
    record = [f"{path},{record_hash(data)},{len(data)}" for path, data in entries]
    record.append(f"{dist_info}/RECORD,,")  # RECORD cannot hold its own hash
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))

    os.makedirs(out_dir, exist_ok=True)
    wheel_path = os.path.join(out_dir, f"{dist}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in entries:
            info = zipfile.ZipInfo(path, date_time=ZIP_EPOCH)
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel_path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: make_wheel.py PKG-DIR OUT-DIR")
    print(build(sys.argv[1], sys.argv[2]))
