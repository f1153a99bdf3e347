"""Check a folder of carried wheels against wheels.txt before a GPU call (prepare.sh runs this):

- exactly the pinned wheels, one version of each (two versions of one stop the install there);
- every wheel built for CPython 3.12 on manylinux x86-64 (or pure Python);
- every requirement of every wheel (its markers read as on the GPU machine: Python 3.12, Linux, x86-64) met by
  a carried wheel of a matching version or by a package of the image (image-packages.txt);
- all together small enough for the device tool (the working tree and the carried paths: 64 MiB a call).

    python benchmarks/gpu/check_wheels.py .whl [--max-mib 56]

Prints one line per problem and exits 1, or one line saying the set is complete.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip's own copy, wherever pip is
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef,assignment]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef,assignment]

HERE = Path(__file__).resolve().parent
# the GPU machine's interpreter and platform, for requirement markers
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_release": "",
          "platform_version": "", "implementation_version": "3.12.3",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def pins(path: Path = HERE / "wheels.txt") -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = Version(version)
    return out


def image(path: Path = HERE / "image-packages.txt") -> set[str]:
    words = [w for line in path.read_text().splitlines() if not line.startswith("#") for w in line.split()]
    return {canonicalize_name(w) for w in words}


def compatible(tag) -> bool:  # type: ignore[no-untyped-def]
    interpreter_ok = (tag.interpreter in ("py3", "py312", "cp312")
                      or (tag.abi == "abi3" and tag.interpreter.startswith("cp3")))
    platform_ok = tag.platform == "any" or (tag.platform.startswith("manylinux") and tag.platform.endswith("x86_64"))
    return interpreter_ok and platform_ok


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def problems(folder: Path, max_mib: float) -> list[str]:
    wanted, there = pins(), image()
    found: dict[str, list[tuple[Version, Path]]] = {}
    out = []
    wheels = sorted(folder.glob("*.whl"))
    for wheel in wheels:
        name, version, _, tags = parse_wheel_filename(wheel.name)
        found.setdefault(str(name), []).append((version, wheel))
        if not any(compatible(t) for t in tags):
            out.append(f"{wheel.name}: not built for CPython 3.12 on manylinux x86-64")
    for carried, versions in found.items():
        if len(versions) > 1:
            out.append(f"{carried}: {len(versions)} versions ({', '.join(str(v) for v, _ in versions)}); keep one")
        if carried not in wanted:
            out.append(f"{carried}: not in wheels.txt (remove {versions[0][1].name})")
    for pinned, version in wanted.items():
        if pinned not in found:
            out.append(f"{pinned}=={version}: missing from {folder}")
        elif all(v != version for v, _ in found[pinned]):
            out.append(f"{pinned}: {found[pinned][0][0]} carried, wheels.txt pins {version}")
    for wheel in wheels:
        for text in requirements(wheel):
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(TARGET):
                continue  # another Python, platform or an extra
            needed = canonicalize_name(req.name)
            if needed in found:
                if not any(req.specifier.contains(v, prereleases=True) for v, _ in found[needed]):
                    out.append(f"{wheel.name} needs {req}, the carried {needed} is {found[needed][0][0]}")
            elif needed not in there:
                out.append(f"{wheel.name} needs {req}: neither carried nor on the GPU machine's image")
    total = sum(w.stat().st_size for w in wheels) / 2**20
    if total > max_mib:
        out.append(f"the wheels take {total:.1f} MiB, over {max_mib} MiB (the device tool carries 64 MiB a call)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--max-mib", type=float, default=56.0)
    args = p.parse_args()
    found = problems(args.folder, args.max_mib)
    for line in found:
        print(f"check_wheels: {line}")
    if found:
        sys.exit(1)
    n = len(list(args.folder.glob("*.whl")))
    size = sum(w.stat().st_size for w in args.folder.glob("*.whl")) / 2**20
    print(f"check_wheels: {n} wheels, {size:.1f} MiB, every requirement met for CPython 3.12 on Linux x86-64")


if __name__ == "__main__":
    main()
