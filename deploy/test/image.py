"""Image checks for deploy/check.sh, beside hadolint: what deploy/Dockerfile promises.

  * every base image is pinned by digest (the ARG defaults the FROM lines use);
  * the builder runs on $BUILDPLATFORM and cross-compiles for $TARGETARCH (no emulation),
    for both amd64 and arm64;
  * the OCI labels carry version and revision, and the revision reaches the binary
    (dtr_build_info);
  * the binary comes from the `dist` profile, which strips and optimises (Cargo.toml);
  * the build machine's own arch gets the profile-guided binary (bench/pgo-build.sh), and
    the build context keeps what its training runs.
"""
import os
import re
import tomllib


def run(g):
    ok, bad, check, root = g["ok"], g["bad"], g["check"], g["root"]
    print("--- image: deploy/Dockerfile")
    with open(os.path.join(root, "deploy", "Dockerfile")) as f:
        text = f.read()
    # Join continued lines, drop comments.
    lines = [l for l in text.replace("\\\n", " ").splitlines() if not l.lstrip().startswith("#")]
    args = {}
    for l in lines:
        m = re.match(r"\s*ARG\s+(\w+)=(\S+)", l)
        if m:
            args[m.group(1)] = m.group(2)
    froms = [l.split() for l in lines if l.strip().upper().startswith("FROM ")]
    check(len(froms) == 2, f"image: two stages (builder, runtime): {len(froms)}")
    stages = set()
    for parts in froms:
        words = [w for w in parts[1:] if not w.startswith("--")]
        ref = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        m = re.fullmatch(r"\$\{?(\w+)\}?", ref)
        image = args.get(m.group(1), "") if m else ref
        check(re.search(r"@sha256:[0-9a-f]{64}$", image) is not None,
              f"image: base {ref} pinned by digest ({image.split('@')[0]})")
    builder = next((p for p in froms if "builder" in p), [])
    check("--platform=$BUILDPLATFORM" in builder,
          "image: the builder runs on the build platform (cross-compiles, no emulation)")
    for arch, triple in (("amd64", "x86_64-unknown-linux-gnu"), ("arm64", "aarch64-unknown-linux-gnu")):
        check(f"{arch}) triple={triple}" in text,
              f"image: TARGETARCH {arch} builds {triple}")
        env = triple.upper().replace("-", "_")
        check(f"CARGO_TARGET_{env}_LINKER=" in text, f"image: {triple} has its cross linker")
    for label in ("title", "version", "revision", "created"):
        check(f"org.opencontainers.image.{label}=" in text, f"image: OCI label image.{label}")
    check('DTR_BUILD_REVISION="$REVISION"' in text,
          "image: the revision reaches dtr_build_info (DTR_BUILD_REVISION at build time)")
    with open(os.path.join(root, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    profiles = cargo.get("profile", {})
    dist = profiles.get("dist", {})
    # dist inherits release: its own settings, else release's.
    effective = {**profiles.get("release", {}), **dist}
    check(dist.get("inherits") == "release" and effective.get("strip") in ("symbols", True)
          and effective.get("lto") in ("fat", True) and effective.get("codegen-units") == 1,
          "image: Cargo profile dist = release + fat LTO, one codegen unit, stripped")
    check("--profile dist" in text and "/dist/dtr-proxy" in text,
          "image: the image ships the dist build")
    check("USER 65532:65532" in text, "image: runs as the numeric non-root user")
    # The build machine's own arch gets the profile-guided binary, trained by the benchmarks;
    # a cross build (which cannot run its instrumented binary) the plain one.
    check(args.get("PGO") == "on", "image: profile-guided build on by default (ARG PGO=on)")
    check('[ "$PGO" = on ] && [ "$TARGETARCH" = "$BUILDARCH" ]' in text
          and "bash bench/pgo-build.sh --profile dist --no-latency --out /out/dtr-proxy" in text,
          "image: the native arch's binary is profile-guided (bench/pgo-build.sh, dist profile)")
    with open(os.path.join(root, "deploy", "Dockerfile.dockerignore")) as f:
        # "bench", "bench/" and "**/bench" all leave it out.
        ignored = {l.strip().removeprefix("**/").rstrip("/") for l in f if l.strip() and not l.startswith("#")}
    needed = ("bench", "examples", "tests")
    check(not ignored.intersection(needed),
          f"image: the build context keeps what the training runs ({', '.join(needed)})")
