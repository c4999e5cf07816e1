# shellcheck shell=bash
# shellcheck disable=SC2034  # KAFKA_CP_SOURCE etc. are read by the sourcing scripts
# Shared helpers for scripts/kafka.sh and scripts/kafka-cluster.sh.
# Source it; do not run it. Callers set KAFKA_PROG (name used in messages)
# and run under `set -euo pipefail`.
#
# Jars come from Maven Central through `mvn` and kafka/pom.xml into
# .kafka/lib, unless KAFKA_HOME points at an unpacked Kafka distribution,
# whose libs/ are used as they are.

KAFKA_PROG="${KAFKA_PROG:-kafka}"
KAFKA_LIB_SH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${KAFKA_LIB_SH_DIR}/.." && pwd)"
KAFKA_STATE_DIR="${REPO_ROOT}/.kafka"
KAFKA_POM="${REPO_ROOT}/kafka/pom.xml"
KAFKA_LIB_DIR="${KAFKA_STATE_DIR}/lib"
KAFKA_STAMP_NAME=".fetched"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
# Message the broker logs once it is fully up (KafkaRaftServer, 3.x and 4.x).
KAFKA_STARTED_MSG="Kafka Server started"

KAFKA_CP=""         # set by kafka_resolve_classpath
KAFKA_CP_SOURCE=""  # human-readable origin of KAFKA_CP
JAVA_BIN=""         # set by kafka_resolve_java

kafka_say() { printf '%s: %s\n' "${KAFKA_PROG}" "$*"; }
kafka_warn() { printf '%s: warning: %s\n' "${KAFKA_PROG}" "$*" >&2; }
kafka_err() { printf '%s: error: %s\n' "${KAFKA_PROG}" "$*" >&2; }
kafka_die() { kafka_err "$@"; exit 1; }

# ---------------------------------------------------------------- locking ---

# kafka_lock NAME: take an exclusive lock on .kafka/NAME.lock for the rest of
# the calling process (or until kafka_unlock). No-op without flock(1).
# The fd is never inherited by the broker JVM (kafka_launch closes it).
KAFKA_LOCK_FD=""
kafka_lock() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "${KAFKA_STATE_DIR}"
  exec {KAFKA_LOCK_FD}>"${KAFKA_STATE_DIR}/$1.lock"
  flock "${KAFKA_LOCK_FD}"
}
kafka_unlock() {
  [[ -n "${KAFKA_LOCK_FD}" ]] || return 0
  exec {KAFKA_LOCK_FD}>&-
  KAFKA_LOCK_FD=""
}

# ------------------------------------------------------------------ fetch ---

kafka_pom_hash() { sha256sum "${KAFKA_POM}" | cut -d' ' -f1; }

# True when DIR holds a complete copy for the current pom: its stamp names
# the pom's hash on the first line and every jar listed after it exists.
kafka_lib_complete() {
  local dir="$1" want="$2" stamp="$1/${KAFKA_STAMP_NAME}" first jar
  [[ -f "${stamp}" ]] || return 1
  { IFS= read -r first || true; } <"${stamp}"
  [[ "${first}" == "${want}" ]] || return 1
  while IFS= read -r jar; do
    [[ -z "${jar}" || -f "${dir}/${jar}" ]] || return 1
  done < <(tail -n +2 "${stamp}")
  compgen -G "${dir}/kafka_2.13-*.jar" >/dev/null
}

# Populate .kafka/lib from Maven Central (idempotent).
kafka_fetch() {
  [[ -f "${KAFKA_POM}" ]] || kafka_die "missing ${KAFKA_POM}"
  local want
  want="$(kafka_pom_hash)"
  if kafka_lib_complete "${KAFKA_LIB_DIR}" "${want}"; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || kafka_die "mvn not found on PATH (needed to fetch Kafka jars; or set KAFKA_HOME to a Kafka distribution)"
  mkdir -p "${KAFKA_STATE_DIR}"
  local fd=""
  if command -v flock >/dev/null 2>&1; then
    exec {fd}>"${KAFKA_STATE_DIR}/fetch.lock"
    flock "${fd}"
  fi
  if ! kafka_lib_complete "${KAFKA_LIB_DIR}" "${want}"; then
    local tmp="${KAFKA_STATE_DIR}/lib.tmp.$$" flog="${KAFKA_STATE_DIR}/fetch.log"
    rm -rf "${tmp}"
    kafka_say "fetching Kafka jars (kafka/pom.xml) from Maven Central into .kafka/lib ..."
    if ! mvn -q -B -f "${KAFKA_POM}" dependency:copy-dependencies \
        -DoutputDirectory="${tmp}" -DincludeScope=runtime >"${flog}" 2>&1; then
      rm -rf "${tmp}"
      tail -n 40 "${flog}" >&2 || true
      kafka_die "mvn dependency:copy-dependencies failed (full output: ${flog})"
    fi
    if ! compgen -G "${tmp}/kafka_2.13-*.jar" >/dev/null; then
      rm -rf "${tmp}"
      kafka_die "mvn ran but no kafka_2.13 jar was copied (see ${flog})"
    fi
    { printf '%s\n' "${want}"; (cd "${tmp}" && ls -1 -- *.jar); } >"${tmp}/${KAFKA_STAMP_NAME}"
    rm -rf "${KAFKA_LIB_DIR}"
    mv "${tmp}" "${KAFKA_LIB_DIR}"
    kafka_say "fetched $(($(wc -l <"${KAFKA_LIB_DIR}/${KAFKA_STAMP_NAME}") - 1)) jars into .kafka/lib"
  fi
  if [[ -n "${fd}" ]]; then exec {fd}>&-; fi
  return 0
}

