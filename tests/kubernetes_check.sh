#!/usr/bin/env bash
# Checks deploy/kubernetes offline, without cargo (tests/run.sh runs it after
# install_deps_check.sh; deploy/install-deps.sh --test installs what it needs):
#  1. renders the base and every overlay with each kubectl given (the kubectl on PATH, and
#     RACKCAST_EXTRA_KUBECTL, e.g. Debian 12's kubectl 1.20 with kustomize v2.0.3, which
#     only knows the older kustomization fields); every kubectl must give the same objects;
#  2. validates every rendered object against the Kubernetes 1.30 schemas
#     (kubernetes-validate --strict: unknown fields are errors). The PodMonitor, a
#     Prometheus Operator CRD with no schema there, is checked by kubernetes_check.py
#     against what it must select instead;
#     kubernetes_check.py also checks what the manifests promise each other and the config
#     (discovery names = headless Services, probes, grace > drain_grace, security context,
#     the secret files, the GPU overlays, the dashboard);
#  3. yamllint --strict on the committed YAML (deploy/kubernetes/.yamllint);
#  4. the container image's runtime packages (install-deps.sh --runtime, which the
#     Containerfile's runtime stage runs): every library the binary links (the pkg-config
#     modules of the -sys crates in Cargo.lock) is there, no -dev package or build tool;
#  5. no secret value is committed: the generated secret files are gitignored and none of
#     their values, nor any Secret object, is in a tracked file.
# Renders from a copy, with throwaway secrets: the real ones (base/secrets/) are not read
# for rendering. Exits non-zero on any failure, after running every check.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

