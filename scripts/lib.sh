# Shell helpers shared by the benchmark scripts (bench.sh, bench-cluster.sh, bench-memory.sh);
# sourced, not run. `want`, `kv` and `get` read the caller's `$only` and `$kvfile`.

# True if the space-separated list $only names section $1.
want() { [[ " $only " == *" $1 "* ]]; }
# Records KEY=VALUE in $kvfile; `get KEY` prints the last value recorded for KEY.
kv() { echo "$1=$2" >>"$kvfile"; }
get() { awk -F= -v k="$1" '$1 == k { v = substr($0, length(k) + 2) } END { print v }' "$kvfile"; }
# Median of the numbers on stdin, one a line (nothing for no input).
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
# Seconds since $1 (an $EPOCHREALTIME value), with $2 decimals (default 3).
secs_since() { awk -v a="$1" -v b="$EPOCHREALTIME" -v f="%.${2:-3}f" 'BEGIN { printf f, b - a }'; }
clk_tck="$(getconf CLK_TCK)"
# CPU seconds (user + system) used so far by process $1 (0 once it is gone).
cpu_of() { awk -v t="$clk_tck" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# A TCP port on 127.0.0.1 that is free right now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits up to 10 s until something listens on 127.0.0.1:$1.
wait_port() {
    local i
    for ((i = 0; i < 200; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "error: nothing listens on 127.0.0.1:$1" >&2
    return 1
}
# Installs GNU time (/usr/bin/time, for wall time and peak RSS) with apt-get if it is missing.
ensure_gnu_time() {
    if [[ ! -x /usr/bin/time ]]; then
        echo "installing GNU time (apt-get install time)" >&2
        local sudo=()
        [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get install -y -qq time
    fi
}