# ------------------------------------------------------- java / classpath ---

kafka_resolve_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    JAVA_BIN="${JAVA_HOME}/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA_BIN="$(command -v java)"
  else
    kafka_die "java not found (install a JDK 17, or set JAVA_HOME)"
  fi
}

# Sets KAFKA_CP: $KAFKA_HOME/libs/* when KAFKA_HOME is a Kafka distribution,
# otherwise .kafka/lib/* (fetched first if needed).
kafka_resolve_classpath() {
  if [[ -n "${KAFKA_HOME:-}" ]]; then
    if compgen -G "${KAFKA_HOME}/libs/kafka_2.1[23]-*.jar" >/dev/null; then
      KAFKA_CP="${KAFKA_HOME}/libs/*"
      KAFKA_CP_SOURCE="KAFKA_HOME=${KAFKA_HOME}"
      return 0
    fi
    kafka_warn "KAFKA_HOME=${KAFKA_HOME} is not a Kafka distribution (no libs/kafka_2.13-*.jar); using jars from Maven Central instead"
  fi
  kafka_fetch
  KAFKA_CP="${KAFKA_LIB_DIR}/*"
  local -a core=("${KAFKA_LIB_DIR}"/kafka_2.13-*.jar)
  KAFKA_CP_SOURCE=".kafka/lib ($(basename "${core[0]}" .jar))"
}

# ---------------------------------------------------------------- helpers ---

kafka_port_open() { # PORT -> 0 when something accepts connections on 127.0.0.1:PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# kafka_pid_alive PID PROPS: PID is a live broker JVM started with PROPS
# (guards against pid reuse; zombies have an empty cmdline and count as dead).
kafka_pid_alive() {
  local pid="$1" props="$2"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  local cmdline
  cmdline="$(tr '\0' '\n' <"/proc/${pid}/cmdline" 2>/dev/null)" || return 1
  [[ $'\n'"${cmdline}"$'\n' == *$'\n'"${props}"$'\n'* ]]
}

# kafka_pid_running PID: the process exists and is not a zombie (whatever it runs).
kafka_pid_running() {
  local pid="$1" stat
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/${pid}/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ -n "${stat}" && "${stat:0:1}" != "Z" ]]
}

kafka_read_pid() { # PIDFILE -> prints pid or nothing
  if [[ -f "$1" ]]; then head -n1 "$1" 2>/dev/null | tr -dc '0-9' || true; fi
}

kafka_file_size() { if [[ -f "$1" ]]; then stat -c %s "$1"; else echo 0; fi; }

# Base64url 16-byte id as Kafka's Uuid.randomUuid makes (never starting
# with '-', which command-line parsers would take for an option).
kafka_random_uuid() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "${id}" != -* ]] && break
  done
  printf '%s\n' "${id}"
}

# kafka_write_log4j STEM LOGFILE: writes STEM.log4j.properties (reload4j,
# Kafka 3.x) and STEM.log4j2.properties (log4j2, a Kafka 4.x KAFKA_HOME),
# both sending everything at INFO to LOGFILE, nothing to the console; and
# STEM.tools.log4j*.properties (WARN to stderr) for the storage tool.
kafka_write_log4j() {
  local stem="$1" logfile="$2"
  cat >"${stem}.tools.log4j.properties" <<EOF
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
  cat >"${stem}.tools.log4j2.properties" <<EOF
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
EOF
  cat >"${stem}.log4j.properties" <<EOF
# Generated by scripts/kafka-lib.sh; rewritten on every start.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${logfile}
log4j.appender.file.Append=true
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.authorizer.logger=WARN
log4j.logger.org.apache.zookeeper=WARN
EOF
  cat >"${stem}.log4j2.properties" <<EOF
# Generated by scripts/kafka-lib.sh; rewritten on every start.
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${logfile}
appender.file.filePattern = ${logfile}.%i
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
}

