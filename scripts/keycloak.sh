#!/usr/bin/env bash
# Fetches and unpacks the Keycloak the Keycloak test suite runs against, and picks a JDK it
# supports. Idempotent: the distribution comes through Maven (its local repository is the
# cache, so a second run downloads nothing) and is unpacked once under target/keycloak/.
#
# Leaves target/keycloak/env for the test harness and scripts:
#   KC_HOME=<unpacked distribution>
#   JAVA_HOME=<a JDK >= 21>
#
# Overrides: KEYCLOAK_VERSION, KEYCLOAK_JAVA_HOME (a JDK to use instead of probing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version="${KEYCLOAK_VERSION:-26.7.3}"
# Keycloak 26.6 and later run on Java 21 or 25; Java 17 is too old.
min_java=21
dist_plugin="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
root="$PWD/target/keycloak"
home="$root/keycloak-$version"

say() { echo "keycloak: $*"; }

apt_install() {
  say "installing $* (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  local log
  log="$(mktemp)"
  if ! { apt-get update -q && apt-get install -y -q "$@"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "apt-get failed" >&2
    exit 1
  fi
  rm -f "$log"
}

# The major version of the JDK at $1, from its release file (or `java -version`).
java_major() {
  local v=""
  if [ -f "$1/release" ]; then
    v="$(sed -n 's/^JAVA_VERSION="\(.*\)"$/\1/p' "$1/release")"
  fi
  if [ -z "$v" ] && [ -x "$1/bin/java" ]; then
    v="$("$1/bin/java" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
  fi
  v="${v#1.}"
  echo "${v%%[.+-]*}"
}

# The newest JDK on the machine that Keycloak supports.
pick_java() {
  if [ -n "${KEYCLOAK_JAVA_HOME:-}" ]; then
    echo "$KEYCLOAK_JAVA_HOME"
    return
  fi
  local best="" best_major=0 dir major
  for dir in /usr/lib/jvm/*/ "${JAVA_HOME:-}"; do
    dir="${dir%/}"
    [ -n "$dir" ] && [ -x "$dir/bin/java" ] || continue
    major="$(java_major "$dir")"
    case "$major" in '' | *[!0-9]*) continue ;; esac
    if [ "$major" -ge "$min_java" ] && [ "$major" -gt "$best_major" ]; then
      best="$dir"
      best_major="$major"
    fi
  done
  echo "$best"
}

java_home="$(pick_java)"
if [ -z "$java_home" ]; then
  apt_install "openjdk-${min_java}-jdk-headless"
  java_home="$(pick_java)"
fi
if [ -z "$java_home" ]; then
  say "no JDK >= $min_java found under /usr/lib/jvm (set KEYCLOAK_JAVA_HOME)" >&2
  exit 1
fi

if [ -x "$home/bin/kc.sh" ]; then
  say "Keycloak $version present"
else
  command -v mvn >/dev/null 2>&1 || apt_install maven
  command -v unzip >/dev/null 2>&1 || apt_install unzip
  mkdir -p "$root"
  say "fetching org.keycloak:keycloak-quarkus-dist:$version:zip (Maven)"
  mvn_log="$(mktemp)"
  if ! mvn -B -q "$dist_plugin:copy" \
    -Dartifact="org.keycloak:keycloak-quarkus-dist:$version:zip" \
    -DoutputDirectory="$root" >"$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -f "$mvn_log"
    say "Maven could not fetch Keycloak $version" >&2
    exit 1
  fi
  rm -f "$mvn_log"
  zip="$root/keycloak-quarkus-dist-$version.zip"
  # Unpack beside the target, then move, so an interrupted run never leaves half a tree.
  rm -rf "$root/unpack"
  unzip -q "$zip" -d "$root/unpack"
  mv "$root/unpack/keycloak-$version" "$home"
  rm -rf "$root/unpack" "$zip"
  say "Keycloak $version unpacked"
fi

printf 'KC_HOME=%s\nJAVA_HOME=%s\n' "$home" "$java_home" >"$root/env.tmp"
mv "$root/env.tmp" "$root/env"
say "Keycloak $version, Java $(java_major "$java_home") ($java_home)"
