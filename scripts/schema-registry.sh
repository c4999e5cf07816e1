#!/usr/bin/env bash
# Local Apicurio Registry (Confluent-compatible API under /apis/ccompat/v7) on 127.0.0.1 only,
# in-memory storage. No docker and no downloads other than Maven Central via `mvn`
# (io.apicurio:apicurio-registry-app:3.0.9, classifier all, tar.gz), unpacked into .registry/.
#
# Usage: scripts/schema-registry.sh {fetch|start|stop|status}
#   fetch    download and unpack the registry into .registry/ (skipped when already there)
#   start    start it in the background; returns once it answers HTTP
#            (exit 0 too when it, or something else, already listens on the port)
#   stop     SIGTERM, then SIGKILL after REGISTRY_STOP_TIMEOUT s (default 20)
#   status   exit 0 when something listens on the port, 3 otherwise
#
# Environment:
#   REGISTRY_PORT            HTTP port, default 8081
#   REGISTRY_BASIC_USER      with REGISTRY_BASIC_PASSWORD: require HTTP basic auth for every
#   REGISTRY_BASIC_PASSWORD  path (Quarkus's embedded user realm, shipped in the registry);
#                            default: no authentication
#   REGISTRY_DATA_DIR        keep the schemas in an H2 file database in this directory, so a
#                            restart keeps them (default: in memory, lost on stop)
#   REGISTRY_START_TIMEOUT   seconds to wait for readiness, default 90
#   JAVA_HOME                JDK to use (default: java on PATH; Java 17)
#
# Files (under .registry/, git-ignored): registry-$PORT.pid, registry-$PORT.out (its log).
set -euo pipefail

VERSION="3.0.9"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${ROOT}/.registry"
JAR="${DIR}/apicurio-registry-app-${VERSION}-runner.jar"
PORT="${REGISTRY_PORT:-8081}"
[[ "${PORT}" =~ ^[0-9]+$ ]] || { echo "schema-registry.sh: REGISTRY_PORT must be a number" >&2; exit 1; }
PIDFILE="${DIR}/registry-${PORT}.pid"
OUTFILE="${DIR}/registry-${PORT}.out"
START_TIMEOUT="${REGISTRY_START_TIMEOUT:-90}"
STOP_TIMEOUT="${REGISTRY_STOP_TIMEOUT:-20}"
LABEL="schema registry 127.0.0.1:${PORT}"

say() { printf 'schema-registry.sh: %s\n' "$*"; }
die() { printf 'schema-registry.sh: error: %s\n' "$*" >&2; exit 1; }

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

read_pid() { if [[ -f "${PIDFILE}" ]]; then tr -dc '0-9' <"${PIDFILE}" || true; fi; }

# The pid is a live registry JVM serving this port (guards against pid reuse).
pid_alive() {
  local pid="$1" cmdline
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null)" || return 1
  [[ "${cmdline}" == *"quarkus.http.port=${PORT} "*"${JAR##*/}"* ]]
}

# Any HTTP answer from the Confluent API (401 included, when basic auth is on) means ready.
answers() {
  local code
  code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' \
    "http://127.0.0.1:${PORT}/apis/ccompat/v7/subjects" 2>/dev/null || true)"
  [[ "${code}" == 200 || "${code}" == 401 ]]
}

cmd_fetch() {
  [[ -f "${JAR}" && -d "${DIR}/lib" ]] && return 0
  command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH (needed to fetch the registry)"
  mkdir -p "${DIR}/dl"
  say "fetching io.apicurio:apicurio-registry-app:${VERSION} (about 110 MB) from Maven Central ..."
  mvn -q -B dependency:copy \
    "-Dartifact=io.apicurio:apicurio-registry-app:${VERSION}:tar.gz:all" \
    "-DoutputDirectory=${DIR}/dl" >"${DIR}/fetch.log" 2>&1 \
    || { tail -n 20 "${DIR}/fetch.log" >&2; die "mvn dependency:copy failed (see ${DIR}/fetch.log)"; }
  tar -xzf "${DIR}/dl/apicurio-registry-app-${VERSION}-all.tar.gz" -C "${DIR}"
  [[ -f "${JAR}" ]] || die "the archive held no ${JAR##*/}"
  say "unpacked into .registry/"
}