kafka_log_opts() { # STEM -> JVM system properties selecting the generated configs
  printf '%s\n' "-Dlog4j.configuration=file:$1.log4j.properties" \
    "-Dlog4j2.configurationFile=$1.log4j2.properties"
}

# kafka_format_if_needed PROPS METADATA_DIR CLUSTER_ID LOG4J_STEM
kafka_format_if_needed() {
  local props="$1" dir="$2" cid="$3" stem="$4" out
  [[ -f "${dir}/meta.properties" ]] && return 0
  mkdir -p "${dir}"
  local -a logopts
  mapfile -t logopts < <(kafka_log_opts "${stem}.tools")
  if ! out="$("${JAVA_BIN}" -Xmx256m "${logopts[@]}" -cp "${KAFKA_CP}" \
      kafka.tools.StorageTool format -t "${cid}" -c "${props}" 2>&1)"; then
    printf '%s\n' "${out}" >&2
    kafka_die "formatting ${dir} failed (kafka.tools.StorageTool format -t ${cid} -c ${props})"
  fi
  kafka_say "formatted ${dir#"${REPO_ROOT}"/} (cluster id ${cid})"
}

# kafka_launch PROPS LOG4J_STEM OUTFILE PIDFILE HEAP_OPTS
# Starts kafka.Kafka in the background under nohup; writes its pid.
kafka_launch() {
  local props="$1" stem="$2" outfile="$3" pidfile="$4" heap="$5"
  local -a heap_opts logopts jvm_opts
  read -r -a heap_opts <<<"${heap}"
  mapfile -t logopts < <(kafka_log_opts "${stem}")
  jvm_opts=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -XX:MaxInlineLevel=15 -Djava.awt.headless=true
    "-XX:ErrorFile=${KAFKA_STATE_DIR}/hs_err_pid%p.log")
  # shellcheck disable=SC2086  # KAFKA_OPTS is a user-supplied word list
  (
    cd "${KAFKA_STATE_DIR}" || exit 1
    if [[ -n "${KAFKA_LOCK_FD}" ]]; then exec {KAFKA_LOCK_FD}>&-; fi
    exec nohup "${JAVA_BIN}" "${heap_opts[@]}" "${jvm_opts[@]}" ${KAFKA_OPTS:-} \
      "${logopts[@]}" -cp "${KAFKA_CP}" kafka.Kafka "${props}" \
      >"${outfile}" 2>&1 </dev/null
  ) &
  printf '%s\n' "$!" >"${pidfile}"
}

# kafka_wait_ready LABEL PID PROPS PORT LOGFILE LOG_OFFSET OUTFILE
# Waits (KAFKA_START_TIMEOUT s) until PORT accepts connections and LOGFILE,
# past LOG_OFFSET, says the server started. Returns 1 on death or timeout.
kafka_wait_ready() {
  local label="$1" pid="$2" props="$3" port="$4" logfile="$5" offset="$6" outfile="$7"
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while :; do
    # Until the launcher's subshell has exec'd java (slow on a loaded machine) the pid's
    # cmdline is bash's, so only a pid that is gone or a zombie counts as an exit here.
    if ! kafka_pid_alive "${pid}" "${props}" && ! kafka_pid_running "${pid}"; then
      kafka_err "${label} (pid ${pid}) exited during startup; see ${logfile} and ${outfile}"
      kafka_show_tail "${outfile}" 0 "${logfile}" "${offset}"
      return 1
    fi
    if kafka_port_open "${port}" && kafka_log_has_started "${logfile}" "${offset}"; then
      return 0
    fi
    if ((SECONDS >= deadline)); then
      kafka_err "${label} (pid ${pid}) not ready after ${KAFKA_START_TIMEOUT}s (port ${port} open: $(kafka_port_open "${port}" && echo yes || echo no)); see ${logfile}"
      kafka_show_tail "${outfile}" 0 "${logfile}" "${offset}"
      return 1
    fi
    sleep 0.5
  done
}

kafka_log_has_started() { # LOGFILE OFFSET
  local logfile="$1" offset="$2"
  [[ -f "${logfile}" ]] || return 1
  # A rolled-over log is shorter than the offset: search all of it.
  (($(kafka_file_size "${logfile}") >= offset)) || offset=0
  # grep -c reads all its input: grep -q would exit early, and tail's SIGPIPE
  # would fail the pipeline under pipefail once the log is large.
  local hits
  hits="$(tail -c "+$((offset + 1))" "${logfile}" | grep -cF "${KAFKA_STARTED_MSG}" || true)"
  ((hits > 0))
}