failures=0
fail() { echo "kubernetes_check: FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "kubernetes_check: ok: $*"; }

# shellcheck source=deploy/install-deps.sh
source deploy/install-deps.sh # packages, build_only, dev_runtime, runtime_packages, k8s_venv
venv=$(k8s_venv)
py=$venv/bin/python
validate=$venv/bin/kubernetes-validate
[ -x "$validate" ] || { echo "kubernetes_check: FAIL: no $validate (run deploy/install-deps.sh --test)" >&2; exit 1; }
command -v kubectl >/dev/null || { echo "kubernetes_check: FAIL: no kubectl on PATH (deploy/install-deps.sh --test)" >&2; exit 1; }
command -v yamllint >/dev/null || { echo "kubernetes_check: FAIL: no yamllint on PATH (deploy/install-deps.sh --test)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A copy of deploy/ (the monitoring overlay uses deploy/monitoring as a base) with fresh
# throwaway secrets from make-secrets.sh.
mkdir -p "$work/tree"
cp -r deploy "$work/tree/"
rm -rf "$work/tree/deploy/kubernetes/base/secrets"
"$work/tree/deploy/kubernetes/make-secrets.sh" >/dev/null
for f in relay-secret publish-token-secret; do
  s="$work/tree/deploy/kubernetes/base/secrets/$f"
  [[ "$(cat "$s")" =~ ^[0-9a-f]{64}$ ]] || fail "make-secrets.sh wrote $(wc -c <"$s") bytes to $f, not 64 hex digits"
  [ "$(stat -c %a "$s")" = 600 ] || fail "make-secrets.sh left $f mode $(stat -c %a "$s"), not 600"
done
before=$(cat "$work/tree/deploy/kubernetes/base/secrets/relay-secret")
"$work/tree/deploy/kubernetes/make-secrets.sh" >/dev/null
[ "$(cat "$work/tree/deploy/kubernetes/base/secrets/relay-secret")" = "$before" ] || fail "make-secrets.sh rewrote an existing secret without --force"

# 1. Render with every kubectl.
kubectls=(kubectl)
[ -n "${RACKCAST_EXTRA_KUBECTL:-}" ] && kubectls+=("$RACKCAST_EXTRA_KUBECTL")
targets=(base overlays/nvidia overlays/intel overlays/monitoring)
for k in "${kubectls[@]}"; do
  kv=$("$k" version --client 2>/dev/null | head -n 1 || true)
  echo "kubernetes_check: rendering with $k ($kv)"
done
for t in "${targets[@]}"; do
  name=${t//\//-}
  for i in "${!kubectls[@]}"; do
    if ! "${kubectls[$i]}" kustomize "$work/tree/deploy/kubernetes/$t" >"$work/$name.$i.yaml" 2>"$work/$name.$i.err"; then
      fail "${kubectls[$i]} kustomize $t: $(grep -v '^# Warning' "$work/$name.$i.err" | head -n 5)"
      continue
    fi
    if ((i > 0)) && [ -s "$work/$name.0.yaml" ]; then
      "$py" - "$work/$name.0.yaml" "$work/$name.$i.yaml" <<'PY' || fail "$t: ${kubectls[0]} and ${kubectls[$i]} render different objects"
import re, sys, yaml
# Generated names' hash suffixes differ between kustomize versions (v2 hashed otherwise).
def objs(p):
    text = re.sub(r"\b(rackcast-(config|secrets))-[a-z0-9]{10}\b", r"\1-HASH", open(p).read())
    docs = sorted(yaml.safe_load_all(text), key=lambda d: (d["kind"], d["metadata"]["name"]))
    for d in docs:
        if d["metadata"].get("annotations") == {}:  # v2's replaced ConfigMap
            del d["metadata"]["annotations"]
        if d["kind"] == "Secret":  # v5 folds the base64 lines
            d["data"] = {k: "".join(v.split()) for k, v in d.get("data", {}).items()}
    return docs
a, b = objs(sys.argv[1]), objs(sys.argv[2])
if a != b:
    import difflib, json
    show = lambda docs: json.dumps(docs, indent=1, sort_keys=True).splitlines()  # noqa: E731
    print("\n".join(list(difflib.unified_diff(show(a), show(b), lineterm="", n=2))[:40]), file=sys.stderr)
    sys.exit(1)
PY
    fi
  done
  [ -s "$work/$name.0.yaml" ] && ok "$t renders ($(grep -c '^kind:' "$work/$name.0.yaml") objects, ${#kubectls[@]} kubectl)"
done

# 2. Schemas, then what the objects promise each other.
for t in "${targets[@]}"; do
  f="$work/${t//\//-}.0.yaml"
  [ -s "$f" ] || continue
  if out=$("$validate" -k 1.30.0 --strict --quiet "$f" 2>&1); then
    ok "$t: every object valid against Kubernetes 1.30 (strict)$(grep -q 'kind: PodMonitor' "$f" && echo ', PodMonitor: no schema, checked below')"
  else
    # A CRD without a schema is a warning; any ERROR is a failure.
    fail "$t: kubernetes-validate: $(grep -v '^WARN' <<<"$out")"
  fi
done
if "$py" tests/kubernetes_check.py "$work/tree/deploy" "$work"; then
  ok "manifests, config and overlays agree (kubernetes_check.py)"
else
  fail "kubernetes_check.py (above)"
fi

# 3. yamllint on the committed YAML.
mapfile -t yaml_files < <(git ls-files 'deploy/kubernetes/*.yaml' 'deploy/kubernetes/*.yml' 'deploy/monitoring/*.yaml' 'deploy/monitoring/*.yml')
mapfile -t -O "${#yaml_files[@]}" yaml_files < <(git ls-files --others --exclude-standard 'deploy/kubernetes/*.yaml' 'deploy/monitoring/*.yaml')
if out=$(yamllint --strict -c deploy/kubernetes/.yamllint "${yaml_files[@]}" 2>&1); then
  ok "yamllint: ${#yaml_files[@]} files"
else
  fail "yamllint: $out"
fi

# 4. The image's runtime packages.
containerfile=deploy/kubernetes/Containerfile
mapfile -t runtime < <(runtime_packages)
in_list() { local p; for p in "${@:2}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
for p in "${runtime[@]}"; do
  [[ "$p" == *-dev ]] && fail "runtime package $p is a -dev package"
  in_list "$p" "${build_only[@]}" && fail "runtime package $p is a build tool"
  [[ "$p" =~ ^(gcc|g\+\+|cpp|clang|make|pkg-config|pkgconf|cargo|rustc|rustup|libc6-dev)(-.*)?$ ]] && fail "runtime package $p is a build tool"
done
for p in "${packages[@]}"; do
  if in_list "$p" "${build_only[@]}"; then continue; fi
  want=$p
  [[ "$p" == *-dev ]] && want=${dev_runtime[$p]:-}
  in_list "$want" "${runtime[@]}" || fail "build package $p has no runtime counterpart in install-deps.sh --runtime"
  # The -dev package's own dependencies name the library it maps to.
  if [[ "$p" == *-dev ]] && deps=$(dpkg-query -W -f='${Depends}' "$p" 2>/dev/null); then
    [[ ", $deps" == *", $want "* || ", $deps" == *", $want,"* || ", $deps" == *", $want" ]] || fail "$p does not depend on $want (dev_runtime in install-deps.sh)"
  fi
done
# The libraries the binary links: the pkg-config modules of the -sys crates in Cargo.lock
# (tests/install_deps_check.sh's table), each library file's Debian package.
eval "$(sed -n '/^declare -A sys_module=(/,/^)/p' tests/install_deps_check.sh)"
linked=0
while read -r crate; do
  module=${sys_module[$crate]:-}
  [ -n "$module" ] || continue
  libdir=$(pkg-config --variable=libdir "$module" 2>/dev/null) || { fail "pkg-config does not know $module (deploy/install-deps.sh)"; continue; }
  for l in $(pkg-config --libs-only-l "$module"); do
    file=$(readlink -f "$libdir/lib${l#-l}.so" 2>/dev/null || true)
    owner=$(dpkg-query -S "$file" 2>/dev/null | head -n 1 | cut -d: -f1)
    if [ -z "$owner" ]; then fail "no Debian package owns lib${l#-l}.so ($module)"; continue; fi
    in_list "$owner" "${runtime[@]}" || fail "the binary links lib${l#-l} ($module, package $owner), which install-deps.sh --runtime does not install"
    linked=$((linked + 1))
  done
done < <(sed -n 's/^name = "\(.*-sys\)"$/\1/p' Cargo.lock | sort -u)
((linked >= 5)) || fail "found only $linked linked libraries through pkg-config"
# The Containerfile: both stages on Debian 12, the build with install-deps.sh and the
# locked release build, the runtime stage with --runtime only, the manifests' uid.
runtime_stage=$(awk '/^FROM /{ n++ } n >= 2' "$containerfile")
grep -qE '^ARG DEBIAN_IMAGE=.*debian:(12|bookworm)' "$containerfile" || fail "$containerfile: base image is not Debian 12"
[ "$(grep -c '^FROM \${DEBIAN_IMAGE}' "$containerfile")" = 2 ] || fail "$containerfile: not two stages on \${DEBIAN_IMAGE}"
grep -q '^RUN ./deploy/install-deps.sh$' "$containerfile" || fail "$containerfile: build stage does not run deploy/install-deps.sh"
grep -q 'cargo build --release --locked' "$containerfile" || fail "$containerfile: no cargo build --release --locked"
grep -q 'install-deps.sh --runtime' <<<"$runtime_stage" || fail "$containerfile: runtime stage does not install with install-deps.sh --runtime"
for p in $(sed -n 's/^ARG VA_DRIVERS="\(.*\)"$/\1/p' "$containerfile"); do
  [[ "$p" == *-va-driver || "$p" == *-va-drivers ]] || fail "$containerfile: VA_DRIVERS has $p, not a VA-API driver"
done
grep -q '^USER 10001:10001$' <<<"$runtime_stage" || fail "$containerfile: runtime stage does not run as 10001:10001 (the manifests' runAsUser/runAsGroup)"
grep -q '^ENTRYPOINT \["/usr/local/bin/rackcast"\]$' <<<"$runtime_stage" || fail "$containerfile: ENTRYPOINT is not the binary"
ok "image: ${#runtime[@]} runtime packages cover the libraries the binary links ($linked links through $(echo "${!sys_module[@]}" | wc -w) pkg-config modules); no -dev or build tool; Containerfile stages"

# 5. No secret committed.
secret_dir=deploy/kubernetes/base/secrets
[ -z "$(git ls-files "$secret_dir")" ] || fail "files under $secret_dir are tracked by git"
for f in relay-secret publish-token-secret; do
  git check-ignore -q "$secret_dir/$f" || fail "$secret_dir/$f is not gitignored"
done
mapfile -t tracked < <(git ls-files)
values=()
for f in "$work/tree/$secret_dir"/* "$secret_dir"/*; do [ -s "$f" ] && values+=("$(head -n 1 "$f")"); done
for v in "${values[@]}"; do
  [ -n "$v" ] || continue
  if grep -rlF -- "$v" "${tracked[@]}" 2>/dev/null | head -n 1 | grep -q .; then fail "a secret value is in a tracked file"; fi
done
if grep -lE '^kind: *Secret' $(git ls-files 'deploy/*.yaml' 'deploy/*.yml') 2>/dev/null | grep -q .; then
  fail "a Secret object is committed under deploy/"
fi
if grep -nE '^\s*(relay_secret|publish_token_secret)\s*=\s*"[^"]+' deploy/kubernetes/base/*.toml deploy/kubernetes/overlays/*/*.toml; then
  fail "a config in deploy/kubernetes holds a secret inline (use the *_file keys)"
fi
ok "no secret committed (${#values[@]} generated values looked for in ${#tracked[@]} tracked files; $secret_dir gitignored)"

if ((failures)); then
  echo "kubernetes_check: $failures failure(s)" >&2
  exit 1
fi
echo "kubernetes_check: all passed"