cmd_start() {
  local pid
  pid="$(read_pid)"
  if pid_alive "${pid}" && answers; then
    say "${LABEL} is already running (pid ${pid})"
    return 0
  fi
  if ! pid_alive "${pid}" && port_open "${PORT}"; then
    say "something already listens on 127.0.0.1:${PORT} (not started by this script); leaving it alone"
    return 0
  fi
  cmd_fetch
  local java=java
  [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]] && java="${JAVA_HOME}/bin/java"
  command -v "${java}" >/dev/null 2>&1 || die "java not found (install a JDK 17, or set JAVA_HOME)"
  local -a auth=()
  if [[ -n "${REGISTRY_BASIC_USER:-}" ]]; then
    [[ -n "${REGISTRY_BASIC_PASSWORD:-}" ]] || die "REGISTRY_BASIC_USER needs REGISTRY_BASIC_PASSWORD"
    auth=(-Dquarkus.http.auth.basic=true
      -Dquarkus.security.users.embedded.enabled=true
      -Dquarkus.security.users.embedded.plain-text=true
      "-Dquarkus.security.users.embedded.users.${REGISTRY_BASIC_USER}=${REGISTRY_BASIC_PASSWORD}"
      "-Dquarkus.http.auth.permission.all.paths=/*"
      -Dquarkus.http.auth.permission.all.policy=authenticated)
  fi
  local -a storage=()
  if [[ -n "${REGISTRY_DATA_DIR:-}" ]]; then
    mkdir -p "${REGISTRY_DATA_DIR}"
    storage=("-Dapicurio.datasource.url=jdbc:h2:file:$(cd "${REGISTRY_DATA_DIR}" && pwd)/registry")
  fi
  local t0=${SECONDS}
  if [[ -z "${pid}" ]] || ! pid_alive "${pid}"; then
    (
      cd "${DIR}" || exit 1
      exec nohup "${java}" -Xmx384m -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=${PORT}" \
        "${auth[@]}" "${storage[@]}" -jar "${JAR}" >"${OUTFILE}" 2>&1 </dev/null
    ) &
    pid=$!
    printf '%s\n' "${pid}" >"${PIDFILE}"
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    if ! kill -0 "${pid}" 2>/dev/null; then
      tail -n 25 "${OUTFILE}" >&2 || true
      rm -f "${PIDFILE}"
      die "${LABEL} (pid ${pid}) exited during start-up; see ${OUTFILE}"
    fi
    if ((SECONDS >= deadline)); then
      cmd_stop >&2
      die "${LABEL} not ready after ${START_TIMEOUT}s; see ${OUTFILE}"
    fi
    sleep 0.3
  done
  say "${LABEL} started (pid ${pid}) in $((SECONDS - t0))s${auth:+ with basic auth}; log: ${OUTFILE#"${ROOT}"/}"
}

cmd_stop() {
  local pid
  pid="$(read_pid)"
  if ! pid_alive "${pid}"; then
    rm -f "${PIDFILE}"
    say "${LABEL}: not running"
    return 0
  fi
  kill -TERM "${pid}" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while pid_alive "${pid}" && ((SECONDS < deadline)); do sleep 0.2; done
  if pid_alive "${pid}"; then
    printf 'schema-registry.sh: warning: pid %s did not stop within %ss; sending SIGKILL\n' \
      "${pid}" "${STOP_TIMEOUT}" >&2
    kill -KILL "${pid}" 2>/dev/null || true
    while pid_alive "${pid}"; do sleep 0.1; done
  fi
  rm -f "${PIDFILE}"
  say "${LABEL}: stopped (pid ${pid})"
}

cmd_status() {
  local pid
  pid="$(read_pid)"
  if pid_alive "${pid}"; then
    say "${LABEL} is running (pid ${pid}; log ${OUTFILE#"${ROOT}"/})"
    return 0
  fi
  if port_open "${PORT}"; then
    say "a process not started by this script is listening on 127.0.0.1:${PORT}"
    return 0
  fi
  say "${LABEL} is not running"
  return 3
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