# kafka_show_tail FILE OFFSET [FILE OFFSET ...]: last lines written past OFFSET.
kafka_show_tail() {
  local f off
  while (($# >= 2)); do
    f="$1" off="$2"
    shift 2
    [[ -s "${f}" ]] || continue
    (($(kafka_file_size "${f}") >= off)) || off=0
    printf -- '----- last lines of %s -----\n' "${f}" >&2
    tail -c "+$((off + 1))" "${f}" | tail -n 25 >&2 || true
  done
}

# kafka_stop_pids LABEL PIDFILE PROPS [PIDFILE PROPS ...]
# SIGTERM every live broker at once, wait up to KAFKA_STOP_TIMEOUT s for all,
# then SIGKILL the rest. Removes the pid files. Idempotent.
kafka_stop_pids() {
  local label="$1"
  shift
  local -a pidfiles=() propss=() pids=()
  local i pid any=0
  while (($# >= 2)); do
    pidfiles+=("$1")
    propss+=("$2")
    shift 2
  done
  for i in "${!pidfiles[@]}"; do
    pid="$(kafka_read_pid "${pidfiles[$i]}")"
    if kafka_pid_alive "${pid}" "${propss[$i]}"; then
      kill -TERM "${pid}" 2>/dev/null || true
      pids[i]="${pid}"
      any=1
    else
      rm -f "${pidfiles[$i]}"
    fi
  done
  if ((any == 0)); then
    kafka_say "${label}: not running"
    return 0
  fi
  local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT)) alive start=${SECONDS}
  while :; do
    alive=0
    for i in "${!pids[@]}"; do
      if kafka_pid_alive "${pids[$i]}" "${propss[$i]}"; then alive=1; fi
    done
    if ((alive == 0 || SECONDS >= deadline)); then break; fi
    sleep 0.2
  done
  for i in "${!pids[@]}"; do
    if kafka_pid_alive "${pids[$i]}" "${propss[$i]}"; then
      kafka_warn "pid ${pids[$i]} did not stop within ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  for i in "${!pids[@]}"; do
    while kafka_pid_alive "${pids[$i]}" "${propss[$i]}"; do sleep 0.1; done
    rm -f "${pidfiles[$i]}"
  done
  kafka_say "${label}: stopped (pid ${pids[*]}) in $((SECONDS - start))s"
}

# kafka_format_with_args_if_needed PROPS METADATA_DIR CLUSTER_ID LOG4J_STEM [ARG ...]
# As kafka_format_if_needed, passing each ARG on to `StorageTool format` (e.g.
# --add-scram 'SCRAM-SHA-512=[name=...,password=...]'). The ARGs are left out
# of every message, as they may hold secrets.
kafka_format_with_args_if_needed() {
  local props="$1" dir="$2" cid="$3" stem="$4" out
  shift 4
  [[ -f "${dir}/meta.properties" ]] && return 0
  mkdir -p "${dir}"
  local -a logopts
  mapfile -t logopts < <(kafka_log_opts "${stem}.tools")
  if ! out="$("${JAVA_BIN}" -Xmx256m "${logopts[@]}" -cp "${KAFKA_CP}" \
      kafka.tools.StorageTool format -t "${cid}" -c "${props}" "$@" 2>&1)"; then
    printf '%s\n' "${out}" >&2
    kafka_die "formatting ${dir} failed (kafka.tools.StorageTool format -t ${cid} -c ${props} + $# more argument(s))"
  fi
  kafka_say "formatted ${dir#"${REPO_ROOT}"/} (cluster id ${cid})"
}

# kafka_status LABEL PIDFILE PROPS PORT DETAIL: the `status` command of a single-broker script.
# Exit 0 when its broker (or another process) listens on 127.0.0.1:PORT or is starting, 3 when
# nothing runs. DETAIL is what the running line adds after the pid (data dir, log, ...).
kafka_status() {
  local label="$1" pidfile="$2" props="$3" port="$4" detail="$5" pid
  pid="$(kafka_read_pid "${pidfile}")"
  if kafka_pid_alive "${pid}" "${props}"; then
    if kafka_port_open "${port}"; then
      kafka_say "${label} is running (pid ${pid}; ${detail})"
    else
      kafka_say "${label} is starting (pid ${pid}; port not open yet)"
    fi
    return 0
  fi
  if kafka_port_open "${port}"; then
    kafka_say "a process not started by this script is listening on 127.0.0.1:${port}"
    return 0
  fi
  kafka_say "${label} is not running"
  return 3
}
